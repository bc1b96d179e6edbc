"""Pinned environments: conda envs agree with the pip pins, every rule names one."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([A-Za-z0-9_.+\-]+)$")


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = PIN.match(line)
        assert match, f"{path.name}: '{line}' is not pinned with =="
        pins[normalise(match.group(1))] = match.group(2)
    return pins


@pytest.fixture(scope="module")
def pip_pins(repo_root) -> dict[str, str]:
    pins = {}
    for name in ("requirements.txt", "requirements-nodeps.txt", "requirements-test.txt"):
        pins.update(read_pins(repo_root / name))
    return pins


def env_files(repo_root: Path) -> list[Path]:
    return sorted((repo_root / "envs").glob("*.yaml"))


def test_torch_pairing_is_the_one_that_imports(pip_pins):
    assert pip_pins["torch"] == "2.14.1"
    assert pip_pins["torchvision"] == "0.29.1"
    assert pip_pins["bergson"] == "2.5.1"


def test_conda_envs_pin_everything_like_pip(repo_root, pip_pins):
    envs = env_files(repo_root)
    assert envs, "no conda envs under envs/"
    for env in envs:
        spec = yaml.safe_load(env.read_text())
        pip_section = None
        for dep in spec["dependencies"]:
            if isinstance(dep, dict):
                pip_section = dep["pip"]
                continue
            assert PIN.match(dep), f"{env.name}: conda dependency '{dep}' is not pinned with =="
            if dep.startswith("python=="):
                assert dep.startswith("python==3.11."), f"{env.name}: capatlas needs Python 3.11"
        assert pip_section, f"{env.name}: no pip section"
        for dep in pip_section:
            match = PIN.match(dep)
            assert match, f"{env.name}: pip dependency '{dep}' is not pinned with =="
            name, version = normalise(match.group(1)), match.group(2)
            assert name in pip_pins, f"{env.name}: {name} is not pinned in requirements*.txt"
            assert version == pip_pins[name], (
                f"{env.name}: {name}=={version} but requirements pin {name}=={pip_pins[name]}"
            )


def rule_blocks(repo_root: Path):
    for path in [repo_root / "Snakefile", *sorted((repo_root / "workflow" / "rules").glob("*.smk"))]:
        text = path.read_text()
        for match in re.finditer(r"^rule (\w+):\n((?:[ \t]+.*\n|\n)*)", text, flags=re.M):
            yield path, match.group(1), match.group(2)


def test_every_rule_runs_in_a_pinned_env(repo_root):
    seen = 0
    for path, name, body in rule_blocks(repo_root):
        if name == "all":
            continue
        seen += 1
        conda = re.search(r"conda:\s*\n\s*\"([^\"]+)\"", body)
        assert conda, f"{path.name}: rule {name} names no conda env"
        env = (path.parent / conda.group(1)).resolve()
        assert env.is_file(), f"{path.name}: rule {name} names {conda.group(1)}, which does not exist"
        assert "log:" in body, f"{path.name}: rule {name} has no log"
    assert seen >= 5


def test_snakefiles_are_snakefmt_formatted(repo_root, venv_bin):
    files = [repo_root / "Snakefile", *sorted((repo_root / "workflow" / "rules").glob("*.smk"))]
    result = subprocess.run(
        [str(venv_bin / "snakefmt"), "--check", "--diff", *map(str, files)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_post_deploy_installs_are_pinned_like_pip(repo_root, pip_pins):
    scripts = sorted((repo_root / "envs").glob("*.post-deploy.sh"))
    for script in scripts:
        assert (repo_root / "envs" / script.name.replace(".post-deploy.sh", ".yaml")).is_file()
        for name, version in re.findall(r"pip install --no-deps ([A-Za-z0-9_.\-]+)==(\S+)", script.read_text()):
            assert pip_pins[normalise(name)] == version, f"{script.name}: {name}=={version}"
    assert any("bergson==" in s.read_text() for s in scripts), "no env installs bergson"

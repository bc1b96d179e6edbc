"""No config value, path or corpus file name reaches a shell unquoted.

Three checks: every field of every rule's shell command is quoted with
`:q`; the paper-scale plan, with `$(...)`, quotes and spaces in the results
directory, model paths, revisions, an optimizer state and corpus file names,
prints shell commands that parse back to exactly those values; and a rule
run for real with such a results directory runs nothing of them.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import yaml
from helpers_paper import empty_benchmark_root, write_dolma

RULES = Path(__file__).resolve().parent.parent / "workflow" / "rules"
NASTY = "x$(touch PWNED) it's"


def shell_commands() -> dict[str, str]:
    """rule name -> the shell command's source (the concatenated string literals)."""
    commands = {}
    for path in sorted(RULES.glob("*.smk")):
        rule, in_shell, parts = None, False, []
        for number, line in enumerate(path.read_text().splitlines() + [""], start=1):
            # Rules defined in a loop are `rule:` with a `name:` directive; they go by their line.
            match = re.match(r"^\s*rule(?: (\w+))?:", line)
            if match:
                rule = match.group(1) or f"line {number}"
            stripped = line.strip()
            if stripped == "shell:":
                in_shell, parts = True, []
            elif in_shell and stripped[:1] in ("'", '"'):
                parts.append(stripped[1:-1])
            elif in_shell:
                commands[f"{path.name}:{rule}"] = "".join(parts)
                in_shell = False
    return commands


def test_every_shell_field_is_quoted():
    commands = shell_commands()
    assert len(commands) >= 17, sorted(commands)
    for name, command in commands.items():
        fields = re.findall(r"\{([^{}]*)\}", command)
        assert fields, name
        unquoted = [f for f in fields if not f.endswith(":q")]
        assert not unquoted, f"{name}: unquoted {unquoted}"


def printed_commands(output: str) -> list[str]:
    return [line[len("Shell command: ") :] for line in output.splitlines() if line.startswith("Shell command: capatlas ")]


def test_paper_plan_passes_hostile_values_as_single_arguments(repo_root, venv_bin, tmp_path):
    dolma = tmp_path / "dolma"
    write_dolma(dolma, ["common_crawl-religion-0016", "common_crawl-social_life-0002"], docs=3)
    # A file name from a downloaded dataset, the realistic attack.
    hostile_file = dolma / "data" / "common_crawl-religion-0016" / f"part-{NASTY}.jsonl.zst"
    hostile_file.write_bytes((dolma / "data" / "common_crawl-religion-0016" / "shard_00000000.jsonl.zst").read_bytes())
    models = tmp_path / "models"
    names = {"document": f"Olmo 3 {NASTY}", "query": f"Instruct {NASTY}", "format": "FormatClassifier-NoURL"}
    for name in names.values():
        (models / name).mkdir(parents=True)
        (models / name / "config.json").write_text("{}")
    optimizer = tmp_path / f"opt{NASTY}.pt"
    optimizer.write_bytes(b"")
    results = tmp_path / f"res {NASTY}"
    site = {
        "results_dir": str(results),
        "benchmark_root": str(empty_benchmark_root(tmp_path / "benchmarks")),
        "corpus": {
            "paths": [str(dolma / "data" / "*" / "*.jsonl.zst")],
            "labels": {"format": {"model": str(models / names["format"])}},
        },
        "models": {
            "document": {"path": str(models / names["document"]), "revision": f"main{NASTY}"},
            "query": {"path": str(models / names["query"]), "revision": f"v1{NASTY}"},
        },
        "attribution": {"optimizer_state": str(optimizer)},
    }
    (tmp_path / "site.yaml").write_text(yaml.safe_dump(site))
    result = subprocess.run(
        [str(venv_bin / "snakemake"), "-n", "-p", "--configfile", str(repo_root / "config" / "olmo3-7b.yaml"),
         str(tmp_path / "site.yaml")],  # fmt: skip
        cwd=repo_root, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    commands = printed_commands(result.stdout + result.stderr)
    assert commands
    hostile = {
        "manifest_scan": str(hostile_file),
        "preconditioner": f"main{NASTY}",
        "query_gradients": f"v1{NASTY}",
        "score_shard": str(optimizer),
    }
    seen = {key: False for key in hostile}
    for command in commands:
        words = shlex.split(command)  # what the shell hands the program
        # The hostile text only ever travels whole, inside one argument (a scan group's name carries
        # the file name with everything but [A-Za-z0-9._-] replaced: inert, and checked to be so).
        inert = re.compile(r"[A-Za-z0-9._-]+")
        assert "PWNED" not in " ".join(w for w in words if NASTY not in w and not inert.fullmatch(w)), command
        stage = words[1]
        if stage == "manifest-scan" and str(hostile_file) in words:
            group = words[words.index("--group") + 1]
            assert inert.fullmatch(group) and "$" not in group, group
            seen["manifest_scan"] = True
        if stage == "preconditioner":
            assert words[words.index("--revision") + 1] == hostile["preconditioner"]
            assert words[words.index("--optimizer-state") + 1] == str(optimizer)
            seen["preconditioner"] = True
        if stage == "query-gradients":
            assert words[words.index("--revision") + 1] == hostile["query_gradients"]
            assert words[words.index("--model") + 1] == str(models / names["query"])
            seen["query_gradients"] = True
        if stage == "score-shard":
            assert words[words.index("--optimizer-state") + 1] == str(optimizer)
            assert words[words.index("--query-revision") + 1] == f"v1{NASTY}"
            seen["score_shard"] = True
    assert all(seen.values()), seen
    assert not list(tmp_path.rglob("PWNED")) and not (repo_root / "PWNED").exists()


def test_a_rule_runs_with_a_hostile_results_dir_and_runs_nothing_of_it(repo_root, venv_bin, tmp_path):
    results = tmp_path / f"res {NASTY}"
    override = tmp_path / "override.yaml"
    override.write_text(yaml.safe_dump({"results_dir": str(results)}))
    result = subprocess.run(
        [str(venv_bin / "snakemake"), "--snakefile", str(repo_root / "Snakefile"), "--directory", str(tmp_path),
         "--cores", "1", "--configfile", str(repo_root / "config" / "config.yaml"), str(override),
         "--until", "demo_world"],  # fmt: skip
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (results / "demo" / "demo" / "world" / "ground_truth.json").is_file()
    assert not list(tmp_path.rglob("PWNED")) and not Path("PWNED").exists()

"""A job never reads a config that another invocation can rewrite under it.

Each run's jobs read results/<run>/configs/<sha256>.yaml, written once by the
run that holds the lock (`onstart`); a dry run writes nothing into results/,
and a run with other settings writes a file of its own.
"""

from __future__ import annotations

import hashlib
import os
import subprocess

import yaml


def snakemake(repo_root, venv_bin, workdir, *extra):
    return subprocess.run(
        [str(venv_bin / "snakemake"), "--snakefile", str(repo_root / "Snakefile"), "--directory", str(workdir),
         "--cores", "1", "--configfile", str(repo_root / "config" / "config.yaml"), *extra],  # fmt: skip
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
    )  # fmt: skip


def snapshot(directory):
    return {p.relative_to(directory): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_dry_runs_write_nothing_and_runs_never_rewrite_a_planned_config(repo_root, venv_bin, tmp_path):
    planned = snakemake(repo_root, venv_bin, tmp_path, "-n")
    assert planned.returncode == 0, planned.stderr[-3000:]
    assert not (tmp_path / "results").exists()

    first = snakemake(repo_root, venv_bin, tmp_path, "--until", "demo_world")
    world = tmp_path / "results" / "demo" / "demo" / "world" / "ground_truth.json"
    assert first.returncode == 0, first.stderr[-3000:]
    configs = tmp_path / "results" / "demo" / "configs"
    (original,) = configs.iterdir()
    text = original.read_text()
    assert original.name == hashlib.sha256(text.encode()).hexdigest()[:16] + ".yaml"
    assert (tmp_path / "results" / "demo" / "config.yaml").read_text() == text
    before = snapshot(tmp_path / "results")
    before_world = world.stat().st_mtime_ns

    # What once rewrote results/<run>/config.yaml under running jobs: a dry run with other settings.
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({"analysis": {"top_k": 3}}))
    dry = snakemake(repo_root, venv_bin, tmp_path, "--configfile", str(repo_root / "config" / "config.yaml"), str(other), "-n")
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert snapshot(tmp_path / "results") == before

    # A run with them leaves the first run's snapshot alone and reruns nothing whose sections did not change.
    again = snakemake(
        repo_root, venv_bin, tmp_path, "--configfile", str(repo_root / "config" / "config.yaml"), str(other),
        "--until", "demo_world",
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert "rule demo_world" not in again.stdout + again.stderr
    assert world.stat().st_mtime_ns == before_world
    assert original.read_text() == text

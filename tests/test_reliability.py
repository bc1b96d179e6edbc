"""Reliability of planning and of the run's config (issue 15), case by case.

Each run's jobs read results/<run>/configs/<sha256>.yaml, written once by the
run that holds the lock (`onstart`); a dry run and a run refused by the lock
write nothing into results/, and a run with other settings writes a file of
its own. Bad configs are named when the DAG is planned, not in a late job.
Bad inputs to the stages themselves: tests/test_bad_input.py.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time

import pytest
import yaml

from helpers_runs import job_stats


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


def test_a_run_refused_by_the_lock_writes_nothing(repo_root, venv_bin, tmp_path):
    """A second run while the first holds the lock is refused and leaves the first run's files alone."""
    first = subprocess.Popen(
        [str(venv_bin / "snakemake"), "--snakefile", str(repo_root / "Snakefile"), "--directory", str(tmp_path),
         "--cores", "1", "--configfile", str(repo_root / "config" / "config.yaml"), "--until", "demo_model"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
    )  # fmt: skip
    try:
        model_log = tmp_path / "results" / "demo" / "logs" / "demo_model.log"
        deadline = time.monotonic() + 240
        while not model_log.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert model_log.exists(), "the first run never reached demo_model"
        resolved = (tmp_path / "results" / "demo" / "config.yaml").read_bytes()
        before = snapshot(tmp_path / "results" / "demo" / "configs")
        other = tmp_path / "other.yaml"
        other.write_text(yaml.safe_dump({"analysis": {"top_k": 3}}))
        refused = snakemake(
            repo_root, venv_bin, tmp_path, "--configfile", str(repo_root / "config" / "config.yaml"), str(other),
            "--until", "demo_model",
        )  # fmt: skip
        assert refused.returncode != 0
        assert "cannot be locked" in refused.stdout + refused.stderr
        assert snapshot(tmp_path / "results" / "demo" / "configs") == before
        assert (tmp_path / "results" / "demo" / "config.yaml").read_bytes() == resolved
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()


def demo_without(key):
    def change(config):
        del config[key]
        config["unlearning"]["enabled"] = False
        return config

    return change


def demo_with(key, value):
    def change(config):
        config[key] = value
        return config

    return change


def demo_without_benchmark(name):
    def change(config):
        config["benchmarks"] = [b for b in config["benchmarks"] if b["name"] != name]
        return config

    return change


# Planning cases: the config a user writes, and what planning must say or plan.
PLANNING = {
    "empty benchmark list": (demo_with("benchmarks", []), ["config key 'benchmarks' is an empty list"], None),
    "incomplete 2 x 2": (
        demo_without_benchmark("mmlu_stem"),
        ["the 2 x 2 design has no benchmark for stem x knowledge"],
        None,
    ),
    "no benchmarks: corpus-only": (
        demo_without("benchmarks"),
        [],
        {"demo_world", "demo_tokenizer", "demo_model", "manifest_scan", "manifest", "shards", "all"},
    ),
}


@pytest.mark.parametrize("case", sorted(PLANNING))
def test_planning_names_the_problem_or_plans_what_the_config_asks(case, repo_root, venv_bin, tmp_path):
    change, messages, jobs = PLANNING[case]
    config = change(yaml.safe_load((repo_root / "config" / "config.yaml").read_text()))
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    planned = snakemake(repo_root, venv_bin, tmp_path, "--configfile", str(path), "-n")
    output = planned.stdout + planned.stderr
    for message in messages:
        assert message in output, output[-3000:]
    if jobs is None:
        assert planned.returncode != 0 and "Traceback" not in output, output[-3000:]
    else:
        assert planned.returncode == 0, output[-3000:]
        assert set(job_stats(output)) == jobs
    assert not (tmp_path / "results").exists()

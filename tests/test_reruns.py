"""Partial reruns: a failed shard, a shard killed mid-write, and what Snakemake redoes afterwards.

Both scenarios start from a copy of a clean reduced run (helpers_runs)
whose shard scores and bin matrix are removed, i.e. from a run that got as
far as the preconditioner and the query indices; the scoring and the bin
matrix then run as a user's command would run them. What ran is read from
Snakemake's own accounting (its "Job stats" table and its "Finished jobid"
lines), not from our logs.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from capatlas.artifacts.binsums import ARRAYS, read_bin_sums
from helpers_runs import (
    BIN_MATRIX,
    RUN,
    Run,
    clean_run,  # noqa: F401  (fixture)
    copy_run,
    job_stats,
    read_matrix,
    run_snakemake,
    runs_dir,  # noqa: F401  (fixture)
    snakemake_command,
    snakemake_env,
)

pytestmark = pytest.mark.slow

SHARDS = ["00000", "00001"]
FAILED = "00001"
KILLED = "00000"
# The failed-shard run rescores both shards, one of which fails: enough to see the other one finish.
RESCORED = SHARDS


def finished_job_ids(output: str) -> list[int]:
    return [int(n) for n in re.findall(r"Finished jobid: (\d+)", output)]


def job_ids(output: str) -> dict[int, tuple[str, str | None]]:
    """jobid -> (rule, shard wildcard) from Snakemake's job blocks."""
    ids = {}
    for block in output.split("\n\n"):
        rule = re.search(r"^\s*(?:local)?rule (\w+):", block, re.MULTILINE)
        jobid = re.search(r"^\s*jobid: (\d+)", block, re.MULTILINE)
        if rule and jobid:
            shard = re.search(r"^\s*wildcards: .*?shard=(\d+)", block, re.MULTILINE)
            ids[int(jobid.group(1))] = (rule.group(1), shard.group(1) if shard else None)
    return ids


def finished(output: str) -> list[tuple[str, str | None]]:
    """(rule, shard) of every job Snakemake reports finished, in order."""
    ids = job_ids(output)
    return [ids[n] for n in finished_job_ids(output)]


def scored_outputs(results: Path, shard: str) -> tuple[Path, Path]:
    return (
        results / "attribution" / "scores" / f"shard-{shard}.parquet",
        results / "attribution" / "binsums" / f"shard-{shard}.safetensors",
    )


def without_scores(run: Run, dest: Path, shards: list[str]) -> Run:
    """A copy of `run` that got as far as the query indices for `shards` (their scores and the matrix removed)."""
    copy = copy_run(run, dest)
    for shard in shards:
        for path in scored_outputs(copy.results, shard):
            path.unlink()
    shutil.rmtree(copy.results / "influence")
    return copy


def assert_scores_equal(results: Path, reference: Path, shard: str) -> None:
    for path, ref in zip(scored_outputs(results, shard), scored_outputs(reference, shard)):
        if path.suffix == ".parquet":
            got, want = pq.read_table(path), pq.read_table(ref)
            shard_docs = pq.read_table(results / "shards" / f"shard-{shard}.parquet", columns=["doc_id"])
            # Complete: every document of the shard, in the shard's order.
            assert got.column("doc_id").to_pylist() == shard_docs.column("doc_id").to_pylist()
            assert got.equals(want), f"{path} differs from the clean run's"
        else:
            # Arrays only: the provenance names each run's own directory.
            got, want = read_bin_sums(path), read_bin_sums(ref)
            assert list(got.benchmarks) == list(want.benchmarks)
            for name in got.benchmarks:
                for key in ARRAYS:
                    np.testing.assert_array_equal(getattr(got[name], key), getattr(want[name], key), err_msg=f"{path}:{name}/{key}")


# --------------------------------------------------------------------------- a failed shard


@pytest.fixture(scope="module")
def failed_then_rerun(clean_run, runs_dir):
    run = without_scores(clean_run, runs_dir / "failed-shard", RESCORED)
    failing = run_snakemake(
        run.workdir, run.config_path, "--keep-going", BIN_MATRIX,
        env=snakemake_env(CAPATLAS_FAIL_SHARDS=FAILED), check=False,
    )  # fmt: skip
    after_failure = {shard: all(p.exists() for p in scored_outputs(run.results, shard)) for shard in SHARDS}
    failed_log = (run.results / "logs" / "attribution" / "scores" / f"shard-{FAILED}.log").read_text()
    rerun = run_snakemake(run.workdir, run.config_path, BIN_MATRIX)
    return run, failing, (after_failure, failed_log), rerun


def test_failed_shard_stops_only_itself_with_keep_going(failed_then_rerun):
    _, failing, (after_failure, failed_log), _ = failed_then_rerun
    output = failing.stdout + failing.stderr
    assert failing.returncode != 0
    assert job_stats(output) == {"score_shard": len(RESCORED), "influence": 1}
    done = finished(output)
    assert sorted(shard for rule, shard in done if rule == "score_shard") == [s for s in RESCORED if s != FAILED]
    assert "influence" not in [rule for rule, _ in done]
    assert after_failure == {shard: shard != FAILED for shard in SHARDS}
    assert f"injected failure: shard shard-{FAILED}.parquet is listed in $CAPATLAS_FAIL_SHARDS" in failed_log


def test_rerun_runs_only_the_failed_shard_and_what_depends_on_it(failed_then_rerun):
    _, _, _, rerun = failed_then_rerun
    output = rerun.stdout + rerun.stderr
    assert job_stats(output) == {"score_shard": 1, "influence": 1}
    assert finished(output) == [("score_shard", FAILED), ("influence", None)]


def test_rerun_gives_the_clean_runs_bin_matrix(failed_then_rerun, clean_run):
    run, *_ = failed_then_rerun
    pd.testing.assert_frame_equal(read_matrix(run.results), read_matrix(clean_run.results), check_exact=True)
    assert_scores_equal(run.results, clean_run.results, FAILED)


# --------------------------------------------------------------------------- a shard killed mid-write


def score_job_pid(shard: str, group: int) -> int | None:
    """The pid of `shard`'s running `capatlas score-shard` process in process group `group` (ours only)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if os.getpgid(int(entry.name)) != group:
                continue
        except OSError:
            continue
        if b"score-shard" in argv and any(a.endswith(f"shard-{shard}.parquet".encode()) for a in argv):
            return int(entry.name)
    return None


@pytest.fixture(scope="module")
def killed_then_rerun(clean_run, runs_dir):
    run = without_scores(clean_run, runs_dir / "killed-shard", [KILLED])
    scores_dir = run.results / "attribution" / "scores"
    # The run's Snakemake and its jobs in a process group of their own, as on a node that dies.
    proc = subprocess.Popen(
        snakemake_command(run.workdir, run.config_path, BIN_MATRIX),
        env=snakemake_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    # Bergson writes the shard's scores into a scratch file beside the final
    # output while it computes the gradients: that is the moment to kill.
    in_progress = None
    deadline = time.monotonic() + 300
    while in_progress is None and proc.poll() is None and time.monotonic() < deadline:
        in_progress = next(iter(scores_dir.glob(f".shard-{KILLED}.parquet.*/**/scores.bin")), None)
        time.sleep(0.05)
    # Only our own group: the Snakemake started above and its jobs.
    pid = score_job_pid(KILLED, proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    if in_progress is None or pid is None:
        pytest.fail(f"the score_shard job of shard {KILLED} was never seen writing")
    killed = {
        "outputs": [p.exists() for p in scored_outputs(run.results, KILLED)],
        "partial": in_progress.exists(),
        "incomplete_markers": list((run.workdir / ".snakemake" / "incomplete").iterdir()),
        "matrix": (run.results / "influence").exists(),
    }
    # The killed Snakemake could not release its lock on the run's files.
    locked = run_snakemake(run.workdir, run.config_path, BIN_MATRIX, check=False)
    killed["locked"] = (locked.returncode, locked.stdout + locked.stderr)
    run_snakemake(run.workdir, run.config_path, "--unlock")
    rerun = run_snakemake(run.workdir, run.config_path, "--rerun-incomplete", BIN_MATRIX)
    return run, killed, rerun


def test_killed_job_leaves_nothing_that_looks_finished(killed_then_rerun):
    _, killed, _ = killed_then_rerun
    assert killed["partial"], "the kill did not land while the scores were being written"
    assert killed["outputs"] == [False, False]
    assert not killed["matrix"]
    # Snakemake's own record that the job never finished.
    assert killed["incomplete_markers"]
    returncode, output = killed["locked"]
    assert returncode != 0 and "--unlock" in output, output[-2000:]


def test_rerun_incomplete_redoes_the_killed_shard_from_complete_inputs(killed_then_rerun, clean_run):
    run, _, rerun = killed_then_rerun
    output = rerun.stdout + rerun.stderr
    assert job_stats(output) == {"score_shard": 1, "influence": 1}
    assert finished(output) == [("score_shard", KILLED), ("influence", None)]
    assert_scores_equal(run.results, clean_run.results, KILLED)
    pd.testing.assert_frame_equal(read_matrix(run.results), read_matrix(clean_run.results), check_exact=True)
    assert not list((run.workdir / ".snakemake" / "incomplete").iterdir())


@pytest.mark.parametrize(
    "change, must, never",
    [
        # The contrast's own settings rerun the contrast, not influence or scoring.
        ({"analysis": {"top_k": 3, "permutations": 30}}, {"contrast"}, {"influence", "score_shard", "queries"}),
        # Threads change no query set (they may change attribution's floats, so attribution reruns).
        ({"attribution": {"threads": 2}}, {"score_shard"}, {"queries", "demo_model", "manifest"}),
    ],
    ids=["analysis.top_k", "attribution.threads"],
)
def test_a_setting_reruns_only_the_rules_that_read_it(clean_run, tmp_path, change, must, never):  # noqa: F811
    import yaml

    config = yaml.safe_load(clean_run.config_path.read_text())
    for section, values in change.items():
        config[section].update(values)
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(config))
    planned = run_snakemake(clean_run.workdir, changed, "-n")
    rules = set(job_stats(planned.stdout + planned.stderr))
    assert must <= rules and not rules & never, rules


def test_a_score_jobs_runtime_follows_its_shards_tokens(clean_run, tmp_path):  # noqa: F811
    """Issue 19: with resources.scoring.tokens_per_second set, each shard asks for time by its own tokens."""
    import json

    import yaml

    from capatlas.resources import scoring_runtime

    config = yaml.safe_load(clean_run.config_path.read_text())
    config["resources"]["scoring"] = {"tokens_per_second": 2.0, "safety": 1.5, "startup_minutes": 15}
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(config))
    planned = run_snakemake(clean_run.workdir, changed, "-n", "--forcerun", "score_shard")
    asked = {
        m.group(1): int(m.group(2))
        for m in re.finditer(r"rule score_shard:.*?wildcards: shard=(\d+).*?runtime=(\d+)", planned.stdout, re.S)
    }
    summary = json.loads((clean_run.workdir / f"results/{RUN}/shards/shards.json").read_text())
    expected = {
        f"{s['shard']:05d}": scoring_runtime(s["tokens"], config["resources"]["scoring"], 0, 1) for s in summary["shards"]
    }
    assert asked == expected, (asked, expected)
    assert all(minutes > config["resources"]["gpu"]["runtime"] for minutes in asked.values()), asked

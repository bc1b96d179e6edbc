"""The SLURM profile on a real (single-node, localhost) SLURM cluster.

A reduced demo runs twice from scratch: once locally with profiles/default,
once through SLURM with profiles/slurm (its partition set the way a user
sets it, by editing the profile's default-resources). Every job must go
through sbatch with the resources its rule declares, and the results must be
byte-identical to the local run's.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

import helpers_runs
from slurm_cluster import ensure_installed, start_cluster

RUN = "slurm_check"
BENCHMARK = "socialiqa"
# Demo world, demo model, working set, shards and one benchmark's queries:
# later stages are not targeted, so this test does not depend on them.
TARGETS = [
    f"results/{RUN}/shards/shards.json",
    f"results/{RUN}/queries/{BENCHMARK}",
]
EXPECTED_RULES = {"demo_world", "demo_model", "manifest", "shards", "queries"}
SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (.+?)\)\.")
# Snakemake's bookkeeping and the datasets library's random fingerprint.
NOT_COMPARED = {".snakemake_timestamp", "state.json"}


@pytest.fixture(scope="module")
def slurm(request):
    reason = ensure_installed()
    if reason:
        pytest.skip(f"no SLURM for this test: {reason}")
    cluster = start_cluster()
    request.addfinalizer(cluster.stop)
    return cluster


@pytest.fixture(scope="module")
def reduced_config(tmp_path_factory):
    """The reduced demo config of the rerun tests, 2 shards, with resources distinct from the defaults."""
    config = helpers_runs.reduced_config(shards=2)
    config["run"] = RUN
    config["resources"]["cpu"] = {"threads": 1, "mem_mb": 1500, "runtime": 20}
    path = tmp_path_factory.mktemp("slurm_config") / "reduced.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path, config


def snakemake(repo_root, venv_bin, workdir, config_path, *extra, env=None):
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**(env or os.environ), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run(
        [
            str(venv_bin / "snakemake"),
            "--snakefile",
            str(repo_root / "Snakefile"),
            "--directory",
            str(workdir),
            "--configfile",
            str(config_path),
            *extra,
            *TARGETS,
        ],
        cwd=workdir,
        capture_output=True,
        text=True,
        env=env,
        timeout=480,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-6000:]
    return result


@pytest.fixture(scope="module")
def local_run(repo_root, venv_bin, reduced_config, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("local_run")
    snakemake(
        repo_root, venv_bin, workdir, reduced_config[0],
        "--profile", str(repo_root / "profiles" / "default"), "--cores", "2",
    )
    return workdir / "results" / RUN


@pytest.fixture(scope="module")
def slurm_run(repo_root, venv_bin, reduced_config, slurm, local_run, tmp_path_factory):
    """The same targets through SLURM; returns (results dir, Snakemake's output, workdir)."""
    # The user's step: set the partition in (a copy of) profiles/slurm.
    profile = tmp_path_factory.mktemp("profile") / "slurm"
    shutil.copytree(repo_root / "profiles" / "slurm", profile)
    settings = yaml.safe_load((profile / "config.yaml").read_text())
    settings["default-resources"]["slurm_partition"] = slurm.partition
    (profile / "config.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))

    workdir = tmp_path_factory.mktemp("slurm_run")
    result = snakemake(
        repo_root, venv_bin, workdir, reduced_config[0],
        "--profile", str(profile),
        # This cluster has no accounting database, so no sacct: squeue sees
        # finished jobs for MinJobAge seconds. Short jobs: poll early.
        "--slurm-status-command", "squeue",
        "--slurm-init-seconds-before-status-checks", "2",
        env=slurm.env,
    )
    return workdir / "results" / RUN, result.stdout + result.stderr, workdir


def submissions(output: str, slurm_logdir: Path) -> list[tuple[str, str, Path]]:
    """(rule, SLURM job id, SLURM log) of every job Snakemake submitted.

    The plugin writes each job's log to <slurm-logdir>/rule_<rule>/<wildcards>/<job id>.log.
    """
    found = []
    for _, slurm_id, log in SUBMITTED.findall(output):
        log = Path(log)
        rule = log.relative_to(slurm_logdir).parts[0].removeprefix("rule_")
        found.append((rule, slurm_id, log))
    return found


@pytest.mark.slow
def test_every_job_goes_through_sbatch_with_its_rules_resources(slurm, slurm_run, reduced_config):
    _, output, workdir = slurm_run
    submitted = submissions(output, workdir / "logs" / "slurm")
    assert submitted, output[-4000:]
    for _, slurm_id, log in submitted:
        # Kept after success (slurm-keep-successful-logs), named by the job id.
        assert log.is_file(), f"no SLURM log {log}"
        assert log.name == f"{slurm_id}.log"
        job = slurm.command("scontrol", "show", "job", "--oneliner", slurm_id)
        assert "JobState=COMPLETED" in job, job
        assert f"Partition={slurm.partition}" in job, job
    # One SLURM job per rule job, each submitted once (none failed and was retried).
    assert sorted(rule for rule, _, _ in submitted) == sorted(EXPECTED_RULES)

    # CPU-family rules ask SLURM for what config `resources.cpu` declares (attempt 1).
    cpu = reduced_config[1]["resources"]["cpu"]
    shards_id = next(slurm_id for rule, slurm_id, _ in submitted if rule == "shards")
    job = slurm.command("scontrol", "show", "job", "--oneliner", shards_id)
    assert f"MinMemoryNode={cpu['mem_mb']}M" in job, job
    assert f"TimeLimit=00:{cpu['runtime']:02d}:00" in job, job
    assert f"NumCPUs={cpu['threads']}" in job, job


@pytest.mark.slow
def test_slurm_results_equal_the_local_run(local_run, slurm_run):
    slurm_results, _, _ = slurm_run
    compared = ["manifest/manifest.parquet", "shards/shards.json"]
    compared += [f"shards/{p.name}" for p in sorted((local_run / "shards").glob("shard-*.parquet"))]
    compared += [
        str(p.relative_to(local_run))
        for p in sorted((local_run / "queries" / BENCHMARK).iterdir())
        if p.name not in NOT_COMPARED
    ]
    assert len([c for c in compared if c.startswith("shards/shard-")]) == 2
    assert f"queries/{BENCHMARK}/queries.json" in compared
    for relative in compared:
        assert (slurm_results / relative).is_file(), f"SLURM run lacks {relative}"
        local_bytes = (local_run / relative).read_bytes()
        slurm_bytes = (slurm_results / relative).read_bytes()
        if relative.endswith(".json"):
            # Provenance records name absolute input paths, which differ
            # between the two working directories and nowhere else.
            local_bytes = local_bytes.replace(bytes(local_run.parent.parent), b"<workdir>")
            slurm_bytes = slurm_bytes.replace(bytes(slurm_results.parent.parent), b"<workdir>")
        assert local_bytes == slurm_bytes, f"{relative} differs between the local and the SLURM run"


def test_slurm_profile_sends_labels_jobs_in_batches_of_four(repo_root, venv_bin, tmp_path):
    """A dry run plans the per-file classifier jobs as group jobs (no SLURM needed)."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for k in range(8):
        (corpus / f"part-{k}.jsonl").write_text('{"id": "d%d", "text": "x"}\n' % k)
    for model in ("format_classifier", "model"):
        (tmp_path / model).mkdir()
    config = {
        "run": "grouping",
        "corpus": {
            "paths": [str(corpus / "*.jsonl")],
            "labels": {
                "topic": {"source": "field", "field": "metadata.weborganizer.topic"},
                "format": {"source": "classifier", "model": str(tmp_path / "format_classifier")},
            },
        },
        "models": {"document": {"path": str(tmp_path / "model")}},
        # No benchmarks key: a corpus-only run.
    }
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [
            str(venv_bin / "snakemake"), "-n",
            "--snakefile", str(repo_root / "Snakefile"),
            "--directory", str(tmp_path),
            "--configfile", str(config_path),
            "--profile", str(repo_root / "profiles" / "slurm"),
            "results/grouping/manifest/manifest.parquet",
        ],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    groups = result.stdout.split("Group job labels_batch")[1:]
    assert len(groups) == 2, result.stdout[-4000:]
    for group in groups:
        # A group lists its jobs indented; the next top-level job ends it.
        listing = re.split(r"^(?:rule|localrule) ", group, maxsplit=1, flags=re.M)[0]
        assert len(re.findall(r"^    rule labels:", listing, flags=re.M)) == 4, listing

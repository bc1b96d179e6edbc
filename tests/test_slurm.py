"""The SLURM profile on a real (single-node, localhost) SLURM cluster.

The reduced demo's first stages (helpers_runs.slurm_run: demo world and
model, working set, shards, queries) run through SLURM with profiles/slurm,
its partition set the way a user sets it, by editing the profile's
default-resources. Every job must go through sbatch with the resources its
rule declares, and the outputs must be byte-identical to the local
reference run's (helpers_runs.clean_run, the same config).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from helpers_runs import (
    clean_run,  # noqa: F401  (fixture)
    job_stats,
    runs_dir,  # noqa: F401  (fixture)
    slurm_run,  # noqa: F401  (fixture)
)

BENCHMARKS = ["socialiqa", "mmlu_social_sciences", "arc_challenge", "mmlu_stem"]
SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (.+?)\)\.")
# Snakemake's bookkeeping and the datasets library's random fingerprint.
NOT_COMPARED = {".snakemake_timestamp", "state.json"}


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
def test_every_job_goes_through_sbatch_with_its_rules_resources(slurm_run):  # noqa: F811
    slurm = slurm_run.slurm
    submitted = submissions(slurm_run.output, slurm_run.workdir / "logs" / "slurm")
    assert submitted, slurm_run.output[-4000:]
    for _, slurm_id, log in submitted:
        # Kept after success (slurm-keep-successful-logs), named by the job id.
        assert log.is_file(), f"no SLURM log {log}"
        assert log.name == f"{slurm_id}.log"
        job = slurm.command("scontrol", "show", "job", "--oneliner", slurm_id)
        assert "JobState=COMPLETED" in job, job
        assert f"Partition={slurm.partition}" in job, job
    # One SLURM job per planned job, each submitted once (none failed and was retried).
    planned = job_stats(slurm_run.output)
    assert set(planned) == {"demo_world", "demo_tokenizer", "manifest_scan", "manifest", "shards", "queries"}
    assert sorted(rule for rule, _, _ in submitted) == sorted(r for r, n in planned.items() for _ in range(n))

    # CPU-family rules ask SLURM for what config `resources.cpu` declares (attempt 1).
    cpu = yaml.safe_load(slurm_run.config_path.read_text())["resources"]["cpu"]
    shards_id = next(slurm_id for rule, slurm_id, _ in submitted if rule == "shards")
    job = slurm.command("scontrol", "show", "job", "--oneliner", shards_id)
    assert f"MinMemoryNode={cpu['mem_mb']}M" in job, job
    assert f"TimeLimit=00:{cpu['runtime']:02d}:00" in job, job
    assert f"NumCPUs={cpu['threads']}" in job, job


@pytest.mark.slow
def test_slurm_results_equal_the_local_run(clean_run, slurm_run):  # noqa: F811
    local_run, slurm_results = clean_run.results, slurm_run.results
    compared = ["manifest/manifest.parquet", "shards/shards.json"]
    compared += [f"shards/{p.name}" for p in sorted((local_run / "shards").glob("shard-*.parquet"))]
    compared += [
        str(p.relative_to(local_run))
        for p in sorted((local_run / "queries").glob("*/*"))
        if p.name not in NOT_COMPARED
    ]
    assert len([c for c in compared if c.startswith("shards/shard-")]) == 2
    assert {f"queries/{b}/queries.json" for b in BENCHMARKS} <= set(compared)
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


def test_slurm_profile_plans_one_gpu_scan_job_per_file_group(repo_root, venv_bin, tmp_path):
    """A dry run plans the classifying manifest scans as one GPU job per group of files (no SLURM needed)."""
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
        "manifest": {"files_per_scan": 4},
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
    from capatlas.corpus.readers import scan_groups

    groups = scan_groups(sorted(str(p) for p in corpus.glob("*.jsonl")), 4)
    jobs = re.split(r"^rule manifest_scan:", result.stdout, flags=re.M)[1:]
    assert len(jobs) == len(groups) < 8, result.stdout[-4000:]
    for job in jobs:
        assert re.search(r"resources: .*gpu=1", job), job[:1500]

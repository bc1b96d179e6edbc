"""Reduced demo runs shared by the rerun, determinism and SLURM tests.

A reduced demo (a model of a few thousand parameters trained for a few
steps, a couple of documents per bin, 2 shards) takes the DAG up to the
bin matrix in well under a minute of CPU. Runs are cached in this module,
so every test module that asks for the same run gets the same directory:
pytest builds a fixture imported into two modules twice, this cache once.

The reference run is built twice from scratch for the determinism tests,
and its first stages a third time through a single-node SLURM cluster on
localhost for the SLURM tests, which compare those outputs with the
reference's instead of making a local run of their own.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import Any
from pathlib import Path

import pandas as pd
import pytest
import yaml

from helpers_corpus import write_config as write_yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
RUN = "reduced"
BIN_MATRIX = f"results/{RUN}/influence/bin_matrix.parquet"
# One row of Snakemake's "Job stats" table: rule name, then the job count.
_JOB_STATS_ROW = re.compile(r"^(\w+)\s+(\d+)\s*$")


def reduced_config(shards: int = 2) -> dict:
    """The demo config shrunk to seconds per job; everything else as shipped."""
    config = yaml.safe_load((REPO_ROOT / "config" / "config.yaml").read_text())
    config["run"] = RUN
    config["demo"].update(n_files=2, docs_per_bin=2, items_per_benchmark=4)
    config["demo"]["model"] = {
        "vocab_size": 300,
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
    }
    config["demo"]["train"] = {"steps": 5, "batch_size": 4, "seq_len": 32, "warmup_steps": 1, "threads": 1}
    config["manifest"]["docs_per_bin"] = 1
    config["shards"]["count"] = shards
    config["attribution"]["preconditioner_docs"] = 64
    config["analysis"].update(bootstrap=20, permutations=20)
    # One thread per job: two jobs share the two cores. CPU-family resources
    # other than the defaults, so the SLURM test sees them reach sbatch.
    config["resources"]["gpu"]["threads"] = 1
    config["resources"]["cpu"] = {"threads": 1, "mem_mb": 1500, "runtime": 20}
    return config


def write_config(directory: Path, config: dict) -> Path:
    """`directory`/config.yaml (the directory made first), through helpers_corpus.write_config."""
    directory.mkdir(parents=True, exist_ok=True)
    return write_yaml(directory / "config.yaml", config)


def snakemake_command(workdir: Path, config_path: Path, *extra: str, cores: int = 2) -> list[str]:
    return [
        str(SNAKEMAKE),
        "--snakefile",
        str(REPO_ROOT / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(config_path),
        "--cores",
        str(cores),
        *extra,
    ]


def snakemake_env(base: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in (os.environ if base is None else base).items() if k != "CAPATLAS_FAIL_SHARDS"}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1", **extra)
    return env


def run_snakemake(
    workdir: Path, config_path: Path, *extra: str, env: dict | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    result = subprocess.run(
        snakemake_command(workdir, config_path, *extra),
        capture_output=True,
        text=True,
        env=env or snakemake_env(),
        timeout=600,
    )
    if check:
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-6000:]
    return result


def job_stats(output: str) -> dict[str, int]:
    """Jobs per rule from Snakemake's own "Job stats" table (the last one printed).

    Snakemake prints the table of the jobs it plans to run before running
    them; with --keep-going it runs exactly these or fewer.
    """
    blocks = output.split("Job stats:")
    assert len(blocks) > 1, f"no job stats in Snakemake's output:\n{output[-3000:]}"
    counts: dict[str, int] = {}
    for line in blocks[-1].splitlines()[1:]:
        line = line.strip()
        if not line or set(line) <= {"-", " "} or line.startswith("job "):
            if counts:
                break
            continue
        match = _JOB_STATS_ROW.match(line)
        if not match:
            break
        counts[match.group(1)] = int(match.group(2))
    counts.pop("total", None)
    return counts


def read_matrix(results: Path) -> pd.DataFrame:
    return pd.read_parquet(results / "influence" / "bin_matrix.parquet").sort_values(["benchmark", "bin_id"])


@dataclass(frozen=True)
class Run:
    """A finished reduced run: its Snakemake directory, config and results."""

    workdir: Path
    config_path: Path
    output: str
    # The SLURM cluster the run was submitted to, None for a local run.
    slurm: Any = None

    @property
    def results(self) -> Path:
        return self.workdir / "results" / RUN


_RUNS: dict[str, Run] = {}


def cached_run(name: str, base: Path, shards: int = 2) -> Run:
    """A clean reduced run up to the bin matrix, built once per test session."""
    if name not in _RUNS:
        workdir = base / name
        config_path = write_config(base / f"{name}-config", reduced_config(shards))
        result = run_snakemake(workdir, config_path, BIN_MATRIX)
        _RUNS[name] = Run(workdir, config_path, result.stdout + result.stderr)
    return _RUNS[name]


@pytest.fixture(scope="session")
def runs_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.getbasetemp() / "reduced-runs"


@pytest.fixture(scope="session")
def clean_run(runs_dir) -> Run:
    """The reference: a clean reduced run with 2 shards."""
    return cached_run("clean", runs_dir)


def _slurm_profile(cluster, directory: Path) -> Path:
    """profiles/slurm with its partition set the way a user sets it: in default-resources."""
    profile = directory / "slurm"
    shutil.copytree(REPO_ROOT / "profiles" / "slurm", profile)
    settings = yaml.safe_load((profile / "config.yaml").read_text())
    settings["default-resources"]["slurm_partition"] = cluster.partition
    (profile / "config.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    return profile


@pytest.fixture(scope="session")
def second_clean_run(runs_dir) -> Run:
    """The reference run again from scratch, locally (test_determinism compares the two)."""
    return cached_run("clean-again", runs_dir)


# The start of the reference run's DAG: demo world and tokenizer, working
# set, shards and queries. SLURM's status polling backs off by 10 s a round while
# no job finishes, so each step of a long chain costs up to a round more
# than locally; this short chain shows everything a SLURM submission must get
# right, and its outputs are compared with the local reference run's.


@pytest.fixture(scope="session")
def slurm_run(runs_dir, request) -> Run:
    """The reference config's first stages through a single-node SLURM cluster on localhost."""
    from slurm_cluster import ensure_installed, start_cluster

    reason = ensure_installed()
    if reason:
        pytest.skip(f"no SLURM for this test: {reason}")
    cluster = start_cluster()
    request.addfinalizer(cluster.stop)
    workdir = runs_dir / "slurm"
    config_path = write_config(runs_dir / "slurm-config", reduced_config())
    targets = [f"results/{RUN}/shards/shards.json"]
    targets += [f"results/{RUN}/queries/{b['name']}" for b in reduced_config()["benchmarks"]]
    result = run_snakemake(
        workdir, config_path, *targets,
        "--profile", str(_slurm_profile(cluster, runs_dir / "profile")),
        # This cluster has no accounting database, so no sacct: squeue sees
        # finished jobs for MinJobAge seconds. Short jobs: poll early.
        "--slurm-status-command", "squeue",
        "--slurm-init-seconds-before-status-checks", "2",
        env=snakemake_env(cluster.env),
    )  # fmt: skip
    return Run(workdir, config_path, result.stdout + result.stderr, slurm=cluster)


def copy_run(run: Run, dest: Path) -> Run:
    """A copy of a finished run (results, Snakemake metadata, mtimes) to build on."""
    shutil.copytree(run.workdir, dest, symlinks=True)
    return Run(dest, run.config_path, "")

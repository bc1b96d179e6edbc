"""The demo DAG end to end, as `make demo` runs it, in a scratch directory."""

from __future__ import annotations

import csv
import json

import pyarrow.parquet as pq
import pytest
import yaml

from capatlas import taxonomy
from conftest import REPO_ROOT, run_snakemake

pytestmark = pytest.mark.slow


def test_demo_writes_manifest_shards_and_model(demo_run):
    for name in ("manifest.parquet", "locations.parquet", "bin_summary.csv", "contract.json"):
        assert (demo_run / "manifest" / name).is_file(), name
    assert (demo_run / "demo" / "model" / "config.json").is_file()
    assert (demo_run / "demo" / "model" / "optimizer.pt").is_file()


def test_map_reduce_manifest_equals_the_single_job(demo_run, tmp_path):
    """The DAG's scan jobs + merge write the bytes one `capatlas manifest` process writes over the whole world."""
    import os
    import subprocess
    import sys

    scans = sorted((demo_run / "manifest_scan").iterdir())
    assert len(scans) > 1, scans  # the demo config splits its files over several scan jobs
    out = tmp_path / "single"
    workdir = demo_run.parent.parent
    run = demo_run.relative_to(workdir)  # the paths the contract records are the DAG's, relative to its directory
    subprocess.run(
        [sys.executable, "-m", "capatlas.cli", "manifest", "--config", str(demo_run / "config.yaml"), "--out", str(out),
         "--files", str(run / "demo" / "world" / "corpus" / "*.jsonl.zst"), "--tokenizer", str(run / "demo" / "tokenizer")],
        check=True, cwd=workdir, env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
    )  # fmt: skip
    for name in ("manifest.parquet", "locations.parquet", "bin_summary.csv", "contract.json"):
        assert (out / name).read_bytes() == (demo_run / "manifest" / name).read_bytes(), name


def test_demo_model_learned_the_planted_structure(demo_run):
    accuracy = json.loads((demo_run / "demo" / "model" / "demo_accuracy.json").read_text())
    benchmarks = accuracy.get("benchmarks", accuracy)
    assert set(benchmarks) >= {"socialiqa", "mmlu_social_sciences", "arc_challenge", "mmlu_stem"}
    for name, scores in benchmarks.items():
        assert scores["acc"] > scores["chance"] + 0.15, (name, scores)


def test_demo_manifest_covers_every_bin_within_quota(demo_run):
    manifest = pq.read_table(demo_run / "manifest" / "manifest.parquet").to_pandas()
    with open(demo_run / "manifest" / "bin_summary.csv") as handle:
        summary = list(csv.DictReader(handle))
    assert len(summary) == taxonomy.N_BINS
    per_bin = manifest.groupby("bin_id").size()
    assert per_bin.max() <= 4  # manifest.docs_per_bin of the demo config
    assert manifest["doc_id"].is_unique
    assert manifest["text_sha256"].is_unique  # exact duplicates were removed
    assert (manifest["n_tokens"] >= 16).all()  # manifest.min_tokens of the demo config
    sampled = {int(row["bin_id"]): int(row["sampled"]) for row in summary}
    assert sampled == {b: int(per_bin.get(b, 0)) for b in range(taxonomy.N_BINS)}


def test_demo_shards_partition_the_manifest(demo_run):
    manifest = pq.read_table(demo_run / "manifest" / "manifest.parquet").to_pandas()
    shard_ids = []
    count = yaml.safe_load((REPO_ROOT / "config" / "config.yaml").read_text())["shards"]["count"]
    for k in range(count):
        shard = pq.read_table(demo_run / "shards" / f"shard-{k:05d}.parquet").to_pandas()
        assert len(shard) > 0
        shard_ids.extend(shard["doc_id"])
    assert sorted(shard_ids) == sorted(manifest["doc_id"])


def test_second_run_has_nothing_to_do(repo_root, venv_bin, demo_run):
    result = run_snakemake(repo_root, venv_bin, demo_run.parent.parent, "-n")
    assert "Nothing to be done" in result.stdout + result.stderr

"""The demo's release bundle: written by the DAG on request, verified, loadable, and its study-layout CSVs
read back by `capatlas contrast` to the same 2 x 2 statistics."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, run_snakemake

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bundle(demo_run, venv_bin):
    workdir = demo_run.parent.parent
    run_snakemake(REPO_ROOT, venv_bin, workdir, "--config", "export={enabled: true}")
    return demo_run / "release"


def capatlas(*argv, cwd=None):
    return subprocess.run([sys.executable, "-m", "capatlas.cli", *argv], capture_output=True, text=True, cwd=cwd)


def test_bundle_verifies_and_lists_every_file(bundle):
    result = capatlas("verify-release", str(bundle))
    assert result.returncode == 0, result.stderr[-3000:]
    listed = [line.split("  ", 1)[1] for line in (bundle / "SHA256SUMS").read_text().splitlines()]
    assert listed == sorted(listed) and "README.md" in listed and "atlas.html" in listed
    for name in ("manifest/manifest.parquet", "influence/bin_matrix.parquet", "contrast/summary.json",
                 "unlearning/paired_stats.parquet", "scores/document_scores.parquet", "provenance.json",
                 "study_layout/zscored_socialiqa.csv"):  # fmt: skip
        assert name in listed, name
    provenance = json.loads((bundle / "provenance.json").read_text())
    assert len(provenance["model_sha256"]) == 64 and provenance["bergson_version"]
    assert len(provenance["tokenizer_sha256"]) == 64
    card = (bundle / "README.md").read_text()
    assert card.startswith("---\nlicense: odc-by\n") and "configs:" in card and "capatlas verify-release" in card


def test_tables_load_with_datasets(bundle, tmp_path, monkeypatch):
    import datasets
    import pandas as pd

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    for name, rel in (("bin_matrix", "influence/bin_matrix.parquet"), ("manifest", "manifest/manifest.parquet"),
                      ("document_scores", "scores/document_scores.parquet"),
                      ("unlearning_paired_stats", "unlearning/paired_stats.parquet")):  # fmt: skip
        loaded = datasets.load_dataset(str(bundle), name, split="train", cache_dir=str(tmp_path / "cache"))
        expected = pd.read_parquet(bundle / rel)
        assert loaded.num_rows == len(expected) and set(expected.columns) <= set(loaded.column_names), name


def test_study_layout_csvs_give_the_same_contrasts(bundle, tmp_path):
    """`capatlas contrast` on the study-layout CSVs: the same statistics as on the bin matrix (whose document and
    query intervals the CSVs cannot carry)."""
    config = str(bundle / "config.yaml")
    for name, matrix in (("csv", bundle / "study_layout"), ("parquet", bundle / "influence" / "bin_matrix.parquet")):
        result = capatlas("contrast", "--config", config, "--bin-matrix", str(matrix), "--out", str(tmp_path / name))
        assert result.returncode == 0, result.stderr[-3000:]
    csv = flatten(json.loads((tmp_path / "csv" / "summary.json").read_text()))
    parquet = flatten(json.loads((tmp_path / "parquet" / "summary.json").read_text()))
    # What the CSVs carry (bin means, counts) gives every statistic, bins and crossed interval; the document,
    # query and combined intervals (and what reads them) need the bootstrap replicates only the parquet has.
    needs_replicates = ("documents", "queries", "combined", "input", "reading", "why", "statement")
    shared = [k for k in parquet if k in csv and not any(part in k for part in needs_replicates)]
    assert len(shared) > 1000, len(shared)
    different = [k for k in shared if not (csv[k] == parquet[k] or csv[k] == pytest.approx(parquet[k], rel=1e-9, abs=1e-12))]
    assert not different, different[:10]
    assert any(k.endswith(".value") for k in shared) and any("ci_crossed" in k for k in shared)


def flatten(obj, prefix=""):
    """{dotted path: leaf} of a JSON document."""
    if isinstance(obj, dict):
        return {k: v for key, value in obj.items() for k, v in flatten(value, f"{prefix}.{key}").items()}
    if isinstance(obj, list):
        return {k: v for i, value in enumerate(obj) for k, v in flatten(value, f"{prefix}[{i}]").items()}
    return {prefix: obj}


def test_a_corrupted_file_is_named(bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    target = copy / "influence" / "topic_marginals.parquet"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    (copy / "stray.txt").write_text("not in the bundle")
    result = capatlas("verify-release", str(copy))
    assert result.returncode == 2
    assert "influence/topic_marginals.parquet: sha256 differs" in result.stderr
    assert "stray.txt: not listed" in result.stderr


def test_a_table_that_does_not_recompute_is_named(bundle, tmp_path):
    """Checksums made to match an edited table still fail the recomputation."""
    import pandas as pd

    from capatlas.artifacts.release import write_checksums

    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    csv = copy / "study_layout" / "zscored_arc_challenge.csv"
    frame = pd.read_csv(csv)
    frame.loc[3, "zscore"] += 0.5
    frame.to_csv(csv, index=False)
    write_checksums(copy)
    result = capatlas("verify-release", str(copy))
    assert result.returncode == 2 and "study_layout/zscored_arc_challenge.csv: differs" in result.stderr


def test_adapters_come_along_when_they_fit(bundle, demo_run, tmp_path):
    """export.adapters_max_mb: the unlearning runs' LoRA adapters join the bundle when they fit, and verify."""
    import yaml

    config = yaml.safe_load((bundle / "config.yaml").read_text())
    adapters = sorted((demo_run / "unlearning").glob("*/*/*/seed*/adapter"))
    assert adapters and not any("adapter/" in line for line in (bundle / "SHA256SUMS").read_text().splitlines())
    size_mb = sum(f.stat().st_size for a in adapters for f in a.rglob("*") if f.is_file()) / 2**20
    for limit, expected in ((size_mb * 2 + 1, len(adapters)), (size_mb / 2, 0)):
        config["export"]["adapters_max_mb"] = limit
        config_path = tmp_path / "config.yaml"
        config_path.write_text(yaml.safe_dump(config))
        out = tmp_path / f"bundle-{expected}"
        result = capatlas("export", "--config", str(config_path), "--run", str(demo_run), "--out", str(out))
        assert result.returncode == 0, result.stderr[-3000:]
        assert len(list((out / "unlearning" / "adapters").glob("*/*/*/seed*"))) == expected
        assert capatlas("verify-release", str(out)).returncode == 0

"""Determinism on CPU: two clean runs agree to the byte; 2 and 3 shards give the same bin matrix.

The runs are reduced demos (helpers_runs): the reference run is shared with
test_reruns and test_slurm; a second one is built from scratch, and a 3-shard run
re-shards the reference's working set (same demo world, model and manifest)
the way a user changes `shards.count` and reruns.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from capatlas.artifacts.binsums import ARRAYS, read_bin_sums

from helpers_runs import (
    BIN_MATRIX,
    Run,
    clean_run,  # noqa: F401  (fixture)
    copy_run,
    job_stats,
    read_matrix,
    reduced_config,
    run_snakemake,
    runs_dir,  # noqa: F401  (fixture)
    second_clean_run,  # noqa: F401  (fixture)
    write_config,
)

pytestmark = pytest.mark.slow

SHARDS = ["00000", "00001"]


@pytest.fixture(scope="module")
def second_run(second_clean_run) -> Run:  # noqa: F811
    """The same config from scratch."""
    return second_clean_run


@pytest.fixture(scope="module")
def three_shards(clean_run, runs_dir) -> Run:
    # Three, not a multiple of two: every shard boundary moves.
    run = copy_run(clean_run, runs_dir / "three-shards")
    config_path = write_config(runs_dir / "three-shards-config", reduced_config(shards=3))
    result = run_snakemake(run.workdir, config_path, BIN_MATRIX)
    return Run(run.workdir, config_path, result.stdout + result.stderr)


def test_two_clean_runs_write_the_same_manifest_bytes(clean_run, second_run):
    for name in ("manifest.parquet", "bin_summary.csv"):
        first = (clean_run.results / "manifest" / name).read_bytes()
        assert first == (second_run.results / "manifest" / name).read_bytes(), name


def test_two_clean_runs_give_identical_scores(clean_run, second_run):
    for shard in SHARDS:
        first = pq.read_table(clean_run.results / "attribution" / "scores" / f"shard-{shard}.parquet")
        again = pq.read_table(second_run.results / "attribution" / "scores" / f"shard-{shard}.parquet")
        # Data only: the provenance metadata names each run's own directory.
        assert first.equals(again), f"scores of shard {shard} differ"
        a = read_bin_sums(clean_run.results / "attribution" / "binsums" / f"shard-{shard}.safetensors")
        b = read_bin_sums(second_run.results / "attribution" / "binsums" / f"shard-{shard}.safetensors")
        assert list(a.benchmarks) == list(b.benchmarks)
        for name in a.benchmarks:
            assert a[name].item_ids == b[name].item_ids
            for key in ARRAYS:
                np.testing.assert_array_equal(getattr(a[name], key), getattr(b[name], key), err_msg=f"shard {shard}: {name}/{key}")


def test_two_clean_runs_give_identical_bin_matrices(clean_run, second_run):
    pd.testing.assert_frame_equal(read_matrix(clean_run.results), read_matrix(second_run.results), check_exact=True)


def test_two_and_three_shards_give_the_same_bin_matrix(clean_run, three_shards):
    # The 3-shard run really rescored three shards of the same documents.
    assert job_stats(three_shards.output)["score_shard"] == 3
    three_docs = pd.concat(
        pd.read_parquet(three_shards.results / "shards" / f"shard-{k:05d}.parquet", columns=["doc_id"])
        for k in range(3)
    )
    two_docs = pd.read_parquet(clean_run.results / "manifest" / "manifest.parquet", columns=["doc_id"])
    assert sorted(three_docs["doc_id"]) == sorted(two_docs["doc_id"])

    two, three = read_matrix(clean_run.results), read_matrix(three_shards.results)
    assert list(two.columns) == list(three.columns)
    np.testing.assert_array_equal(two[["benchmark", "bin_id"]].to_numpy(), three[["benchmark", "bin_id"]].to_numpy())
    np.testing.assert_array_equal(two["n_docs"], three["n_docs"])
    tolerance = 1e-6 * np.nanmax(np.abs(two["mean"]))
    for column in ("mean", "sd", "sem", "ci_low", "ci_high", "query_ci_low", "query_ci_high"):
        np.testing.assert_allclose(two[column], three[column], rtol=0, atol=tolerance, equal_nan=True, err_msg=column)
    np.testing.assert_allclose(
        two["zscore"], three["zscore"], rtol=0, atol=1e-6 * np.nanmax(np.abs(two["zscore"])), equal_nan=True
    )

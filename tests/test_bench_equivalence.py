"""The influence stage's speed-ups (issue 7) leave the numbers as they were.

The reference below is the bootstrap code as it stood before the
optimisation (float uniforms + searchsorted, float64 weight matrices, one
sort and gather per benchmark, sequential chunks, every bin-sums array
read, all in the influence job). The optimised draw (`doc_bootstrap`) must
give identical arrays, not merely close ones. Since the draw moved into
the score-shard jobs, influence adds per-shard sums instead of running
totals chunk by chunk: the weight sums stay exact (integers), the weighted
sums may differ in the last bits (summation order), so the end-to-end test
allows 1e-12 relative, and one shard is still bit for bit.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from scipy import stats

from capatlas.artifacts import doc_bootstrap as boot
from capatlas.analysis import influence as inf
from capatlas.taxonomy import N_BINS
from helpers_analysis import make_scores, write_shards

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)
_REFERENCE_CDF = stats.poisson.cdf(np.arange(21), 1.0)


def reference_splitmix64(x):
    with np.errstate(over="ignore"):
        z = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
        return z ^ (z >> np.uint64(31))


def reference_document_keys(doc_ids, seed):
    prefix = f"{seed}\0".encode()
    return np.array(
        [int.from_bytes(hashlib.blake2b(prefix + str(d).encode(), digest_size=8).digest(), "little") for d in doc_ids],
        dtype=np.uint64,
    )


def reference_poisson_weights(keys, n_replicates):
    replicate_keys = reference_splitmix64(np.arange(n_replicates, dtype=np.uint64) * np.uint64(0x2545F4914F6CDD1D))
    bits = reference_splitmix64(keys[:, None] ^ replicate_keys[None, :])
    uniform = (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
    return np.searchsorted(_REFERENCE_CDF, uniform, side="right").astype(np.float64)


def reference_add_bootstrap(doc_ids, bins, values, seed, chunk_rows, boot_sum, boot_weight):
    """The original BinAccumulator._add_bootstrap, adding into running [n_benchmarks, B, 576] totals."""
    n_bootstrap = boot_sum.shape[1]
    keys = reference_document_keys(doc_ids, seed)
    for a in range(0, len(keys), chunk_rows):
        weights = reference_poisson_weights(keys[a : a + chunk_rows], n_bootstrap)
        chunk_bins = bins[a : a + chunk_rows]
        for j in range(values.shape[1]):
            x = values[a : a + chunk_rows, j]
            ok = np.isfinite(x)
            if not ok.any():
                continue
            b, w, xs = chunk_bins[ok], weights[ok], x[ok]
            order = np.argsort(b, kind="stable")
            sorted_bins = b[order]
            starts = np.flatnonzero(np.r_[True, sorted_bins[1:] != sorted_bins[:-1]])
            present = sorted_bins[starts]
            w = w[order]
            boot_sum[j][:, present] += np.add.reduceat(w * xs[order][:, None], starts, axis=0).T
            boot_weight[j][:, present] += np.add.reduceat(w, starts, axis=0).T


def documents(n, seed, nan_rows=()):
    rng = np.random.default_rng(seed)
    doc_ids = [f"doc-{seed}-{i}" for i in range(n)]
    # Few bins, so most bins get many documents per chunk; a few bins stay empty.
    bins = rng.choice([0, 3, 17, 200, 575, 301], size=n).astype(np.int64)
    values = rng.normal(0.0, 0.05, size=(n, 3))
    for row, column in nan_rows:
        values[row, column] = np.nan
    return doc_ids, bins, values


def test_poisson_weights_are_bit_identical():
    keys = reference_document_keys([f"d{i}" for i in range(3000)], 7)
    expected = reference_poisson_weights(keys, 257)
    got = boot.poisson_weights(keys, 257)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, expected)
    # Large weights do occur (the tail of the CDF is exercised).
    assert expected.max() >= 5


@pytest.mark.parametrize("threads", [1, 3])
def test_bootstrap_sums_are_bit_identical(monkeypatch, threads):
    # Small chunks: many chunks per shard, so chunk order and threading matter.
    monkeypatch.setattr(boot, "_CHUNK_CELLS", 64 * 50)
    n_bootstrap = 50
    chunk_rows = max(1, boot._CHUNK_CELLS // n_bootstrap)
    shards = [
        documents(700, 1),
        # NaNs in one benchmark only: that benchmark's mask differs from the others'.
        documents(500, 2, nan_rows=[(3, 1), (64, 1), (65, 1), (499, 1)]),
        documents(130, 3, nan_rows=[(i, 2) for i in range(130)]),  # a benchmark with nothing scored
    ]
    accumulator = boot.DocumentBootstrap(3, n_bootstrap, seed=11, threads=threads)
    expected_sum = np.zeros((3, n_bootstrap, N_BINS))
    expected_weight = np.zeros((3, n_bootstrap, N_BINS))
    for doc_ids, bins, values in shards:
        accumulator.add(doc_ids, bins, values)
        reference_add_bootstrap(doc_ids, bins, values, 11, chunk_rows, expected_sum, expected_weight)
    assert expected_weight[2].sum() > 0 and expected_weight[1].sum() > 0
    np.testing.assert_array_equal(accumulator.boot_weight, expected_weight)
    np.testing.assert_array_equal(accumulator.boot_sum, expected_sum)


def reference_replicates(data, n_bootstrap, seed, chunk_rows):
    """Original influence: one running total over all documents in order, then sum / weight (else the bin mean)."""
    values = np.column_stack([data.doc_means(name).astype(np.float64) for name in data.benchmarks])
    nb = len(data.benchmarks)
    boot_sum, boot_weight = np.zeros((nb, n_bootstrap, N_BINS)), np.zeros((nb, n_bootstrap, N_BINS))
    reference_add_bootstrap(data.doc_ids, data.bins, values, seed, chunk_rows, boot_sum, boot_weight)
    means = np.array([[np.nanmean(values[data.bins == b, j]) if (data.bins == b).any() else np.nan
                       for b in range(N_BINS)] for j in range(nb)])  # fmt: skip
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(boot_weight > 0, boot_sum / boot_weight, means[:, None, :]), boot_weight


@pytest.mark.parametrize("n_shards", [1, 5])
def test_influence_from_per_shard_sums_equals_the_original_bootstrap(monkeypatch, tmp_path, n_shards):
    # Small chunks, so a shard spans several of them.
    monkeypatch.setattr(boot, "_CHUNK_CELLS", 64 * 30)
    data = make_scores(4, docs_per_bin=2, n_queries=3, empty_bins=(7, 8))
    scores, binsums = write_shards(data, tmp_path, n_shards, n_bootstrap=30, seed=13)
    result = inf.compute_influence(inf.pair_shards(scores, binsums), n_bootstrap=30, seed=13)
    # The reference reads the documents shard by shard (write_shards deals rows round-robin),
    # as the original influence job read them, into one running total.
    rows = np.concatenate([np.arange(k, len(data.bins), n_shards) for k in range(n_shards)])
    shuffled = type(data)(
        [data.doc_ids[i] for i in rows], data.bins[rows], {n: v[rows] for n, v in data.per_query.items()},
        data.benchmarks, data.provenance,
    )  # fmt: skip
    expected, weights = reference_replicates(shuffled, 30, 13, boot._CHUNK_CELLS // 30)
    assert (weights > 0).mean() > 0.5
    if n_shards == 1:
        np.testing.assert_array_equal(result.document_replicates, expected)
    else:
        np.testing.assert_allclose(result.document_replicates, expected, rtol=1e-12, atol=0)
        assert not np.array_equal(result.document_replicates, np.zeros_like(expected))

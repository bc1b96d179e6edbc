"""The influence stage's speed-ups (issue 7) leave every number bit for bit as it was.

The reference below is the bootstrap code as it stood before the
optimisation (float uniforms + searchsorted, float64 weight matrices, one
sort and gather per benchmark, sequential chunks, every bin-sums array
read). The optimised code must give identical arrays, not merely close
ones, so the published matrices do not move.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from scipy import stats

from capatlas import influence as inf
from capatlas.taxonomy import N_BINS

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
    got = inf.poisson_weights(keys, 257)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, expected)
    # Large weights do occur (the tail of the CDF is exercised).
    assert expected.max() >= 5


@pytest.mark.parametrize("threads", [1, 3])
def test_bootstrap_sums_are_bit_identical(monkeypatch, threads):
    # Small chunks: many chunks per shard, so chunk order and threading matter.
    monkeypatch.setattr(inf, "_CHUNK_CELLS", 64 * 50)
    n_bootstrap = 50
    chunk_rows = max(1, inf._CHUNK_CELLS // n_bootstrap)
    shards = [
        documents(700, 1),
        # NaNs in one benchmark only: that benchmark's mask differs from the others'.
        documents(500, 2, nan_rows=[(3, 1), (64, 1), (65, 1), (499, 1)]),
        documents(130, 3, nan_rows=[(i, 2) for i in range(130)]),  # a benchmark with nothing scored
    ]
    accumulator = inf.BinAccumulator(["a", "b", "c"], n_bootstrap, seed=11, threads=threads)
    expected_sum = np.zeros((3, n_bootstrap, N_BINS))
    expected_weight = np.zeros((3, n_bootstrap, N_BINS))
    for doc_ids, bins, values in shards:
        accumulator.add(doc_ids, bins, values)
        reference_add_bootstrap(doc_ids, bins, values, 11, chunk_rows, expected_sum, expected_weight)
    assert expected_weight[2].sum() > 0 and expected_weight[1].sum() > 0
    np.testing.assert_array_equal(accumulator.boot_weight, expected_weight)
    np.testing.assert_array_equal(accumulator.boot_sum, expected_sum)


def test_bin_sums_reader_matches_the_score_stage_reader(tmp_path):
    from capatlas.attribution_score import read_binsums

    rng = np.random.default_rng(0)
    arrays = {"benchmarks": np.array(["a", "b"]), "provenance": np.array('{"stage": "score-shard"}')}
    for name, q in (("a", 3), ("b", 5)):
        arrays[f"{name}/sum"] = rng.normal(size=(N_BINS, q))
        arrays[f"{name}/sumsq"] = rng.normal(size=(N_BINS, q)) ** 2
        arrays[f"{name}/count"] = rng.integers(0, 9, size=N_BINS)
        arrays[f"{name}/item_ids"] = np.array([f"{name}{i}" for i in range(q)])
    path = tmp_path / "shard-00000.npz"
    np.savez(path, **arrays)
    full, lean = read_binsums(path), inf.read_bin_sums(path)
    assert lean["provenance"] == full["provenance"]
    for name in ("a", "b"):
        assert set(lean[name]) == {"sum", "count", "item_ids"}
        for key in lean[name]:
            np.testing.assert_array_equal(lean[name][key], full[name][key])

"""The Poisson bootstrap over documents, as per-bin sums that add up across shards.

Each document gets a Poisson(1) weight per replicate, drawn from a
counter-based hash of (seed, doc_id, replicate), so a document's weights do
not depend on which shard it is in, where in the shard, or how many shards
there are. A replicate's bin mean is (sum of weight x score) / (sum of
weights) over the bin's documents; both sums add over shards, so each
`capatlas score-shard` job computes them for its own documents
(``<b>/boot_sum``, ``<b>/boot_weight`` in its bin sums) and
`capatlas influence` only adds [n_bootstrap, 576] arrays (issue 7: drawing
5.7e9 weights in the influence job took ~470 CPU s).

The combined bootstrap resamples documents and queries at once, the
two-way Poisson product-weight bootstrap of a crossed design (Owen and
Eckles 2012, "Bootstrapping data arrays of arbitrary order"): replicate r
gives document d the weight w_dr above and query q its own Poisson(1)
weight v_qr, keyed by (seed, benchmark, query item id), and a bin's
replicate mean is sum_dq w_dr v_qr s_dq / (sum_d w_dr sum_q v_qr). Its sums
add over shards like the document bootstrap's: each shard adds, per bin,
w_dr times the document's v-weighted mean over the queries
(``<b>/joint_sum``); the weight sums are the document bootstrap's.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from scipy import stats

from capatlas.taxonomy import N_BINS

# Recorded in the score-shard provenance: a change to how weights are drawn
# must make old shard outputs unusable, not silently mixed with new ones.
WEIGHTS_SCHEME = (
    "poisson1: splitmix64(blake2b-64(seed \\0 doc_id) ^ splitmix64(replicate * 0x2545F4914F6CDD1D)); "
    "joint: documents' weights x queries' weights, keyed by doc_id 'query \\0 benchmark \\0 item_id'"
)

# Poisson(1) CDF; weights above 20 have probability < 1e-19.
_POISSON_CDF = stats.poisson.cdf(np.arange(21), 1.0)
# The CDF on the 53-bit grid the uniforms live on: u = m / 2**53 >= cdf[k]
# exactly when the integer m >= ceil(cdf[k] * 2**53) (scaling by a power of
# two is exact), so integer comparisons give the float draws' weights bit
# for bit without converting 5.7e9 draws to float.
_POISSON_THRESHOLDS = np.ceil(_POISSON_CDF * float(1 << 53)).astype(np.uint64)
# Cells (documents x replicates) drawn at a time.
_CHUNK_CELLS = 1 << 22


def _splitmix64(x: np.ndarray, *, inplace: bool = False) -> np.ndarray:
    # uint64 arithmetic wraps modulo 2**64, which is what splitmix64 wants; in
    # place, because each pass touches (documents x replicates) cells.
    with np.errstate(over="ignore"):
        z = x if inplace else x.copy()
        z += np.uint64(0x9E3779B97F4A7C15)
        z ^= z >> np.uint64(30)
        z *= np.uint64(0xBF58476D1CE4E5B9)
        z ^= z >> np.uint64(27)
        z *= np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
        return z


def document_keys(doc_ids: Sequence[str], seed: int) -> np.ndarray:
    """A 64-bit key per document from (seed, doc_id): a document's bootstrap weights follow it across shards."""
    prefix = f"{seed}\0".encode()
    return np.array(
        [int.from_bytes(hashlib.blake2b(prefix + str(d).encode(), digest_size=8).digest(), "little") for d in doc_ids],
        dtype=np.uint64,
    )


def poisson_weights(keys: np.ndarray, n_replicates: int, dtype=np.float64) -> np.ndarray:
    """[len(keys), n_replicates] Poisson(1) weights, a pure function of (key, replicate).

    The uniform draw is the top 53 bits of splitmix64(key ^ replicate key);
    the weight is how many CDF steps it passes.
    """
    replicate_keys = _splitmix64(np.arange(n_replicates, dtype=np.uint64) * np.uint64(0x2545F4914F6CDD1D))
    bits = _splitmix64(keys[:, None] ^ replicate_keys[None, :], inplace=True)
    bits >>= np.uint64(11)
    return np.searchsorted(_POISSON_THRESHOLDS, bits, side="right").astype(dtype)


def query_mean_weights(item_ids: Sequence[str], benchmark: str, n_replicates: int, seed: int) -> np.ndarray:
    """[n_queries, n_replicates]: each replicate's Poisson(1) query weights, normalised to sum to 1.

    Keyed by (seed, benchmark, item id), so every shard and the influence job
    draw the same ones. A replicate that drew no query at all (probability
    e^-n_queries) weighs every query equally: the plain mean.
    """
    keys = document_keys([f"query\0{benchmark}\0{item}" for item in item_ids], seed)
    weights = poisson_weights(keys, n_replicates)
    totals = weights.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, weights / np.maximum(totals, 1), 1.0 / max(1, len(item_ids)))


@dataclass(frozen=True)
class BinGroups:
    """A block of documents grouped by bin: rows in bin order (stable, so each bin's rows keep their order),
    where each present bin's rows start in that order, and the present bins."""

    order: np.ndarray
    starts: np.ndarray
    present: np.ndarray

    def sums(self, rows: np.ndarray) -> np.ndarray:
        """[n_present, ...] sums of `rows` (aligned with the block's documents) per present bin."""
        return np.add.reduceat(rows[self.order], self.starts, axis=0)


def bin_groups(bins: np.ndarray) -> BinGroups:
    order = np.argsort(bins, kind="stable")
    sorted_bins = np.asarray(bins)[order]
    starts = np.flatnonzero(np.r_[True, sorted_bins[1:] != sorted_bins[:-1]])
    return BinGroups(order, starts, sorted_bins[starts])


def joint_bin_sums(
    doc_weights: np.ndarray, groups: BinGroups, scores: np.ndarray, query_weights: np.ndarray
) -> np.ndarray:
    """One block of documents' part of the combined bootstrap: [n_present, B] sums, for `groups.present`.

    doc_weights [n_docs, B] (the document bootstrap's), `groups` the block's
    `bin_groups`, scores [n_docs, n_queries], query_weights [n_queries, B]
    from `query_mean_weights`; the sum per bin is of w_dr x (sum_q v_qr s_dq
    / sum_q v_qr).
    """
    return groups.sums(doc_weights * (np.asarray(scores, dtype=np.float64) @ query_weights))


def default_threads() -> int:
    """The cores this process may use (SLURM and cgroups set the affinity), at most 8."""
    try:
        return max(1, min(8, len(os.sched_getaffinity(0))))
    except AttributeError:  # not on Linux
        return max(1, min(8, os.cpu_count() or 1))


class DocumentBootstrap:
    """Per benchmark, replicate and bin: sum of weight x score and sum of weights, in float64.

    ``add`` may be called repeatedly (the sums run on); one call per shard
    gives exactly what ``score-shard`` writes for that shard.
    """

    def __init__(self, n_benchmarks: int, n_bootstrap: int, seed: int, threads: int | None = None):
        self.n_benchmarks = n_benchmarks
        self.n_bootstrap = n_bootstrap
        self.seed = seed
        self.threads = threads or default_threads()
        # Stored bin-major so that adding a chunk's [bins, replicates] block writes whole rows;
        # boot_sum and boot_weight are [nb, B, 576] views of them.
        self._boot_sum = np.zeros((n_benchmarks, N_BINS, n_bootstrap))
        self._boot_weight = np.zeros((n_benchmarks, N_BINS, n_bootstrap))
        self.boot_sum = self._boot_sum.transpose(0, 2, 1)
        self.boot_weight = self._boot_weight.transpose(0, 2, 1)

    def add(self, doc_ids: Sequence[str], bins: np.ndarray, values: np.ndarray) -> None:
        """Add documents (values: [n_docs, n_benchmarks], NaN = unscored for that benchmark)."""
        if not self.n_bootstrap or not len(doc_ids):
            return
        bins = np.asarray(bins, dtype=np.int64)
        values = np.asarray(values, dtype=np.float64)
        keys = document_keys(doc_ids, self.seed)
        step = max(1, _CHUNK_CELLS // self.n_bootstrap)
        starts = range(0, len(keys), step)

        def chunk(a: int) -> list:
            return self._chunk(keys[a : a + step], bins[a : a + step], values[a : a + step])

        if self.threads > 1 and len(starts) > 1:
            # numpy releases the GIL in these kernels; at most `threads` chunks are in flight.
            with ThreadPoolExecutor(self.threads) as pool:
                pending = [pool.submit(chunk, a) for a in starts[: self.threads]]
                for a in starts[self.threads :]:
                    self._merge(pending.pop(0).result())
                    pending.append(pool.submit(chunk, a))
                for future in pending:
                    self._merge(future.result())
        else:
            for a in starts:
                self._merge(chunk(a))

    def _chunk(self, keys: np.ndarray, bins: np.ndarray, values: np.ndarray) -> list:
        """Per benchmark (present bins, [n_present, B] weighted sums, [n_present, B] weight sums) of one chunk.

        A pure function of its inputs, so chunks can run in parallel; the
        caller adds them in chunk order, which keeps every sum bit for bit
        what one sequential pass gives.
        """
        # Weights are small integers: uint8 keeps the matrix 8x smaller, and
        # uint8 * float64 and integer sums are exact, so nothing changes.
        weights = poisson_weights(keys, self.n_bootstrap, dtype=np.uint8)
        out = []
        previous = None  # benchmarks scored on the same documents share the sort, gather and weight sums
        for j in range(self.n_benchmarks):
            x = values[:, j]
            ok = np.isfinite(x)
            if not ok.any():
                out.append(None)
                continue
            if previous is not None and np.array_equal(ok, previous[0]):
                _, groups, w, weight_sums = previous
            else:
                groups = bin_groups(bins[ok])
                w = weights[ok][groups.order]
                weight_sums = np.add.reduceat(w, groups.starts, axis=0, dtype=np.float64)
                previous = (ok, groups, w, weight_sums)
            sums = np.add.reduceat(w * x[ok][groups.order][:, None], groups.starts, axis=0)
            out.append((groups.present, sums, weight_sums))
        return out

    def _merge(self, parts: list) -> None:
        for j, part in enumerate(parts):
            if part is None:
                continue
            present, sums, weight_sums = part
            self._boot_sum[j][present] += sums
            self._boot_weight[j][present] += weight_sums


def shard_bootstrap(
    doc_ids: Sequence[str], bins: np.ndarray, values: np.ndarray, n_bootstrap: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """One shard's [n_benchmarks, n_bootstrap, 576] weighted score sums (float64) and weight sums (uint32).

    `values` is [n_docs, n_benchmarks], NaN where a document is unscored.

    Weight sums are integers; uint32 holds them exactly (a bin would need
    200M documents in one shard to overflow) at half the bytes of float64.
    """
    boot = DocumentBootstrap(values.shape[1], n_bootstrap, seed)
    boot.add(doc_ids, bins, values)
    return np.ascontiguousarray(boot.boot_sum), np.ascontiguousarray(boot.boot_weight).astype(np.uint32)

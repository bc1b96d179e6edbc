"""`capatlas influence`: shard scores -> the bin-level influence matrix.

Streams every shard's ``attribution/scores/shard-*.parquet`` (one float32
column per benchmark, the document's mean cosine over that benchmark's
queries) and ``attribution/binsums/shard-*.safetensors`` (per bin and
query: sum and count; `capatlas.artifacts.binsums`), one shard at a time, into per-bin accumulators.
Memory depends on bins x benchmarks x bootstrap replicates, never on the
number of documents.

Per benchmark and bin (576 bins, empty ones kept with n_docs = 0):

* ``mean``, ``sd`` (ddof = 1), ``sem``: over the bin's scored documents,
  merged across shards with Chan's parallel update in float64;
* ``zscore``: (mean - mean over non-empty bins) / sd over non-empty bins,
  ddof = 1, as in the study; empty bins get NaN and do not count;
* ``ci_low``/``ci_high``: the bin mean's percentile CI from the combined
  bootstrap, which resamples documents and queries at once (the two-way
  Poisson product-weight bootstrap of a crossed design, Owen and Eckles
  2012): both sources of uncertainty in one interval;
* ``z_ci_low``/``z_ci_high``: the same for the bin's z, re-standardised
  within each replicate;
* ``doc_ci_low``/``doc_ci_high`` and ``query_ci_low``/``query_ci_high``: the
  one-way components, documents alone and queries alone.

Documents get a Poisson(1) weight per replicate, drawn from a counter-based
hash of (seed, doc_id, replicate), and queries from one of (seed,
benchmark, item id) (`capatlas.artifacts.doc_bootstrap`), so the replicates
do not depend on shard count, shard order or row order. Every score-shard
job has already summed weight x score and the weights per replicate and bin
for its documents (``<b>/boot_sum``, ``<b>/boot_weight``, ``<b>/joint_sum``);
this stage adds those up, so it never draws a document weight itself. The
queries-alone interval resamples the queries with replacement from the bin
sums.

With the working set's bin summary, the document part of the document and
combined replicates is shrunk by the finite-population factor
sqrt(1 - sampled/eligible): a bin sampled in full keeps only the queries'
uncertainty.

Topic and format marginals per benchmark: ``mean_z`` (unweighted mean of
the non-empty bins' z, the study's definition), ``weighted_mean_z``
(weighted by n_docs), with the combined bootstrap's CI of ``mean_z``
(``ci_low``/``ci_high``) and the documents-alone one (``doc_ci_*``).

The bootstrap replicates of every bin mean go to ``bin_bootstrap.npz``
(``<benchmark>/combined``, ``<benchmark>/documents`` and
``<benchmark>/queries``, float64 [n_bootstrap, 576]) so that
`capatlas contrast` can put each kind of CI on every statistic it derives.

All shards must come from one attribution run: the same model, Bergson
version and attribution settings, the same preconditioner and the same
query sets; and their document bootstrap must have been drawn with this
stage's ``analysis.bootstrap`` and ``seed``. A shard that differs is
refused by name.
"""

from __future__ import annotations

import argparse
import logging
import os
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from scipy import stats
from tqdm import tqdm

from capatlas.command import Command
from capatlas.artifacts.bin_matrix import write_influence_files
from capatlas.artifacts.bin_summary import read_bin_counts
from capatlas.artifacts.binsums import BenchmarkSums, BinSums, read_bin_sums
from capatlas.artifacts.scores import check_score_identity, read_score_provenance, read_scores, run_signature, shard_key
from capatlas.artifacts.provenance import canonical_json, identity_differences
from capatlas.artifacts.doc_bootstrap import WEIGHTS_SCHEME, query_mean_weights
from capatlas.errors import CapatlasError
from capatlas.taxonomy import FORMAT_SLUGS, N_BINS, N_FORMATS, N_TOPICS, TOPIC_SLUGS

log = logging.getLogger(__name__)

COMMAND = Command(config_help="capatlas config (keys seed and analysis)")

STAGE = "influence"
# Bins with fewer scored documents get `small_bin`: their percentile intervals are unreliable (zero width at one).
SMALL_BIN = 5

BIN_TOPIC = np.arange(N_BINS) // N_FORMATS
BIN_FORMAT = np.arange(N_BINS) % N_FORMATS



# --------------------------------------------------------------------------- shard inputs


@dataclass(frozen=True)
class ShardFiles:
    key: str
    scores: Path
    binsums: Path


def pair_shards(scores: Sequence[str | os.PathLike], binsums: Sequence[str | os.PathLike]) -> list[ShardFiles]:
    """Match score and bin-sum files by shard name; every shard needs both."""
    by_scores = {shard_key(Path(p)): Path(p) for p in scores}
    by_binsums = {shard_key(Path(p)): Path(p) for p in binsums}
    if len(by_scores) != len(scores) or len(by_binsums) != len(binsums):
        raise CapatlasError("the same shard was given twice (--scores or --binsums)")
    missing = sorted(set(by_scores) ^ set(by_binsums))
    if missing:
        which = ["bin sums" if k in by_scores else "scores" for k in missing]
        raise CapatlasError(
            "every shard needs both its scores and its bin sums: "
            + ", ".join(f"{k} has no {w} file" for k, w in zip(missing, which))
        )
    if not by_scores:
        raise CapatlasError("no shards given (--scores, --binsums)")
    for path in [*by_scores.values(), *by_binsums.values()]:
        if not path.is_file():
            raise CapatlasError(f"{path} does not exist: run `capatlas score-shard` for it first")
    return [ShardFiles(k, by_scores[k], by_binsums[k]) for k in sorted(by_scores)]


def check_same_run(reference: dict, reference_source: Path, signature: dict, source: Path) -> None:
    differences = identity_differences(reference, signature)
    if differences:
        shown = "; ".join(
            d.replace(" there but ", f" in {source.name} but ").replace(" in this job", f" in {reference_source.name}")
            for d in differences[:4]
        )
        raise CapatlasError(
            f"shard {source} was scored in a different attribution run than {reference_source} "
            f"(different model, settings, preconditioner or queries): {shown}. "
            "Rescore it with `capatlas score-shard` against the same preconditioner and query indices"
        )


def check_bootstrap_settings(provenance: dict, source: Path, n_bootstrap: int, seed: int) -> None:
    """Refuse a shard whose document bootstrap was drawn with other settings than this stage's."""
    recorded = provenance.get("document_bootstrap")
    if not isinstance(recorded, dict):
        raise CapatlasError(
            f"{source} carries no document bootstrap (provenance key 'document_bootstrap'): it was scored by an "
            "older `capatlas score-shard`; rescore it (e.g. `snakemake --forcerun score_shard`)"
        )
    expected = {"n_bootstrap": n_bootstrap, "seed": seed, "weights": WEIGHTS_SCHEME}
    if not n_bootstrap:
        # No replicate is used, so the seed and scheme they were drawn with do not matter.
        expected = {"n_bootstrap": 0}
    differences = [
        f"{key} is {recorded.get(key, '<missing>')!r} there but {value!r} here"
        for key, value in expected.items()
        if recorded.get(key) != value
    ]
    if differences:
        raise CapatlasError(
            f"{source}: its document bootstrap was drawn with other settings than this stage's "
            f"(config keys analysis.bootstrap and seed): {'; '.join(differences)}. Rescore the shard with this "
            "config (score_shard reruns when either key changes), or run influence with the shards' config"
        )


# --------------------------------------------------------------------------- accumulation


class BinAccumulator:
    """Per benchmark and bin: count, mean, M2 (Chan merge) and the shards' bootstrap sums, in float64."""

    def __init__(self, benchmarks: Sequence[str], n_bootstrap: int):
        self.benchmarks = list(benchmarks)
        self.n_bootstrap = n_bootstrap
        nb = len(self.benchmarks)
        self.count = np.zeros((nb, N_BINS), dtype=np.int64)
        self.mean = np.zeros((nb, N_BINS))
        self.m2 = np.zeros((nb, N_BINS))
        self.boot_sum = np.zeros((nb, n_bootstrap, N_BINS))
        self.boot_weight = np.zeros((nb, n_bootstrap, N_BINS))
        self.joint_sum = np.zeros((nb, n_bootstrap, N_BINS))

    def add(self, bins: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Add one shard's documents (values: [n_docs, n_benchmarks], NaN = unscored); returns per-bin scored counts."""
        bins = np.asarray(bins, dtype=np.int64)
        values = np.asarray(values, dtype=np.float64)
        scored_counts = np.zeros((len(self.benchmarks), N_BINS), dtype=np.int64)
        for j in range(len(self.benchmarks)):
            ok = np.isfinite(values[:, j])
            b, x = bins[ok], values[ok, j]
            n = np.bincount(b, minlength=N_BINS)
            scored_counts[j] = n
            if not len(x):
                continue
            has = n > 0
            mean = np.zeros(N_BINS)
            mean[has] = np.bincount(b, weights=x, minlength=N_BINS)[has] / n[has]
            m2 = np.bincount(b, weights=(x - mean[b]) ** 2, minlength=N_BINS)
            total = self.count[j] + n
            delta = mean - self.mean[j]
            with np.errstate(invalid="ignore", divide="ignore"):
                new_mean = np.where(has, self.mean[j] + delta * n / np.maximum(total, 1), self.mean[j])
                new_m2 = np.where(
                    has, self.m2[j] + m2 + delta**2 * self.count[j] * n / np.maximum(total, 1), self.m2[j]
                )
            self.mean[j], self.m2[j], self.count[j] = new_mean, new_m2, total
        return scored_counts

    def add_bootstrap(self, j: int, boot_sum: np.ndarray, boot_weight: np.ndarray, joint_sum: np.ndarray) -> None:
        """Add one shard's [n_bootstrap, 576] bootstrap sums of benchmark j (weight sums are exact integers)."""
        self.boot_sum[j] += boot_sum
        self.boot_weight[j] += boot_weight
        self.joint_sum[j] += joint_sum

    def bin_stats(self) -> dict[str, np.ndarray]:
        n = self.count
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(n > 0, self.mean, np.nan)
            sd = np.where(n > 1, np.sqrt(np.maximum(self.m2, 0.0) / np.maximum(n - 1, 1)), np.nan)
            sem = sd / np.sqrt(n)
        return {"n_docs": n, "mean": mean, "sd": sd, "sem": sem}

    def document_replicates(self) -> np.ndarray:
        """[n_benchmarks, n_bootstrap, 576] bin means; a replicate that drew no document of a bin keeps the bin's mean."""
        mean = self.bin_stats()["mean"]
        with np.errstate(invalid="ignore", divide="ignore"):
            reps = self.boot_sum / self.boot_weight
        return np.ascontiguousarray(np.where(self.boot_weight > 0, reps, mean[:, None, :]))

    def combined_replicates(self, query_part: np.ndarray) -> np.ndarray:
        """[n_benchmarks, n_bootstrap, 576] bin means of the combined bootstrap; a replicate that drew no document
        of a bin keeps its queries-only value (`query_part`, the same replicate's query weights on all documents)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            reps = self.joint_sum / self.boot_weight
        return np.ascontiguousarray(np.where(self.boot_weight > 0, reps, query_part))


def query_replicates(sums: np.ndarray, counts: np.ndarray, n_bootstrap: int, seed: int, name: str) -> np.ndarray:
    """[n_bootstrap, 576] bin means with the benchmark's queries resampled with replacement."""
    n_queries = sums.shape[1]
    rng = np.random.default_rng([seed, zlib.crc32(name.encode()), 1])
    draws = rng.multinomial(n_queries, np.full(n_queries, 1.0 / n_queries), size=n_bootstrap).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (draws @ sums.T) / (n_queries * counts[None, :].astype(np.float64))


def query_part_replicates(
    sums: np.ndarray, counts: np.ndarray, item_ids: Sequence[str], name: str, n_bootstrap: int, seed: int
) -> np.ndarray:
    """[n_bootstrap, 576] bin means under the combined bootstrap's query weights alone (every document weight 1).

    The centre the combined replicates' document part varies around: it
    stands in where a replicate drew no document of a bin and anchors the
    finite-population correction.
    """
    weights = query_mean_weights(list(item_ids), name, n_bootstrap, seed)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sums @ weights).T / counts[None, :].astype(np.float64)


def zscore(values: np.ndarray) -> np.ndarray:
    """z across the last axis over finite entries (ddof = 1); NaN stays NaN."""
    values = np.asarray(values, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        center = np.nanmean(values, axis=-1, keepdims=True)
        scale = np.nanstd(values, axis=-1, ddof=1, keepdims=True)
        return (values - center) / scale


def percentile_ci(replicates: np.ndarray, level: float, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    alpha = (1.0 - level) / 2.0
    # All-NaN slices (empty bins) give NaN without a warning.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        low = np.nanquantile(replicates, alpha, axis=axis)
        high = np.nanquantile(replicates, 1.0 - alpha, axis=axis)
    return low, high


def bca_interval(observed: float, replicates: np.ndarray, jackknife: np.ndarray, level: float) -> tuple[float, float]:
    """Efron's bias-corrected and accelerated interval from bootstrap replicates and jackknife values.

    Bias correction z0 from the share of replicates below the estimate;
    acceleration a from the jackknife (leave-one-unit-out) values'
    skewness; the interval is the replicates' quantiles at the corrected
    levels. NaN where the replicates or jackknife values do not allow it.
    """
    reps = replicates[np.isfinite(replicates)]
    jack = jackknife[np.isfinite(jackknife)]
    if len(reps) < 2 or len(jack) < 3 or not np.isfinite(observed):
        return (np.nan, np.nan)
    share = np.mean(reps < observed)
    if share in (0.0, 1.0):
        return (np.nan, np.nan)
    z0 = stats.norm.ppf(share)
    deviation = jack.mean() - jack
    denominator = 6.0 * np.sum(deviation**2) ** 1.5
    accel = np.sum(deviation**3) / denominator if denominator > 0 else 0.0
    bounds = []
    for tail in ((1 - level) / 2, (1 + level) / 2):
        z = stats.norm.ppf(tail)
        bounds.append(stats.norm.cdf(z0 + (z0 + z) / (1 - accel * (z0 + z))))
    return tuple(float(v) for v in np.quantile(reps, bounds))


def group_means(values: np.ndarray, groups: np.ndarray, n_groups: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Mean of `values` (last axis) per group over finite entries, optionally weighted."""
    ok = np.isfinite(values)
    w = ok.astype(np.float64) if weights is None else np.where(ok, weights, 0.0)
    x = np.where(ok, values, 0.0)
    onehot = np.zeros((len(groups), n_groups))
    onehot[np.arange(len(groups)), groups] = 1.0
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((x * w) @ onehot) / (w @ onehot)


# --------------------------------------------------------------------------- the stage


@dataclass
class InfluenceResult:
    benchmarks: list[str]
    matrix: pd.DataFrame
    topic_marginals: pd.DataFrame
    format_marginals: pd.DataFrame
    document_replicates: np.ndarray  # [nb, B, 576]
    query_replicates: np.ndarray  # [nb, B, 576]
    combined_replicates: np.ndarray  # [nb, B, 576]
    provenance: dict


def _read_shard_scores(shard: ShardFiles, benchmarks: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The shard's bins and document scores [docs, benchmarks]; doc_id is not read (the bootstrap comes summed)."""
    names = pq.read_schema(shard.scores).names
    missing = [c for c in ("doc_id", "bin_id", *benchmarks) if c not in names]
    if missing:
        raise CapatlasError(f"{shard.scores} lacks column(s) {', '.join(missing)}")
    # Page checksums (written by score-shard) catch a flipped bit in the data.
    table = read_scores(shard.scores, ["bin_id", *benchmarks], rerun=f"rescore {shard.key}")
    bins = table.column("bin_id").to_numpy(zero_copy_only=False).astype(np.int64)
    if len(bins) and (bins.min() < 0 or bins.max() >= N_BINS):
        raise CapatlasError(f"{shard.scores}: bin_id outside 0..{N_BINS - 1}")
    if not len(bins):
        return bins, np.zeros((0, len(benchmarks)))
    values = np.column_stack([table.column(b).to_numpy(zero_copy_only=False).astype(np.float64) for b in benchmarks])
    return bins, values


@dataclass
class _QuerySums:
    """Per benchmark: bin sums per query and scored-document counts, added over shards."""

    sums: dict[str, np.ndarray] = field(default_factory=dict)
    counts: dict[str, np.ndarray] = field(default_factory=dict)
    item_ids: dict[str, np.ndarray] = field(default_factory=dict)

    def add(self, shard: ShardFiles, name: str, entry: BenchmarkSums, scored: np.ndarray, n_bootstrap: int) -> None:
        if not np.array_equal(entry.count, scored):
            bad = int(np.flatnonzero(entry.count != scored)[0])
            raise CapatlasError(
                f"{shard.binsums} counts {int(entry.count[bad])} scored documents in bin {bad} for {name!r}, "
                f"but {shard.scores} has {int(scored[bad])}: the two files do not belong together; rescore {shard.key}"
            )
        item_ids = np.array(entry.item_ids, dtype=str)
        if name not in self.sums:
            self.sums[name] = np.zeros_like(entry.sum, dtype=np.float64)
            self.counts[name] = np.zeros(N_BINS, dtype=np.int64)
            self.item_ids[name] = item_ids
        elif not np.array_equal(self.item_ids[name], item_ids):
            raise CapatlasError(f"{shard.binsums}: the queries of {name!r} differ from those of earlier shards")
        self.sums[name] += entry.sum
        self.counts[name] += entry.count
        boot_shape = (n_bootstrap, N_BINS)
        for key in ("boot_sum", "boot_weight", "joint_sum"):
            if getattr(entry, key).shape != boot_shape:
                raise CapatlasError(
                    f"{shard.binsums}: {name}/{key} has shape {getattr(entry, key).shape}, not {boot_shape}; "
                    f"rescore {shard.key}"
                )


def _read_bin_sums_of(shard: ShardFiles, provenance: dict) -> BinSums:
    # sumsq is not read: this stage does not use it.
    sums = read_bin_sums(shard.binsums, arrays=("sum", "count", "boot_sum", "boot_weight", "joint_sum"))
    if canonical_json(sums.provenance) != canonical_json(provenance):
        raise CapatlasError(
            f"{shard.binsums} and {shard.scores} carry different provenance: they are not the two "
            f"outputs of one `capatlas score-shard` run of {shard.key}; rescore that shard"
        )
    return sums


def compute_influence(
    shards: Sequence[ShardFiles],
    *,
    n_bootstrap: int = 1000,
    seed: int = 42,
    ci_level: float = 0.95,
    bin_counts: tuple[Path, dict[str, np.ndarray]] | None = None,
) -> InfluenceResult:
    """Stream the shards (one at a time) into bin accumulators; return the matrix, marginals and replicates.

    `bin_counts`: the working set's bin summary (its path, and its counts from
    artifacts/bin_summary.py); with it the document bootstrap is corrected
    for sampling without replacement from each bin's eligible documents.
    """
    reference = None
    accumulator = None
    query_sums = _QuerySums()
    n_docs_total = 0
    seen_shards: dict[str, str] = {}
    for shard in tqdm(shards, desc="influence: shards", unit="shard"):
        provenance = read_score_provenance(shard.scores)
        check_score_identity(shard.scores, provenance, seen_shards)
        sums = _read_bin_sums_of(shard, provenance)
        signature = run_signature(provenance)
        if reference is None:
            reference = (signature, shard.scores, provenance)
        else:
            check_same_run(reference[0], reference[1], signature, shard.scores)
        check_bootstrap_settings(provenance, shard.binsums, n_bootstrap, seed)
        benchmarks = [b["name"] for b in provenance.get("benchmarks") or []]
        if not benchmarks:
            raise CapatlasError(f"{shard.scores}: its provenance lists no benchmarks; rerun `capatlas score-shard`")
        if accumulator is None:
            accumulator = BinAccumulator(benchmarks, n_bootstrap)
        bins, values = _read_shard_scores(shard, benchmarks)
        scored = accumulator.add(bins, values)
        n_docs_total += len(bins)
        for j, name in enumerate(benchmarks):
            if name not in sums.benchmarks:
                raise CapatlasError(f"{shard.binsums} holds no bin sums for benchmark {name!r}; rescore {shard.key}")
            query_sums.add(shard, name, sums[name], scored[j], n_bootstrap)
            accumulator.add_bootstrap(j, sums[name].boot_sum, sums[name].boot_weight, sums[name].joint_sum)
    assert accumulator is not None and reference is not None

    names = accumulator.benchmarks
    bin_stats = accumulator.bin_stats()
    fraction = None
    if bin_counts is not None:
        fraction = sampling_fraction(bin_counts[0], bin_counts[1], bin_stats["n_docs"], n_docs_total)
    combined_reps, doc_reps, query_reps = _replicates(
        accumulator, query_sums, bin_stats["mean"], fraction, n_bootstrap, seed
    )
    z = zscore(bin_stats["mean"])
    combined_z = zscore(combined_reps)  # each replicate re-standardised: the z intervals and the marginals'
    replicate_z = {"combined": combined_z, "documents": zscore(doc_reps)} if n_bootstrap else None
    matrix = _bin_matrix(names, bin_stats, z, combined_reps, combined_z, doc_reps, query_reps, ci_level)
    matrix["sampling_fraction"] = np.tile(fraction, len(names)) if fraction is not None else np.nan
    matrix["small_bin"] = matrix["n_docs"].between(1, SMALL_BIN - 1)
    topics = _marginals("topic", names, bin_stats["n_docs"], z, replicate_z, ci_level)
    formats = _marginals("format", names, bin_stats["n_docs"], z, replicate_z, ci_level)

    upstream = reference[2]
    provenance = {
        "stage": STAGE,
        "shards": [s.key for s in shards],
        "n_docs": n_docs_total,
        "n_bootstrap": n_bootstrap,
        "seed": seed,
        "ci_level": ci_level,
        "bootstrap": "combined: Poisson(1) product weights per (seed, doc_id, replicate) x (seed, benchmark, "
        "query item_id, replicate), summed per shard by score-shard; documents: the document weights alone; "
        "queries: resampled with replacement from bin sums",
        "finite_population_correction": fraction is not None,
        "attribution_run": run_signature(upstream),
        "model": upstream.get("model"),
        "benchmarks": {n: {"n_queries": int(query_sums.sums[n].shape[1])} for n in names},
    }
    return InfluenceResult(names, matrix, topics, formats, doc_reps, query_reps, combined_reps, provenance)


def _replicates(
    accumulator: BinAccumulator,
    query_sums: _QuerySums,
    means: np.ndarray,
    fraction: np.ndarray | None,
    n_bootstrap: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The combined, documents-alone and queries-alone replicates of every bin mean ([nb, B, 576] each), the
    document part finite-population corrected when the sampling fractions are known."""
    names = accumulator.benchmarks
    if not n_bootstrap:
        empty = np.full((len(names), 0, N_BINS), np.nan)
        return empty, empty, empty
    sums, counts, item_ids = query_sums.sums, query_sums.counts, query_sums.item_ids
    query_part = np.stack([query_part_replicates(sums[n], counts[n], item_ids[n], n, n_bootstrap, seed) for n in names])
    combined = accumulator.combined_replicates(query_part)
    documents = accumulator.document_replicates()
    if fraction is not None:
        documents = finite_population_replicates(documents, means[:, None, :], fraction)
        combined = finite_population_replicates(combined, query_part, fraction)
    queries = np.stack([query_replicates(sums[n], counts[n], n_bootstrap, seed, n) for n in names])
    return combined, documents, queries


def sampling_fraction(source: Path, counts: dict[str, np.ndarray], n_docs: np.ndarray, n_scored: int) -> np.ndarray:
    """Each bin's sampled over eligible documents, after checking the summary describes the scored working set."""
    if int(counts["sampled"].sum()) != n_scored:
        raise CapatlasError(
            f"{source} counts {int(counts['sampled'].sum())} sampled documents but the shards scored {n_scored}: "
            "it is not the working set's bin summary; rerun the manifest and what follows it"
        )
    over = np.flatnonzero((n_docs > counts["sampled"]).any(axis=0))
    if len(over):
        raise CapatlasError(f"{source}: bin {int(over[0])} has more scored documents than it says were sampled")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts["after_filter"] > 0, counts["sampled"] / counts["after_filter"], np.nan)


def finite_population_replicates(replicates: np.ndarray, centre: np.ndarray, fraction: np.ndarray) -> np.ndarray:
    """Bootstrap replicates ([nb, B, 576]) shrunk towards `centre` by sqrt(1 - sampled/eligible) per bin.

    `centre` is what the replicates would be without document resampling:
    the bin means ([nb, 1, 576]) for the document bootstrap, the same
    replicate's queries-only values for the combined one. A bin sampled in
    full (every eligible document in the working set) then has no
    document-sampling uncertainty, which is the truth for the corpus.
    """
    factor = np.sqrt(np.clip(1 - np.nan_to_num(fraction, nan=0.0), 0.0, 1.0))
    return centre + (replicates - centre) * factor


def _bin_matrix(
    names, bin_stats: dict, z: np.ndarray, combined_reps, combined_z, doc_reps, query_reps, ci_level: float
) -> pd.DataFrame:
    low, high = percentile_ci(combined_reps, ci_level, axis=1)
    z_low, z_high = percentile_ci(combined_z, ci_level, axis=1)
    doc_low, doc_high = percentile_ci(doc_reps, ci_level, axis=1)
    query_low, query_high = percentile_ci(query_reps, ci_level, axis=1)
    rows = []
    for j, name in enumerate(names):
        rows.append(
            pd.DataFrame(
                {
                    "benchmark": name,
                    "bin_id": np.arange(N_BINS, dtype=np.int32),
                    "topic": [TOPIC_SLUGS[t] for t in BIN_TOPIC],
                    "format": [FORMAT_SLUGS[f] for f in BIN_FORMAT],
                    "n_docs": bin_stats["n_docs"][j],
                    "mean": bin_stats["mean"][j],
                    "sd": bin_stats["sd"][j],
                    "sem": bin_stats["sem"][j],
                    "zscore": z[j],
                    "ci_low": low[j],
                    "ci_high": high[j],
                    "z_ci_low": z_low[j],
                    "z_ci_high": z_high[j],
                    "doc_ci_low": doc_low[j],
                    "doc_ci_high": doc_high[j],
                    "query_ci_low": query_low[j],
                    "query_ci_high": query_high[j],
                }
            )
        )
    matrix = pd.concat(rows, ignore_index=True)
    empty = matrix["n_docs"] == 0
    matrix.loc[empty, [c for c in matrix.columns if c.endswith(("ci_low", "ci_high"))]] = np.nan
    return matrix


def _marginals(facet: str, names, n_docs: np.ndarray, z: np.ndarray, replicate_z, ci_level: float) -> pd.DataFrame:
    """Topic or format marginals of the bin z: unweighted and document-weighted means, bootstrap CIs
    (`replicate_z`: {'combined': [nb, B, 576], 'documents': ...} or None)."""
    groups, slugs, size = (BIN_TOPIC, TOPIC_SLUGS, N_TOPICS) if facet == "topic" else (BIN_FORMAT, FORMAT_SLUGS, N_FORMATS)
    frames = []
    for j, name in enumerate(names):
        n = n_docs[j].astype(np.float64)
        intervals = {}
        for kind, prefix in (("combined", ""), ("documents", "doc_")):
            if replicate_z is not None:
                low, high = percentile_ci(group_means(replicate_z[kind][j], groups, size), ci_level, axis=0)
            else:
                low = high = np.full(size, np.nan)
            intervals[f"{prefix}ci_low"], intervals[f"{prefix}ci_high"] = low, high
        frames.append(
            pd.DataFrame(
                {
                    "benchmark": name,
                    f"{facet}_id": np.arange(size, dtype=np.int32),
                    facet: list(slugs),
                    "n_bins": np.bincount(groups, weights=(n > 0), minlength=size).astype(np.int64),
                    "n_docs": np.bincount(groups, weights=n, minlength=size).astype(np.int64),
                    "mean_z": group_means(z[j], groups, size),
                    "weighted_mean_z": group_means(z[j], groups, size, weights=n),
                    **intervals,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def write_influence(result: InfluenceResult, out_dir: str | os.PathLike) -> None:
    write_influence_files(
        out_dir,
        matrix=result.matrix,
        topic_marginals=result.topic_marginals,
        format_marginals=result.format_marginals,
        benchmarks=result.benchmarks,
        document_replicates=result.document_replicates,
        query_replicates=result.query_replicates,
        combined_replicates=result.combined_replicates,
        provenance=result.provenance,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scores", nargs="+", required=True, help="attribution/scores/shard-*.parquet")
    parser.add_argument("--binsums", nargs="+", required=True, help="attribution/binsums/shard-*.safetensors")
    parser.add_argument("--bin-summary", default=None, help="manifest/bin_summary.csv: finite-population correction")
    parser.add_argument("--out", required=True, help="output directory (influence/)")


def run(args: argparse.Namespace, config: dict | None) -> None:
    analysis = config["analysis"]
    shards = pair_shards(args.scores, args.binsums)
    counts = (Path(args.bin_summary), read_bin_counts(args.bin_summary)) if args.bin_summary else None
    result = compute_influence(
        shards, n_bootstrap=analysis["bootstrap"], seed=config["seed"], ci_level=analysis["ci_level"], bin_counts=counts
    )
    write_influence(result, args.out)
    log.info(
        "bin matrix of %d benchmark(s) from %d shard(s), %d documents -> %s",
        len(result.benchmarks),
        len(shards),
        result.provenance["n_docs"],
        args.out,
    )

"""Synthetic `capatlas score-shard` outputs, in exactly the format that stage writes.

A `SyntheticScores` holds per-document, per-query cosines for a few
benchmarks; `write_shards` splits the same documents into any number of
shards and writes ``scores/shard-*.parquet`` (float32 document means,
provenance in the schema metadata) and ``binsums/shard-*.safetensors`` (float64
per-bin, per-query sums, sums of squares and counts, and the shard's
document-bootstrap sums, drawn by the same function as score-shard's).
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from capatlas.artifacts.binsums import BenchmarkSums, BinSums, write_bin_sums
from capatlas.artifacts.doc_bootstrap import (
    WEIGHTS_SCHEME,
    bin_groups,
    document_keys,
    joint_bin_sums,
    poisson_weights,
    query_mean_weights,
    shard_bootstrap,
)
from capatlas.artifacts.scores import scores_table, write_scores
from capatlas.taxonomy import N_BINS

BENCHMARKS = ("socialiqa", "mmlu_social_sciences", "arc_challenge", "mmlu_stem")


def base_provenance(benchmarks, n_queries) -> dict:
    return {
        "stage": "score-shard",
        "capatlas_version": "test",
        "bergson_version": "2.5.1",
        "identity": {
            "bergson_version": "2.5.1",
            "model_sha256": "a" * 64,
            "attribution": {"projection_dim": 16, "precision": "fp32", "seed": 42},
        },
        "model": {"path": "/models/tiny", "sha256": "a" * 64},
        "preconditioner": {"path": "/run/attribution/preconditioner", "provenance_sha256": "b" * 64, "lambda": 0.9},
        "benchmarks": [
            {
                "name": name,
                "path": f"/run/attribution/queries/{name}",
                "provenance_sha256": f"{i}" * 64,
                "query_set_sha256": f"{i + 5}" * 64,
                "n_queries": n_queries[name],
                "columns": [0, n_queries[name]],
            }
            for i, name in enumerate(benchmarks)
        ],
    }


@dataclass
class SyntheticScores:
    doc_ids: list[str]
    bins: np.ndarray
    per_query: dict[str, np.ndarray]  # benchmark -> [n_docs, n_queries] float64 cosines; NaN rows = unscored
    benchmarks: tuple[str, ...] = BENCHMARKS
    provenance: dict = field(default_factory=dict)

    def doc_means(self, name: str) -> np.ndarray:
        return self.per_query[name].mean(axis=1).astype(np.float32)


def make_scores(
    seed: int = 0,
    *,
    docs_per_bin: int | np.ndarray = 3,
    n_queries: int = 5,
    benchmarks=BENCHMARKS,
    empty_bins=(),
    unscored: int = 0,
    planted: dict[str, list[int]] | None = None,
    scale: float = 0.05,
) -> SyntheticScores:
    """Documents in every bin (but `empty_bins`), random cosines, optional planted high-influence bins."""
    rng = np.random.default_rng(seed)
    sizes = np.broadcast_to(np.asarray(docs_per_bin), (N_BINS,)).copy()
    sizes[list(empty_bins)] = 0
    bins = np.repeat(np.arange(N_BINS), sizes)
    order = rng.permutation(len(bins))
    bins = bins[order]
    doc_ids = [f"doc-{i:06d}" for i in rng.permutation(len(bins))]
    per_query = {}
    # Bin effects shared by the benchmarks, so profiles correlate like real ones.
    shared = rng.normal(0, scale, N_BINS)
    for name in benchmarks:
        effect = shared + rng.normal(0, scale / 2, N_BINS)
        if planted and name in planted:
            effect[planted[name]] += 10 * scale
        values = effect[bins][:, None] + rng.normal(0, scale, (len(bins), n_queries))
        per_query[name] = values
    if unscored:
        rows = rng.choice(len(bins), unscored, replace=False)
        for name in benchmarks:
            per_query[name][rows] = np.nan
    provenance = base_provenance(benchmarks, {b: n_queries for b in benchmarks})
    return SyntheticScores(doc_ids, bins, per_query, tuple(benchmarks), provenance)


def write_shards(
    data: SyntheticScores,
    root: Path,
    n_shards: int,
    *,
    n_bootstrap: int = 0,
    seed: int = 42,
    provenance_edits: dict[int, dict] | None = None,
) -> tuple[list[Path], list[Path]]:
    """Split the documents round-robin into `n_shards` shards; return (score files, bin-sum files).

    The document bootstrap is drawn with `n_bootstrap` replicates and `seed`,
    as score-shard does with analysis.bootstrap and seed.
    """
    root = Path(root)
    (root / "scores").mkdir(parents=True, exist_ok=True)
    (root / "binsums").mkdir(parents=True, exist_ok=True)
    score_files, binsum_files = [], []
    for k in range(n_shards):
        rows = np.arange(k, len(data.bins), n_shards)
        provenance = copy.deepcopy(data.provenance)
        provenance["shard"] = {
            "path": f"/run/shards/shard-{k:05d}.parquet",
            "sha256": hashlib.sha256(f"shard-{k}".encode()).hexdigest(),
            "n_docs": int(len(rows)),
        }
        provenance["document_bootstrap"] = {"n_bootstrap": n_bootstrap, "seed": seed, "weights": WEIGHTS_SCHEME}
        for key, value in (provenance_edits or {}).get(k, {}).items():
            target = provenance
            *path, last = key.split(".")
            for part in path:
                target = target[part]
            target[last] = value
        doc_ids = [data.doc_ids[i] for i in rows]
        bin_sums = BinSums(provenance=provenance)
        bins = data.bins[rows]
        doc_scores = np.column_stack([data.per_query[name][rows].mean(axis=1) for name in data.benchmarks])
        doc_scores = doc_scores.astype(np.float32)
        boot_sum, boot_weight = shard_bootstrap(
            doc_ids, bins, doc_scores.astype(np.float64), n_bootstrap, seed
        )
        for j, name in enumerate(data.benchmarks):
            values = data.per_query[name][rows]
            scored = np.isfinite(values).all(axis=1)
            s = np.zeros((N_BINS, values.shape[1]))
            ss = np.zeros((N_BINS, values.shape[1]))
            np.add.at(s, bins[scored], values[scored])
            np.add.at(ss, bins[scored], values[scored] ** 2)
            item_ids = [f"{name}-{q}" for q in range(values.shape[1])]
            joint = np.zeros((n_bootstrap, N_BINS))
            if n_bootstrap and scored.any():
                doc_weights = poisson_weights(
                    document_keys([d for d, ok in zip(doc_ids, scored) if ok], seed), n_bootstrap
                )
                query_weights = query_mean_weights(item_ids, name, n_bootstrap, seed)
                groups = bin_groups(bins[scored])
                joint[:, groups.present] = joint_bin_sums(doc_weights, groups, values[scored], query_weights).T
            bin_sums.benchmarks[name] = BenchmarkSums(
                item_ids=item_ids,
                sum=s,
                sumsq=ss,
                count=np.bincount(bins[scored], minlength=N_BINS).astype(np.int64),
                boot_sum=boot_sum[j],
                boot_weight=boot_weight[j],
                joint_sum=joint,
            )
        table = scores_table(doc_ids, bins, {n: doc_scores[:, j] for j, n in enumerate(data.benchmarks)}, provenance)
        score_path = root / "scores" / f"shard-{k:05d}.parquet"
        binsum_path = root / "binsums" / f"shard-{k:05d}.safetensors"
        write_scores(score_path, table)
        write_bin_sums(binsum_path, bin_sums)
        score_files.append(score_path)
        binsum_files.append(binsum_path)
    return score_files, binsum_files

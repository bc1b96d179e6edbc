"""Aggregation: time and peak memory of `capatlas influence` (bin matrix + bootstraps) at paper scale.

Writes synthetic score-shard outputs: N shards of document scores
(distinct doc ids, 4 benchmarks) and per-shard bin sums over Q queries
split like the study's four benchmarks, with the shard's part of the
document bootstrap, then times the real
``capatlas.analysis.influence.compute_influence`` + ``write_influence`` on them:
streaming the shards, Chan-merged bin statistics, adding the shards'
bootstrap sums and the bootstrap over queries.

The document bootstrap is drawn in the score-shard jobs, so its cost is
timed apart, as a score job pays it: ``shard_bootstrap`` on the first
shard's documents (``per_shard_bootstrap_s``, ``per_shard_bootstrap_cpu_s``).

Every shard's bin sums are one file hard-linked under each shard's name
(the per-bin counts of every synthetic shard are the same; its bootstrap
sums are the first shard's), so the disk holds ~100 MB instead of ~100 GB
at 1,000 shards x 9,400 queries; the reads come from the page cache, so
the figure leaves out disk bandwidth (a real run reads about
576 x (Q + 12 B) x 8 bytes per shard, sumsq left unread, from storage).

Prints one parseable last line:

    bench_aggregation shards=S docs=D queries=Q bootstrap=B seconds=T peak_rss_mb=M per_shard_bootstrap_s=P ...

Usage: python bench/bench_aggregation.py --shards 1000 --docs 5700000 --queries 9400 --bootstrap 1000
(the defaults are a small run; --profile prints where the time goes to stderr).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import tempfile
from pathlib import Path

import numpy as np

# tqdm reads TQDM_* defaults when imported; one progress line per shard would swamp stderr.
os.environ.setdefault("TQDM_DISABLE", "1")

from _common import Stopwatch, machine, peak_rss_mb



from capatlas.artifacts.binsums import BenchmarkSums, BinSums, write_bin_sums  # noqa: E402
from capatlas.artifacts.scores import scores_table, write_scores  # noqa: E402
from capatlas.artifacts.doc_bootstrap import WEIGHTS_SCHEME, shard_bootstrap  # noqa: E402
from capatlas.analysis.influence import ShardFiles, compute_influence, write_influence  # noqa: E402
from capatlas.taxonomy import N_BINS  # noqa: E402

# The study's query sets: SocialIQA validation, MMLU social sciences and STEM
# test, ARC-Challenge test (reference/benchmarks.md); scaled to --queries.
BENCHMARK_SHARES = {"socialiqa": 1954, "mmlu_social_sciences": 3077, "arc_challenge": 1172, "mmlu_stem": 3197}


def query_split(total: int) -> dict[str, int]:
    weights = np.array(list(BENCHMARK_SHARES.values()), dtype=np.float64)
    sizes = np.maximum(1, np.floor(weights / weights.sum() * total)).astype(int)
    sizes[-1] += total - sizes.sum()
    return dict(zip(BENCHMARK_SHARES, sizes.tolist()))


def write_inputs(
    root: Path, n_shards: int, n_docs: int, n_queries: int, n_bootstrap: int, seed: int
) -> tuple[list[ShardFiles], Stopwatch]:
    """The synthetic shards, and the stopwatch of one shard's document bootstrap."""
    rng = np.random.default_rng(seed)
    split = query_split(n_queries)
    provenance = {
        "stage": "score-shard",
        "identity": {"model": {"sha256": "0" * 64}, "bergson": "2.5.1", "settings": {"synthetic": True}},
        "preconditioner": {"provenance_sha256": "1" * 64},
        "benchmarks": [
            {"name": n, "provenance_sha256": "2" * 64, "query_set_sha256": "3" * 64, "n_queries": q}
            for n, q in split.items()
        ],
        "document_bootstrap": {"n_bootstrap": n_bootstrap, "seed": seed, "weights": WEIGHTS_SCHEME},
    }
    per_shard = -(-n_docs // n_shards)
    # One bin sequence for every shard, so one bin-sums file fits them all.
    bins = rng.integers(0, N_BINS, size=per_shard).astype(np.int32)
    counts = np.bincount(bins, minlength=N_BINS).astype(np.int64)
    shard_scores = [rng.normal(0.0, 0.01, size=(per_shard, len(split))).astype(np.float32) for _ in range(n_shards)]
    # What score-shard adds to its outputs, timed as that job pays it.
    with Stopwatch() as bootstrap:
        boot_sum, boot_weight = shard_bootstrap(
            [f"doc-{i}" for i in range(per_shard)], bins, shard_scores[0].astype(np.float64), n_bootstrap, seed
        )
    bin_sums = BinSums(provenance=provenance)
    for j, (name, q) in enumerate(split.items()):
        sums = rng.normal(0.0, 0.01, size=(N_BINS, q)) * counts[:, None]
        bin_sums.benchmarks[name] = BenchmarkSums(
            item_ids=[f"{name}-{i}" for i in range(q)],
            sum=sums,
            sumsq=sums**2,
            count=counts,
            boot_sum=boot_sum[j],
            boot_weight=boot_weight[j],
            # The combined bootstrap's sums have the document sums' shape and cost to add; the bench times
            # aggregation, not their values.
            joint_sum=boot_sum[j],
        )
    shared_binsums = root / "binsums.safetensors"
    write_bin_sums(shared_binsums, bin_sums)
    (root / "scores").mkdir()
    (root / "binsums").mkdir()
    shards = []
    for k in range(n_shards):
        key = f"shard-{k:05d}"
        doc_ids = [f"doc-{k * per_shard + i}" for i in range(per_shard)]
        table = scores_table(doc_ids, bins, {name: shard_scores[k][:, j] for j, name in enumerate(split)}, provenance)
        scores = root / "scores" / f"{key}.parquet"
        write_scores(scores, table)
        binsums = root / "binsums" / f"{key}.safetensors"
        os.link(shared_binsums, binsums)
        shards.append(ShardFiles(key, scores, binsums))
    return shards, bootstrap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=20)
    parser.add_argument("--docs", type=int, default=114_000, help="documents in all shards together")
    parser.add_argument("--queries", type=int, default=9400, help="queries of the four benchmarks together")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--tmp", default=None, help="directory for the synthetic shards (default: system temp)")
    parser.add_argument("--profile", action="store_true", help="run under cProfile; top functions to stderr")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        root = Path(tmp)
        with Stopwatch() as setup:
            shards, bootstrap = write_inputs(root, args.shards, args.docs, args.queries, args.bootstrap, args.seed)
        print(f"wrote {len(shards)} synthetic shards in {setup.seconds:.1f} s", file=sys.stderr)
        profiler = cProfile.Profile() if args.profile else None
        with Stopwatch() as watch:
            if profiler:
                profiler.enable()
            result = compute_influence(shards, n_bootstrap=args.bootstrap, seed=args.seed)
            write_influence(result, root / "influence")
            if profiler:
                profiler.disable()
        n_docs = result.provenance["n_docs"]
    if profiler:
        stream = io.StringIO()
        pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(15)
        print(stream.getvalue(), file=sys.stderr)
    figures = {
        "shards": args.shards,
        "docs": n_docs,
        "queries": args.queries,
        "bootstrap": args.bootstrap,
        "seconds": round(watch.seconds, 2),
        "cpu_s": round(watch.cpu, 2),
        "docs_per_s": round(n_docs / watch.seconds),
        "peak_rss_mb": round(peak_rss_mb()),
        "per_shard_bootstrap_s": round(bootstrap.seconds, 3),
        "per_shard_bootstrap_cpu_s": round(bootstrap.cpu, 3),
    }
    print("bench_aggregation " + " ".join(f"{k}={v}" for k, v in figures.items()) + " " + machine())


if __name__ == "__main__":
    main()

"""Manifest map-reduce at corpus scale: scan-job and merge memory, and merge time, from 1M to 100M records.

Reading and tokenising real text is bench_manifest.py's business; this bench
exercises what grows with the corpus: the scan partials (written with the
real `capatlas.artifacts.scan_partial` writer, one per group of
--group-records synthetic records: uniform 64-bit keys, a category per
record, doc-id hashes, 1% of texts copied into another group, and each
group's bounded candidates) and the real merge (`capatlas.corpus.manifest.Merge`
over `read_partial`, which checks every digest, then streams key ranges).

Each size runs its merge in its own process, so each peak is its own. The
scan job's memory is that of one group whatever the corpus size (each job
holds its own group only); the bench measures it once, building one group's
partial in a fresh process. Prints one parseable last line:

    bench_manifest_merge records=[...] groups=[...] merge_s=[...] merge_peak_rss_mb=[...] scan_peak_rss_mb=S partial_mb_per_1m=P

Usage: python bench/bench_manifest_merge.py --records 1000000 10000000 100000000 --group-records 1000000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa

from _common import Stopwatch, machine, peak_rss_mb

from capatlas.artifacts.scan_partial import ScanPartial, read_partial, write_partial  # noqa: E402
from capatlas.corpus.manifest import ManifestSettings, Merge, candidates_table, Candidate  # noqa: E402
from capatlas.taxonomy import N_BINS  # noqa: E402


def synthetic_partial(group: int, n: int, settings: ManifestSettings, copies_from: np.ndarray | None) -> ScanPartial:
    """One group's partial: n records, a few of whose texts (keys, same category) repeat another group's."""
    rng = np.random.default_rng(group)
    keys = rng.integers(0, 2**63, size=n, dtype=np.uint64) * np.uint64(2) + rng.integers(0, 2, size=n, dtype=np.uint64)
    bins = rng.integers(0, N_BINS, size=n, dtype=np.int64)
    passed = rng.random(n) < 0.9
    if copies_from is not None:
        k = len(copies_from) // 100
        keys[:k], bins[:k], passed[:k] = copies_from[:k]["key"], copies_from[:k]["bin"], copies_from[:k]["passed"]
    cats = (2 * bins + passed).astype(np.uint16)
    order = np.lexsort((cats, keys))
    keys_sorted, cats_sorted, bins_sorted, passed_sorted = keys[order], cats[order], bins[order], passed[order]
    # Candidates: per bin the quota's smallest passing keys (keys are sorted, so the first ones per bin).
    candidates = []
    taken = np.zeros(N_BINS, dtype=np.int64)
    for i in np.flatnonzero(passed_sorted).tolist():
        b = int(bins_sorted[i])
        if taken[b] < settings.docs_per_bin:
            taken[b] += 1
            key = int(keys_sorted[i])
            candidates.append(Candidate(key, f"{key:064x}", f"g{group}-{i}", b, 600, f"group{group}.jsonl.zst", i))
    ids = np.sort(rng.integers(0, 2**63, size=n, dtype=np.uint64))
    record = np.zeros(n, dtype=[("key", np.uint64), ("bin", np.int64), ("passed", bool)])
    record["key"], record["bin"], record["passed"] = keys, bins, passed
    partial = ScanPartial(
        group=str(group),
        files=[{"path": f"group{group}.jsonl.zst", "size": 0, "mtime_ns": 0, "sha256": "", "records": n}],
        population=np.bincount(bins, minlength=N_BINS).astype(np.int64),
        arrays={
            "pair_keys": keys_sorted,
            "pair_cats": cats_sorted,
            "pair_files": np.zeros(n, np.uint32),
            "id_hashes": ids,
            "id_files": np.zeros(n, np.uint32),
        },
        candidates=candidates_table(candidates) if candidates else pa.table({}),
        settings_sha256="bench",
    )
    partial.copies = record  # type: ignore[attr-defined]
    return partial


def build(args: argparse.Namespace) -> None:
    """Child: write `--groups` partials into --dir (reusing those already there)."""
    settings = ManifestSettings(docs_per_bin=args.docs_per_bin)
    root = Path(args.dir)
    previous = None
    for g in range(args.groups):
        out = root / f"{g:05d}"
        partial = synthetic_partial(g, args.group_records, settings, previous)
        previous = partial.copies  # type: ignore[attr-defined]
        if not out.exists():
            write_partial(partial, out)
    print(json.dumps({"peak_rss_mb": peak_rss_mb()}))


def merge(args: argparse.Namespace) -> None:
    """Child: read --groups partials (digests checked) and merge them."""
    settings = ManifestSettings(docs_per_bin=args.docs_per_bin)
    with Stopwatch() as watch:
        partials = [read_partial(Path(args.dir) / f"{g:05d}", settings_sha256="bench") for g in range(args.groups)]
        result = Merge(settings, partials).finish(lambda requests: [])
    print(json.dumps({"seconds": watch.seconds, "peak_rss_mb": peak_rss_mb(), "sampled": len(result.docs)}))


def child(mode: str, directory: Path, groups: int, args: argparse.Namespace) -> dict:
    argv = [sys.executable, __file__, "--child", mode, "--dir", str(directory), "--groups", str(groups),
            "--group-records", str(args.group_records), "--docs-per-bin", str(args.docs_per_bin)]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--group-records", type=int, default=1_000_000)
    parser.add_argument("--docs-per-bin", type=int, default=100)
    parser.add_argument("--tmp", default=None)
    parser.add_argument("--child", choices=["build", "merge"], default=None)
    parser.add_argument("--dir", default=None)
    parser.add_argument("--groups", type=int, default=1)
    args = parser.parse_args()
    if args.child == "build":
        return build(args)
    if args.child == "merge":
        return merge(args)
    figures: dict[str, list] = {"records": [], "groups": [], "merge_s": [], "merge_peak_rss_mb": []}
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        root = Path(tmp) / "scans"
        root.mkdir()
        scan = child("build", Path(tmp) / "one", 1, args)
        partial_bytes = sum(f.stat().st_size for f in (Path(tmp) / "one" / "00000").iterdir())
        for records in sorted(args.records):
            groups = max(1, records // args.group_records)
            child("build", root, groups, args)
            merged = child("merge", root, groups, args)
            print(f"{records} records in {groups} scans: merge {merged['seconds']:.1f} s, "
                  f"peak {merged['peak_rss_mb']:.0f} MB, {merged['sampled']} sampled", file=sys.stderr)  # fmt: skip
            figures["records"].append(records)
            figures["groups"].append(groups)
            figures["merge_s"].append(round(merged["seconds"], 1))
            figures["merge_peak_rss_mb"].append(round(merged["peak_rss_mb"]))
    line = " ".join(f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in figures.items())
    mb_per_1m = partial_bytes / 2**20 / (args.group_records / 1e6)
    print(f"bench_manifest_merge {line} scan_peak_rss_mb={scan['peak_rss_mb']:.0f} "
          f"partial_mb_per_1m={mb_per_1m:.1f} docs_per_bin={args.docs_per_bin} " + machine())  # fmt: skip


if __name__ == "__main__":
    main()

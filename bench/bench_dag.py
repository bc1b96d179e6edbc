"""DAG planning: wall time of `snakemake -n` with the paper-scale config at several shard counts.

Lays out a fake Dolma 3 mix (``data/<source>-<topic_slug>-<NNNN>/*.jsonl.zst``,
tiny files, all 24 topics), fake local model directories and a site config
(as tests/test_dag.py does), then times ``snakemake -n`` with
config/olmo3-7b.yaml + the site config + ``shards.count`` overridden, once
per shard count, in a scratch working directory. The DAG holds one
``manifest_scan`` job per group of ``manifest.files_per_scan`` corpus files
and one ``score_shard`` job per shard.

Prints one parseable last line:

    bench_dag files=F jobs_1000=J seconds_1000=S jobs_5000=J seconds_5000=S ...

Usage: python bench/bench_dag.py --shards 316 --files 150000  (the Dolma 3 mix: ~144,000 files)
(--profile SHARDS writes a cProfile of that planning run and prints its top functions to stderr).
"""

from __future__ import annotations

import argparse
import json
import pstats
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
import zstandard

from _common import REPO, Stopwatch, machine

from helpers_paper import empty_benchmark_root  # noqa: E402

from capatlas.taxonomy import TOPIC_SLUGS  # noqa: E402

SOURCES = ["common_crawl", "olmocr_science_pdfs"]


def write_fake_dolma(root: Path, n_files: int) -> None:
    """n_files tiny shards spread over every topic's directories, named like Dolma 3's."""
    blob = zstandard.ZstdCompressor().compress(
        (json.dumps({"id": "x", "text": "a document", "metadata": {}}) + "\n").encode()
    )
    for i in range(n_files):
        topic = TOPIC_SLUGS[i % len(TOPIC_SLUGS)]
        source = SOURCES[(i // len(TOPIC_SLUGS)) % len(SOURCES)]
        directory = root / "data" / f"{source}-{topic}-{(i // (len(TOPIC_SLUGS) * len(SOURCES))) % 10000:04d}"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"shard_{i:08d}.jsonl.zst").write_bytes(blob)


def write_site(root: Path, dolma: Path, n_shards: int) -> Path:
    models = root / "models"
    for name in ("Olmo-3-1025-7B", "Olmo-3-7B-Instruct", "FormatClassifier-NoURL"):
        (models / name).mkdir(parents=True, exist_ok=True)
        (models / name / "config.json").write_text("{}")
    site = {
        "results_dir": str(root / "results"),
        # Empty local benchmark copies at the paper config's paths: planning checks every input exists.
        "benchmark_root": str(empty_benchmark_root(root / "benchmarks")),
        "corpus": {
            "paths": [str(dolma / "data" / "*" / "*.jsonl.zst")],
            "labels": {"format": {"model": str(models / "FormatClassifier-NoURL")}},
        },
        "models": {
            "document": {"path": str(models / "Olmo-3-1025-7B")},
            "query": {"path": str(models / "Olmo-3-7B-Instruct")},
        },
        "shards": {"count": n_shards},
    }
    path = root / f"site-{n_shards}.yaml"
    path.write_text(yaml.safe_dump(site))
    return path


def plan(root: Path, site: Path, profile: Path | None) -> tuple[float, float, int]:
    command = [
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(root / "work"),
        "-n",
        "--quiet",
        "rules",
        "--configfile",
        str(REPO / "config" / "olmo3-7b.yaml"),
        str(site),
    ]
    snakemake = Path(sys.executable).parent / "snakemake"
    if profile:
        argv = [sys.executable, "-m", "cProfile", "-o", str(profile), str(snakemake), *command]
    else:
        argv = [str(snakemake), *command]
    with Stopwatch() as watch:
        result = subprocess.run(argv, capture_output=True, text=True)
    seconds = watch.seconds
    output = result.stdout + result.stderr
    if result.returncode != 0:
        sys.exit(f"snakemake -n failed (exit {result.returncode}):\n{output[-3000:]}")
    match = re.search(r"^total\s+(\d+)", output, re.MULTILINE)
    return seconds, watch.cpu, int(match.group(1)) if match else -1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--files", type=int, default=480, help="fake corpus files (grouped into manifest_scan jobs)")
    parser.add_argument("--profile", type=int, default=None, metavar="SHARDS", help="profile this shard count")
    args = parser.parse_args()
    figures: dict[str, object] = {"files": args.files}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        dolma = root / "dolma3_mix-6T-1025-7B"
        write_fake_dolma(dolma, args.files)
        (root / "work").mkdir()
        for n_shards in args.shards:
            site = write_site(root, dolma, n_shards)
            profile = root / f"plan-{n_shards}.prof" if args.profile == n_shards else None
            seconds, cpu, jobs = plan(root, site, profile)
            print(f"{n_shards} shards: {jobs} jobs planned in {seconds:.1f} s", file=sys.stderr)
            figures[f"jobs_{n_shards}"] = jobs
            figures[f"seconds_{n_shards}"] = round(seconds, 2)
            figures[f"cpu_s_{n_shards}"] = round(cpu, 2)
            if profile:
                stats = pstats.Stats(str(profile), stream=sys.stderr)
                stats.sort_stats("cumulative").print_stats(25)
                stats.sort_stats("tottime").print_stats(15)
    print("bench_dag " + " ".join(f"{k}={v}" for k, v in figures.items()) + " " + machine())


if __name__ == "__main__":
    main()

"""Manifest throughput: documents per second and peak memory of `capatlas manifest`.

Generates N synthetic labelled records in .jsonl.zst files (not timed), then
times the manifest build (scan, dedup, token filter, per-bin sampling).
Prints one parseable last line:

    bench_manifest records=N files=F threads=T seconds=S docs_per_s=D peak_rss_mb=M

With several --records values each size runs in its own process (so each
peak is its own) and the last line gives every size plus the linearity
ratio (docs/s at the largest size over docs/s at the smallest; 1.0 =
linear) and the peak-memory growth:

    bench_manifest_scaling records=[...] seconds=[...] docs_per_s=[...] peak_rss_mb=[...] linearity=R memory_growth=G

Texts are drawn from a pool of 4,096 synthetic texts, each made unique by
its record number, so every record survives dedup and generating 10M
records takes minutes, not hours.

Usage: python bench/bench_manifest.py --records 1000000 10000000 --files 64 --threads 2
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import zstandard

from _common import Stopwatch, machine, peak_rss_mb

from capatlas.config import validate_config  # noqa: E402
from capatlas.corpus.manifest import build_manifest  # noqa: E402
from capatlas.taxonomy import FORMAT_SLUGS, TOPIC_SLUGS  # noqa: E402

TEXT_POOL = 4096
WORDS = "river music court market engine prayer recipe garden planet law vote team train hotel poem code".split()


def write_corpus(root: Path, records: int, files: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    pool = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 80))) for _ in range(TEXT_POOL)]
    paths = []
    per_file = -(-records // files)
    compressor = zstandard.ZstdCompressor(level=3)
    for f in range(files):
        path = root / f"part-{f:04d}.jsonl.zst"
        # Written in batches so that generating the corpus does not raise this process's peak memory.
        with open(path, "wb") as handle, compressor.stream_writer(handle) as writer:
            end = min(records, (f + 1) * per_file)
            for a in range(f * per_file, end, 10_000):
                lines = []
                for i in range(a, min(end, a + 10_000)):
                    # The record number makes the text unique (one more token, [UNK] to the tokenizer).
                    text = f"{rng.choice(pool)} n{i}"
                    meta = {"topic": rng.choice(TOPIC_SLUGS), "format": rng.choice(FORMAT_SLUGS)}
                    lines.append(json.dumps({"id": f"doc-{i}", "text": text, "metadata": meta}) + "\n")
                writer.write("".join(lines).encode())
        paths.append(str(path))
    return paths


def write_tokenizer(root: Path) -> str:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(root / "tok")
    return str(root / "tok")


def scaling(args: argparse.Namespace) -> None:
    """Each size in its own process; one line with every size and the linearity ratio."""
    rows = []
    for records in sorted(args.records):
        command = [
            sys.executable,
            __file__,
            "--records",
            str(records),
            "--files",
            str(args.files),
            "--threads",
            str(args.threads),
            "--docs-per-bin",
            str(args.docs_per_bin),
        ]
        if args.tmp:
            command += ["--tmp", args.tmp]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        last = output.strip().splitlines()[-1]
        print(last, file=sys.stderr)
        rows.append(dict(item.split("=", 1) for item in last.split()[1:]))
    docs_per_s = [float(r["docs_per_s"]) for r in rows]
    peaks = [float(r["peak_rss_mb"]) for r in rows]
    print(
        f"bench_manifest_scaling records={sorted(args.records)} files={args.files} threads={args.threads} "
        f"seconds={[float(r['seconds']) for r in rows]} cpu_s={[float(r['cpu_s']) for r in rows]} docs_per_s={[round(d) for d in docs_per_s]} "
        f"peak_rss_mb={[round(p) for p in peaks]} linearity={docs_per_s[-1] / docs_per_s[0]:.2f} "
        f"memory_growth={peaks[-1] / peaks[0]:.2f} {machine()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, nargs="+", default=[200_000])
    parser.add_argument("--tmp", default=None, help="directory for the synthetic corpus (default: system temp)")
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--docs-per-bin", type=int, default=100)
    args = parser.parse_args()
    if len(args.records) > 1:
        scaling(args)
        return
    records = args.records[0]
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        root = Path(tmp)
        with Stopwatch() as generation:
            files = write_corpus(root, records, args.files, seed=0)
        print(f"wrote {records} records in {generation.seconds:.0f} s", file=sys.stderr)
        tokenizer = write_tokenizer(root)
        config = validate_config(
            {
                "demo": {"enabled": True},
                "corpus": {
                    "labels": {
                        "topic": {"field": "metadata.topic"},
                        "format": {"field": "metadata.format"},
                    }
                },
                "manifest": {"docs_per_bin": args.docs_per_bin, "min_tokens": 30, "threads": args.threads},
            }
        )
        with Stopwatch() as watch:
            result = build_manifest(files, config, tokenizer=tokenizer, threads=args.threads)
        seconds = watch.seconds
    print(f"sampled {len(result.docs)} documents", file=sys.stderr)
    print(
        f"bench_manifest records={records} files={args.files} threads={args.threads} "
        f"seconds={seconds:.2f} cpu_s={watch.cpu:.2f} docs_per_s={records / seconds:.0f} peak_rss_mb={peak_rss_mb():.0f} {machine()}"
    )


if __name__ == "__main__":
    main()

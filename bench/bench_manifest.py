"""Manifest throughput: documents per second and peak memory of `capatlas manifest`.

Generates N synthetic labelled records in .jsonl.zst files (not timed), then
times the manifest build (scan, dedup, token filter, per-bin sampling).
Prints one parseable last line:

    bench_manifest records=N files=F threads=T seconds=S docs_per_s=D peak_rss_mb=M

Usage: python bench/bench_manifest.py --records 1000000 --files 16 --threads 2
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "workflow"))

from capatlas.config import validate_config  # noqa: E402
from capatlas.manifest import build_manifest  # noqa: E402
from capatlas.taxonomy import FORMAT_SLUGS, TOPIC_SLUGS  # noqa: E402

WORDS = "river music court market engine prayer recipe garden planet law vote team train hotel poem code".split()


def write_corpus(root: Path, records: int, files: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    paths = []
    per_file = -(-records // files)
    compressor = zstandard.ZstdCompressor(level=3)
    for f in range(files):
        lines = []
        for i in range(f * per_file, min(records, (f + 1) * per_file)):
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 80)))
            meta = {"topic": rng.choice(TOPIC_SLUGS), "format": rng.choice(FORMAT_SLUGS)}
            lines.append(json.dumps({"id": f"doc-{i}", "text": text, "metadata": meta}))
        path = root / f"part-{f:04d}.jsonl.zst"
        path.write_bytes(compressor.compress(("\n".join(lines) + "\n").encode()))
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


def peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--docs-per-bin", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = write_corpus(root, args.records, args.files, seed=0)
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
        start = time.perf_counter()
        result = build_manifest(files, config, tokenizer=tokenizer, threads=args.threads)
        seconds = time.perf_counter() - start
    print(f"sampled {len(result.docs)} documents", file=sys.stderr)
    print(
        f"bench_manifest records={args.records} files={args.files} threads={args.threads} "
        f"seconds={seconds:.2f} docs_per_s={args.records / seconds:.0f} peak_rss_mb={peak_rss_mb():.0f}"
    )


if __name__ == "__main__":
    main()

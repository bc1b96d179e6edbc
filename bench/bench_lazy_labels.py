"""Lazy labels: the fraction of a skewed corpus the format classifier has to see, by scan-group size.

Writes a synthetic corpus (topic known from a field, as Dolma 3's from its
path; formats drawn with a steep skew: the commonest format ~half of a
topic, the rarest ~1.4%), then builds the manifest with the real lazy scan
(`capatlas.corpus.lazy_scan`) for several group sizes, the classifier
replaced by the deterministic stand-in of tests/helpers_corpus.py (the
fraction classified depends on the labels, not on the model). Each run is
checked against the eager sample (every record labelled). Reported per
group size: records classified / records, and the floor a stream needs,
docs_per_bin / (share of its rarest format) per topic.

Prints one parseable last line:

    bench_lazy_labels records=N docs_per_bin=K files_per_group=[...] fraction_classified=[...] floor=F seconds=[...]

Usage: python bench/bench_lazy_labels.py --records 200000 --files 32 --docs-per-bin 20
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

import numpy as np

from _common import Stopwatch, machine

from helpers_corpus import FakeClassifier, build_tokenizer, skewed_format, text_of, write_records  # noqa: E402

from capatlas.config import validate_config  # noqa: E402
from capatlas.corpus import lazy_scan  # noqa: E402
from capatlas.corpus.manifest import build_manifest  # noqa: E402
from capatlas.taxonomy import N_FORMATS  # noqa: E402

TOPICS = (0, 5, 11, 17)


def write_corpus(root: Path, records: int, files: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    rows = []
    for i in range(records):
        text = f"{text_of(rng.randint(20, 60), rng)} n{i}"
        rows.append({"id": f"doc-{i:09d}", "text": text, "meta": {"t": TOPICS[i % len(TOPICS)]}})
    per = -(-records // files)
    return [str(write_records(root / f"part-{k:04d}.jsonl.zst", rows[k * per : (k + 1) * per])) for k in range(files)]


def config_for(tokenizer: str, docs_per_bin: int, labels: dict) -> dict:
    raw = {
        "corpus": {"paths": ["unused"], "labels": labels, "classifier": {"device": "cpu"}},
        "models": {"document": {"path": tokenizer}, "tokenizer": tokenizer},
        "manifest": {"docs_per_bin": docs_per_bin, "min_tokens": 8},
    }
    return validate_config(raw, source="bench")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--files", type=int, default=32)
    parser.add_argument("--docs-per-bin", type=int, default=20)
    parser.add_argument("--groups", type=int, nargs="+", default=[1, 4, 32], help="files per scan group")
    args = parser.parse_args()
    fake = FakeClassifier()
    lazy_scan.classifier_for = lambda corpus, facets: fake  # the stand-in (the fraction depends on labels only)
    figures: dict[str, list] = {"files_per_group": [], "fraction_classified": [], "seconds": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = write_corpus(root / "corpus", args.records, args.files, seed=0)
        tokenizer = str(build_tokenizer(root / "tokenizer"))
        topic = {"source": "field", "field": "meta.t"}
        lazy = config_for(tokenizer, args.docs_per_bin, {"topic": topic, "format": {"source": "classifier", "model": tmp}})
        # Eager reference: every record labelled by the same stand-in, as a labels parquet per file would.
        import pyarrow as pa
        import pyarrow.parquet as pq

        from capatlas.corpus.readers import file_key, iter_records

        labels_dir = root / "labels"
        labels_dir.mkdir()
        for path in files:
            recs = list(iter_records(path))
            table = pa.table(
                {
                    "row": [r.row for r in recs],
                    "doc_id": [r.doc_id for r in recs],
                    "format_id": pa.array([skewed_format(r.text, r.doc_id) for r in recs], pa.int32()),
                }
            )
            pq.write_table(table, labels_dir / f"{file_key(path)}.parquet")
        eager = build_manifest(files, lazy, tokenizer=tokenizer, labels_dir=str(labels_dir), threads=1)
        formats = np.array([skewed_format(f"{i}") for i in range(20000)])
        p_min = np.bincount(formats, minlength=N_FORMATS).min() / len(formats)
        floor = min(1.0, args.docs_per_bin / p_min / (args.records / len(TOPICS)))
        for per_group in args.groups:
            groups = [files[i : i + per_group] for i in range(0, len(files), per_group)]
            fake.n_classified = 0
            with Stopwatch() as watch:
                result = build_manifest(files, lazy, tokenizer=tokenizer, threads=1, groups=groups)
            if [(c.doc_id, c.bin_id) for c in result.docs] != [(c.doc_id, c.bin_id) for c in eager.docs]:
                sys.exit(f"lazy labels with {per_group} files per group changed the sample")
            fraction = fake.n_classified / args.records
            print(f"{per_group} files per group: {100 * fraction:.1f}% classified in {watch.seconds:.1f} s", file=sys.stderr)
            figures["files_per_group"].append(per_group)
            figures["fraction_classified"].append(round(fraction, 4))
            figures["seconds"].append(round(watch.seconds, 1))
    line = " ".join(f"{k}={v}".replace(" ", "") for k, v in figures.items())
    print(f"bench_lazy_labels records={args.records} docs_per_bin={args.docs_per_bin} {line} floor={floor:.4f} " + machine())


if __name__ == "__main__":
    main()

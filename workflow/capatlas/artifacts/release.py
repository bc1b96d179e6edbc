"""The release bundle: what `capatlas export` writes and `capatlas verify-release` checks.

Layout (paths relative to the bundle, ``results/<run>/release/``):

    README.md                      data card (Hugging Face dataset card: YAML header with license and
                                   `configs` naming the parquet files, then what each file is and how it was made)
    SHA256SUMS                     `sha256sum` format, every other file, sorted by path
    config.yaml                    the run's resolved config
    provenance.json                models, tokenizer, preconditioner identity, Bergson and capatlas versions
    manifest/                      manifest.parquet, locations.parquet, bin_summary.csv, contract.json
    scores/document_scores.parquet doc_id, bin_id, one column per benchmark (each document's mean cosine)
    influence/                     bin_matrix.parquet, topic_marginals.parquet, format_marginals.parquet, bin_bootstrap.npz
    study_layout/zscored_<benchmark>.csv   the study's CSV layout: topic_label, format_label, mean_score, zscore, doc_count
    contrast/                      summary.json and its tables
    unlearning/                    summary.parquet, paired_stats.parquet, summary.json (when the run unlearned)
    unlearning/adapters/...        LoRA adapters (when export.adapters_max_mb allows)
    figures/                       the run's figures
    atlas.html                     the atlas page (opens from disk)

`SHA256SUMS` ties every byte to the bundle; `verify-release` recomputes the
bin means from the document scores, the z-scores and marginals from the bin
means, the study-layout CSVs from the bin matrix and the contrast summary
from the bin matrix, so a bundle's tables are shown to belong together.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from capatlas.errors import CapatlasError

CHECKSUMS = "SHA256SUMS"
DATA_CARD = "README.md"
CONFIG = "config.yaml"
PROVENANCE = "provenance.json"
SCORES = "scores/document_scores.parquet"
MANIFEST_DIR = "manifest"
INFLUENCE_DIR = "influence"
STUDY_DIR = "study_layout"
CONTRAST_DIR = "contrast"
UNLEARNING_DIR = "unlearning"
FIGURES_DIR = "figures"
ATLAS = "atlas.html"
STUDY_COLUMNS = ["topic_label", "format_label", "mean_score", "zscore", "doc_count"]

# Tabular files `datasets.load_dataset(<bundle>, name)` reads (the card's `configs`).
DATASET_CONFIGS = {
    "bin_matrix": "influence/bin_matrix.parquet",
    "topic_marginals": "influence/topic_marginals.parquet",
    "format_marginals": "influence/format_marginals.parquet",
    "manifest": "manifest/manifest.parquet",
    "locations": "manifest/locations.parquet",
    "document_scores": SCORES,
    "topic_contrast": "contrast/topic_contrast.parquet",
    "format_contrast": "contrast/format_contrast.parquet",
    "unlearning_runs": "unlearning/summary.parquet",
    "unlearning_paired_stats": "unlearning/paired_stats.parquet",
}


def study_csv_name(benchmark: str) -> str:
    return f"zscored_{benchmark}.csv"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# Snakemake marks a finished directory output with this empty file; it is not part of the bundle.
SNAKEMAKE_MARKER = ".snakemake_timestamp"


def bundle_files(root: Path) -> list[str]:
    """Every file under `root` but SHA256SUMS (and Snakemake's marker), as sorted POSIX paths relative to it."""
    found = []
    for dirpath, _, names in os.walk(root):
        for name in names:
            rel = Path(dirpath, name).relative_to(root).as_posix()
            if rel not in (CHECKSUMS, SNAKEMAKE_MARKER):
                found.append(rel)
    return sorted(found)


def write_checksums(root: str | os.PathLike) -> None:
    root = Path(root)
    lines = [f"{_sha256(root / rel)}  {rel}\n" for rel in bundle_files(root)]
    (root / CHECKSUMS).write_text("".join(lines))


def read_checksums(root: Path) -> dict[str, str]:
    path = root / CHECKSUMS
    if not path.is_file():
        raise CapatlasError(f"{root} has no {CHECKSUMS}: not a capatlas release bundle")
    sums: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        digest, sep, rel = line.partition("  ")
        if not sep or len(digest) != 64 or not rel:
            raise CapatlasError(f"{path}, line {number}: not '<sha256>  <path>'")
        if rel in sums:
            raise CapatlasError(f"{path}, line {number}: {rel} is listed twice")
        sums[rel] = digest
    return sums


def verify_checksums(root: str | os.PathLike) -> list[str]:
    """Problems with the bundle's bytes, one line each naming the file (empty: every file matches)."""
    root = Path(root)
    sums = read_checksums(root)
    problems = []
    present = set(bundle_files(root))
    for rel, digest in sums.items():
        if rel not in present:
            problems.append(f"{rel}: listed in {CHECKSUMS} but missing")
        elif _sha256(root / rel) != digest:
            problems.append(f"{rel}: sha256 differs from {CHECKSUMS} (corrupted or changed)")
    for rel in sorted(present - set(sums)):
        problems.append(f"{rel}: not listed in {CHECKSUMS}")
    return problems

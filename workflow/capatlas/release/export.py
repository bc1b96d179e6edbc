"""`capatlas export`: a finished run as a publishable bundle (`capatlas.artifacts.release`).

Copies the run's tables and figures, gathers the per-document scores of
every shard into one table, writes the bin matrix again in the study's CSV
layout, records provenance (model, tokenizer, preconditioner, versions),
adds LoRA adapters when `export.adapters_max_mb` allows, writes a Hugging
Face dataset card, and checksums every file. The bundle directory is
replaced as a whole only when all of it is written.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from capatlas import __version__
from capatlas.artifacts import release
from capatlas.artifacts.bin_matrix import read_bin_matrix
from capatlas.command import Command
from capatlas.errors import CapatlasError
from capatlas.fileio import atomic_path, tokenizer_sha256, write_json, write_text
from capatlas.taxonomy import FORMAT_SLUGS, N_BINS, N_FORMATS, TOPIC_SLUGS

log = logging.getLogger(__name__)

COMMAND = Command()

# Run files copied as they are: (path in the run, path in the bundle, required).
COPIED = [
    ("manifest/manifest.parquet", "manifest/manifest.parquet", True),
    ("manifest/locations.parquet", "manifest/locations.parquet", True),
    ("manifest/bin_summary.csv", "manifest/bin_summary.csv", True),
    ("manifest/contract.json", "manifest/contract.json", True),
    ("influence/bin_matrix.parquet", "influence/bin_matrix.parquet", True),
    ("influence/topic_marginals.parquet", "influence/topic_marginals.parquet", True),
    ("influence/format_marginals.parquet", "influence/format_marginals.parquet", True),
    ("influence/bin_bootstrap.npz", "influence/bin_bootstrap.npz", True),
    ("contrast/summary.json", "contrast/summary.json", True),
    ("contrast/interaction.parquet", "contrast/interaction.parquet", True),
    ("contrast/topic_contrast.parquet", "contrast/topic_contrast.parquet", True),
    ("contrast/format_contrast.parquet", "contrast/format_contrast.parquet", True),
    ("contrast/leave_one_bin_out.parquet", "contrast/leave_one_bin_out.parquet", True),
    ("contrast/facet_effects.parquet", "contrast/facet_effects.parquet", True),
    ("unlearning/summary.parquet", "unlearning/summary.parquet", False),
    ("unlearning/paired_stats.parquet", "unlearning/paired_stats.parquet", False),
    ("unlearning/summary.json", "unlearning/summary.json", False),
    ("unlearning/forget_sets.json", "unlearning/forget_sets.json", False),
    ("figures/atlas.html", release.ATLAS, False),
]


def study_layout(matrix: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per benchmark, the bin matrix in the study's CSV layout (slugs; empty bins with doc_count 0)."""
    out = {}
    for name, part in matrix.groupby("benchmark", sort=False):
        part = part.set_index("bin_id").reindex(range(N_BINS))
        out[name] = pd.DataFrame(
            {
                "topic_label": [TOPIC_SLUGS[b // N_FORMATS] for b in range(N_BINS)],
                "format_label": [FORMAT_SLUGS[b % N_FORMATS] for b in range(N_BINS)],
                "mean_score": part["mean"].to_numpy(dtype=np.float64),
                "zscore": part["zscore"].to_numpy(dtype=np.float64),
                "doc_count": part["n_docs"].fillna(0).to_numpy(dtype=np.int64),
            }
        )
    return out


def document_scores(score_files: list[Path]) -> pa.Table:
    """Every shard's per-document scores in one table, sorted by doc_id."""
    if not score_files:
        raise CapatlasError("no attribution/scores/shard-*.parquet in the run: score the shards first")
    tables = [pq.read_table(p).replace_schema_metadata(None) for p in score_files]
    columns = tables[0].column_names
    for path, table in zip(score_files, tables, strict=True):
        if table.column_names != columns:
            raise CapatlasError(f"{path} has columns {table.column_names}, the first shard {columns}")
    table = pa.concat_tables(tables)
    return table.sort_by("doc_id")


def _adapters(run: Path, max_mb: float) -> list[Path]:
    adapters = sorted(p for p in (run / "unlearning").glob("*/*/*/seed*/adapter") if p.is_dir())
    total = sum(f.stat().st_size for a in adapters for f in a.rglob("*") if f.is_file()) / 2**20
    if max_mb <= 0 or not adapters:
        return []
    if total > max_mb:
        log.warning("LoRA adapters total %.1f MB > export.adapters_max_mb %.1f: left out of the bundle", total, max_mb)
        return []
    return adapters


def provenance(run: Path, config: dict) -> dict:
    pre = run / "attribution" / "preconditioner" / "provenance.json"
    pre_provenance = json.loads(pre.read_text()) if pre.is_file() else {}
    contract = json.loads((run / "manifest" / "contract.json").read_text())
    return {
        "capatlas_version": __version__,
        "bergson_version": pre_provenance.get("bergson_version"),
        "model": pre_provenance.get("model"),
        "model_sha256": (pre_provenance.get("identity") or {}).get("model_sha256"),
        "attribution_fingerprint": (pre_provenance.get("identity") or {}).get("attribution"),
        "preconditioner": {
            "provenance_sha256": _sha256_json(pre_provenance) if pre_provenance else None,
            "mixing": pre_provenance.get("mixing"),
        },
        "tokenizer": contract.get("tokenizer"),
        # The files the manifest counted tokens with (the run's tokenizer directory, relative to the workflow's).
        "tokenizer_sha256": tokenizer_sha256(contract["tokenizer"]) if contract.get("tokenizer") else None,
        "corpus_inputs": len(contract.get("inputs", [])),
        "seed": config.get("seed"),
    }


def _sha256_json(obj: dict) -> str:
    from capatlas.artifacts.provenance import provenance_sha256

    return provenance_sha256(obj)


def data_card(config: dict, files: list[str], benchmarks: list[str], license_id: str, command: str, counts: dict) -> str:
    configs = [
        {"config_name": name, "data_files": [{"split": "train", "path": path}]}
        for name, path in release.DATASET_CONFIGS.items()
        if path in files
    ]
    header = yaml.safe_dump(
        {
            "license": license_id,
            "pretty_name": f"capatlas release: {config.get('run', 'run')}",
            "tags": ["data-attribution", "trackstar", "weborganizer", "capatlas"],
            "configs": configs,
        },
        sort_keys=False,
    )
    rows = "\n".join(f"| `{f}` | {_describe(f)} |" for f in files)
    return f"""---
{header}---

# capatlas release: `{config.get('run', 'run')}`

Which parts of the pretraining corpus gave the model its benchmark
capabilities: TrackStar attribution (Bergson) of {counts.get('sampled', '?')} documents,
sampled per WebOrganizer topic x format bin (576 bins), against the
queries of {', '.join(benchmarks)}; the bin-level influence matrix; the
2 x 2 contrasts (social vs STEM, reasoning vs knowledge); and, where the
run unlearned, per-bin unlearning against within-bin random controls.

Load a table with `datasets.load_dataset("<this directory>", "<config>")`
(configs: {', '.join(c['config_name'] for c in configs)}). Check the bundle
with `capatlas verify-release <this directory>`: every checksum in
`SHA256SUMS`, and the bin matrix, marginals, study-layout CSVs and contrast
summary recomputed from the released tables.

## How it was made

```
{command}
```

capatlas {__version__}; the resolved config is `config.yaml`, the models,
tokenizer and preconditioner are identified in `provenance.json`, the
corpus inputs in `manifest/contract.json`.

## Files

| file | what it is |
|---|---|
{rows}
"""


_DESCRIPTIONS = {
    "README.md": "this card",
    "config.yaml": "the run's resolved config",
    "provenance.json": "model and tokenizer identity, preconditioner, Bergson and capatlas versions",
    "manifest/manifest.parquet": "the working set: doc_id, topic_id, format_id, bin_id, n_tokens, text_sha256",
    "manifest/locations.parquet": "where each document is: doc_id, source_file, row",
    "manifest/bin_summary.csv": "per bin: population, after dedup, after filter, sampled",
    "manifest/contract.json": "sampling settings, inputs (size, mtime, sha256), counts",
    release.SCORES: "each document's mean TrackStar cosine per benchmark",
    "influence/bin_matrix.parquet": "per benchmark and bin: n_docs, mean, sd, z-score, bootstrap intervals",
    "influence/topic_marginals.parquet": "per benchmark and topic: mean z over its bins, intervals",
    "influence/format_marginals.parquet": "per benchmark and format: mean z over its bins, intervals",
    "influence/bin_bootstrap.npz": "bootstrap replicates of the bin means (documents, queries, combined)",
    "contrast/summary.json": "the 2 x 2 contrast statistics, intervals and verdict",
    "atlas.html": "the atlas page: heatmaps, bins' top documents, contrasts (open from disk)",
    "unlearning/summary.parquet": "every unlearning run: benchmark scores before and after",
    "unlearning/paired_stats.parquet": "influence-targeted vs random, paired statistics",
}


def _describe(rel: str) -> str:
    if rel in _DESCRIPTIONS:
        return _DESCRIPTIONS[rel]
    if rel.startswith(release.STUDY_DIR + "/"):
        return "the bin matrix in the study's CSV layout (topic_label, format_label, mean_score, zscore, doc_count)"
    if rel.startswith("contrast/"):
        return "a table of the 2 x 2 analysis"
    if rel.startswith("figures/"):
        return "figure"
    if rel.startswith(release.UNLEARNING_DIR + "/adapters/"):
        return "LoRA adapter of an unlearning run"
    return "run output"


def export(run: Path, out: Path, config: dict, *, command: str) -> list[str]:
    """Write the bundle of `run` to `out` (replaced as a whole); returns its files."""
    settings = config.get("export") or {}
    for src, _, required in COPIED:
        if required and not (run / src).is_file():
            raise CapatlasError(f"{run / src} does not exist: finish the run (or its stage) before exporting")
    with atomic_path(out, directory=True) as tmp:
        for src, dest, _ in COPIED:
            if (run / src).is_file():
                (tmp / dest).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(run / src, tmp / dest)
        for figure in sorted((run / "figures").glob("*.png")):
            (tmp / release.FIGURES_DIR).mkdir(exist_ok=True)
            shutil.copyfile(figure, tmp / release.FIGURES_DIR / figure.name)
        scores = document_scores(sorted((run / "attribution" / "scores").glob("shard-*.parquet")))
        (tmp / release.SCORES).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(scores, tmp / release.SCORES)
        matrix = read_bin_matrix(run / "influence" / "bin_matrix.parquet")
        (tmp / release.STUDY_DIR).mkdir()
        for name, frame in study_layout(matrix).items():
            frame.to_csv(tmp / release.STUDY_DIR / release.study_csv_name(name), index=False)
        for adapter in _adapters(run, float(settings.get("adapters_max_mb", 0))):
            dest = tmp / release.UNLEARNING_DIR / "adapters" / adapter.parent.relative_to(run / "unlearning")
            shutil.copytree(adapter, dest)
        write_text(yaml.safe_dump(config, sort_keys=True), tmp / release.CONFIG)
        write_json(provenance(run, config), tmp / release.PROVENANCE)
        contract = json.loads((run / "manifest" / "contract.json").read_text())
        files = sorted([*release.bundle_files(tmp), release.DATA_CARD, release.CHECKSUMS])
        benchmarks = list(dict.fromkeys(matrix["benchmark"]))
        card = data_card(
            config, files, benchmarks, str(settings.get("license", "odc-by")), command, contract.get("counts", {})
        )
        write_text(card, tmp / release.DATA_CARD)
        release.write_checksums(tmp)
    return files


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="the run's results directory (results/<run>)")
    parser.add_argument("--out", required=True, help="bundle directory to write (replaced as a whole)")
    parser.add_argument(
        "--made-by", default=None, help="the command that made the run, for the data card (default: the README's)"
    )


def run(args: argparse.Namespace, config: dict | None) -> None:
    run_dir = Path(args.run)
    if not run_dir.is_dir():
        raise CapatlasError(f"--run {run_dir} is not a directory")
    command = args.made_by or "snakemake --cores N --config export='{enabled: true}'"
    files = export(run_dir, Path(args.out), config, command=command)
    log.info("release bundle of %s: %d files -> %s", run_dir, len(files), args.out)

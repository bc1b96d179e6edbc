"""`capatlas verify-release DIR`: a release bundle's checksums, and its tables recomputed from each other.

1. Every file matches `SHA256SUMS` and every file is listed (a corrupted,
   missing or extra file is named).
2. The bin means and document counts recompute from the document scores;
   the z-scores from the bin means; the topic and format marginals' counts
   and mean z from the bin matrix; the study-layout CSVs equal the bin
   matrix; the contrast summary recomputes from the bin matrix and its
   bootstrap replicates (same seed and settings, from the bundle's config).

Exits 0 when everything holds; otherwise names every problem and exits 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import yaml

from capatlas.artifacts import release
from capatlas.artifacts.bin_matrix import read_bin_matrix
from capatlas.command import Command
from capatlas.errors import CapatlasError
from capatlas.analysis.influence import BIN_FORMAT, BIN_TOPIC
from capatlas.taxonomy import N_BINS, N_FORMATS, N_TOPICS

log = logging.getLogger(__name__)

COMMAND = Command(config="none")

# Bin means from float32 document scores against float64 per-query sums: rounding only.
MEAN_ATOL = 1e-6
EXACT_ATOL = 1e-9


def _close(a: np.ndarray, b: np.ndarray, atol: float) -> bool:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return a.shape == b.shape and bool(np.all((np.isnan(a) & np.isnan(b)) | (np.abs(a - b) <= atol)))


def check_bin_means(root: Path, matrix: pd.DataFrame) -> list[str]:
    scores = pq.read_table(root / release.SCORES).to_pandas()
    problems = []
    for name, part in matrix.groupby("benchmark", sort=False):
        if name not in scores:
            problems.append(f"{release.SCORES}: no column for benchmark {name!r}")
            continue
        values = scores[name].to_numpy(dtype=np.float64)
        bins = scores["bin_id"].to_numpy()
        ok = np.isfinite(values)
        counts = np.bincount(bins[ok], minlength=N_BINS)
        with np.errstate(invalid="ignore"):
            means = np.bincount(bins[ok], weights=values[ok], minlength=N_BINS) / counts
        part = part.set_index("bin_id").reindex(range(N_BINS))
        if not np.array_equal(counts, part["n_docs"].fillna(0).to_numpy(dtype=np.int64)):
            problems.append(f"influence/bin_matrix.parquet: n_docs of {name} differ from the document scores' counts")
        if not _close(np.where(counts > 0, means, np.nan), np.where(counts > 0, part["mean"], np.nan), MEAN_ATOL):
            worst = np.nanmax(np.abs(means - part["mean"].to_numpy()))
            problems.append(f"influence/bin_matrix.parquet: mean of {name} differs from the document scores (by {worst:.3g})")
    return problems


def check_z_and_marginals(root: Path, matrix: pd.DataFrame) -> list[str]:
    from capatlas.analysis.influence import group_means, zscore

    problems = []
    marginals = {
        "topic": pd.read_parquet(root / "influence" / "topic_marginals.parquet"),
        "format": pd.read_parquet(root / "influence" / "format_marginals.parquet"),
    }
    for name, part in matrix.groupby("benchmark", sort=False):
        part = part.set_index("bin_id").reindex(range(N_BINS))
        means = part["mean"].to_numpy(dtype=np.float64)
        n = part["n_docs"].fillna(0).to_numpy(dtype=np.float64)
        z = zscore(np.where(n > 0, means, np.nan))
        if not _close(z, part["zscore"], EXACT_ATOL):
            problems.append(f"influence/bin_matrix.parquet: zscore of {name} does not recompute from its means")
        for facet, groups, size in (("topic", BIN_TOPIC, N_TOPICS), ("format", BIN_FORMAT, N_FORMATS)):
            table = marginals[facet]
            rows = table[table["benchmark"] == name].set_index(f"{facet}_id").reindex(range(size))
            expected = {
                "n_docs": np.bincount(groups, weights=n, minlength=size),
                "mean_z": group_means(part["zscore"].to_numpy(dtype=np.float64), groups, size),
                "weighted_mean_z": group_means(part["zscore"].to_numpy(dtype=np.float64), groups, size, weights=n),
            }
            for column, values in expected.items():
                if not _close(values, rows[column], EXACT_ATOL):
                    problems.append(f"influence/{facet}_marginals.parquet: {column} of {name} does not recompute")
    return problems


def check_study_layout(root: Path, matrix: pd.DataFrame) -> list[str]:
    from capatlas.release.export import study_layout

    problems = []
    expected = study_layout(matrix)
    found = {p.name for p in (root / release.STUDY_DIR).glob("*.csv")}
    for name, frame in expected.items():
        rel = f"{release.STUDY_DIR}/{release.study_csv_name(name)}"
        if release.study_csv_name(name) not in found:
            problems.append(f"{rel}: missing")
            continue
        csv = pd.read_csv(root / rel)
        if list(csv.columns) != release.STUDY_COLUMNS:
            problems.append(f"{rel}: columns {list(csv.columns)}, expected {release.STUDY_COLUMNS}")
            continue
        same = (
            list(csv["topic_label"]) == list(frame["topic_label"])
            and list(csv["format_label"]) == list(frame["format_label"])
            and np.array_equal(csv["doc_count"].to_numpy(), frame["doc_count"].to_numpy())
            and _close(csv["mean_score"], frame["mean_score"], 0.0)
            and _close(csv["zscore"], frame["zscore"], 0.0)
        )
        if not same:
            problems.append(f"{rel}: differs from influence/bin_matrix.parquet")
    return problems


def _compare(a: Any, b: Any, path: str, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if key == "source":  # where the matrix was read from: the run's path, not the bundle's
                continue
            if key not in a or key not in b:
                out.append(f"{path}.{key}: present in one summary only")
            else:
                _compare(a[key], b[key], f"{path}.{key}", out)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.append(f"{path}: lengths {len(a)} and {len(b)}")
        for i, (x, y) in enumerate(zip(a, b)):
            _compare(x, y, f"{path}[{i}]", out)
    elif isinstance(a, float) or isinstance(b, float):
        if a is None or b is None or not math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12):
            out.append(f"{path}: {a!r} vs {b!r}")
    elif a != b:
        out.append(f"{path}: {a!r} vs {b!r}")


def check_contrast(root: Path) -> list[str]:
    from capatlas.analysis.contrast import _json_safe, analyse, design_for, read_any

    config = yaml.safe_load((root / release.CONFIG).read_text())
    analysis = config["analysis"]
    matrix = read_any(root / "influence" / "bin_matrix.parquet")
    summary, _ = analyse(
        matrix,
        design_for(matrix.benchmarks, config.get("benchmarks")),
        n_bootstrap=analysis["bootstrap"],
        n_permutations=analysis["permutations"],
        ci_level=analysis["ci_level"],
        top_k=analysis["top_k"],
        seed=config["seed"],
    )
    released = json.loads((root / "contrast" / "summary.json").read_text())
    differences: list[str] = []
    _compare(_json_safe(summary), released, "summary", differences)
    if differences:
        shown = "; ".join(differences[:5]) + (f"; and {len(differences) - 5} more" if len(differences) > 5 else "")
        return [f"contrast/summary.json does not recompute from the bin matrix: {shown}"]
    return []


def verify(root: str | Path) -> list[str]:
    """Every problem with the bundle at `root` (empty: it verifies)."""
    root = Path(root)
    if not root.is_dir():
        raise CapatlasError(f"release bundle {root} is not a directory")
    problems = release.verify_checksums(root)
    if problems:
        return problems  # recomputing from corrupted tables would only repeat the news
    matrix = read_bin_matrix(root / "influence" / "bin_matrix.parquet")
    for check in (check_bin_means, check_z_and_marginals, check_study_layout):
        problems += check(root, matrix)
    problems += check_contrast(root)
    return problems


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", help="release directory written by `capatlas export`")


def run(args: argparse.Namespace, config: dict | None) -> None:
    problems = verify(args.bundle)
    if problems:
        raise CapatlasError(f"release {args.bundle} does not verify:\n  " + "\n  ".join(problems))
    log.info("release %s verifies: checksums, bin matrix, marginals, study-layout CSVs, contrast summary", args.bundle)

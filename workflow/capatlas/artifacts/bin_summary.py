"""The working set's bin summary: `manifest/bin_summary.csv`, written by the manifest stage, read by influence.

One row per bin of the 576, in bin order: bin_id, topic_id, topic,
format_id, format, and four counts of documents: population (labelled in
the corpus), after_dedup, after_filter (eligible) and sampled (in the
working set). Influence reads the eligible and sampled counts for the
finite-population correction of its document bootstrap.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from capatlas.errors import CapatlasError
from capatlas.taxonomy import FORMAT_SLUGS, N_BINS, N_FORMATS, TOPIC_SLUGS

COLUMNS = ("bin_id", "topic_id", "topic", "format_id", "format", "population", "after_dedup", "after_filter", "sampled")
RERUN = "rerun `capatlas manifest` (the manifest rule)"


def summary_rows(population, after_dedup, after_filter, sampled) -> list[list]:
    """The CSV's rows (header first) from the four per-bin counts."""
    rows: list[list] = [list(COLUMNS)]
    for b in range(N_BINS):
        t, f = divmod(b, N_FORMATS)
        rows.append([b, t, TOPIC_SLUGS[t], f, FORMAT_SLUGS[f], *(int(c[b]) for c in (population, after_dedup, after_filter, sampled))])
    return rows


def read_bin_counts(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """{'after_filter': [576], 'sampled': [576], ...}, every row and count checked, naming the file and row."""
    path = Path(path)
    try:
        with open(path, newline="") as handle:
            rows = list(csv.reader(handle))
    except OSError as exc:
        raise CapatlasError(f"cannot read {path} ({exc.strerror}): {RERUN}") from None
    if not rows or tuple(rows[0]) != COLUMNS:
        raise CapatlasError(f"{path}: header is not {','.join(COLUMNS)}: {RERUN}")
    if len(rows) != N_BINS + 1:
        raise CapatlasError(f"{path}: {len(rows) - 1} rows, not one per bin ({N_BINS}): {RERUN}")
    counts = {name: np.zeros(N_BINS, dtype=np.int64) for name in COLUMNS[5:]}
    for b, row in enumerate(rows[1:]):
        try:
            if int(row[0]) != b:
                raise ValueError(f"bin_id {row[0]} where {b} belongs")
            for k, name in enumerate(COLUMNS[5:], start=5):
                counts[name][b] = int(row[k])
        except (ValueError, IndexError) as exc:
            raise CapatlasError(f"{path}, row {b + 2}: {exc}: {RERUN}") from None
        if not counts["sampled"][b] <= counts["after_filter"][b] <= counts["after_dedup"][b] <= counts["population"][b]:
            raise CapatlasError(f"{path}, row {b + 2}: the counts do not shrink from population to sampled: {RERUN}")
    return counts

"""Shard scores: one score-shard job's per-document scores, the file influence and forget-sets read.

Written by `capatlas score-shard` (one parquet per shard) through `write_scores`,
so bench/ and tests/ build the same bytes the stage does: columns doc_id
(string), bin_id (int32) and one float32 column per benchmark (the
document's mean TrackStar cosine over the benchmark's queries; NaN for a
document under 2 tokens), the job's provenance as canonical JSON under the
schema-metadata key ``capatlas.provenance``, zstd compression, and page
checksums that readers verify (`read_scores`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from capatlas.artifacts.provenance import PROVENANCE_KEY, canonical_json
from capatlas.errors import CapatlasError


def scores_table(doc_ids: Sequence[str], bins: np.ndarray, scores: Mapping[str, np.ndarray], provenance: Mapping) -> pa.Table:
    """The scores table: doc_id, bin_id, then one float32 column per benchmark in `scores`' order."""
    columns: dict[str, pa.Array] = {
        "doc_id": pa.array(list(doc_ids), pa.string()),
        "bin_id": pa.array(np.asarray(bins).astype(np.int32), pa.int32()),
    }
    for name, values in scores.items():
        columns[name] = pa.array(np.asarray(values, dtype=np.float32), pa.float32())
    return pa.table(columns).replace_schema_metadata({PROVENANCE_KEY: canonical_json(provenance).encode()})


def write_scores(path: str | os.PathLike, table: pa.Table) -> None:
    """Write `table` (from `scores_table`) to `path`; the caller makes the write atomic."""
    pq.write_table(table, path, compression="zstd", write_statistics=True, write_page_checksum=True)


def read_scores(path: str | os.PathLike, columns: Sequence[str] | None = None, *, rerun: str = "") -> pa.Table:
    """The scores (or `columns` of them), every page checked against its checksum."""
    try:
        return pq.read_table(path, columns=list(columns) if columns else None, page_checksum_verification=True)
    except (OSError, pa.ArrowInvalid) as exc:
        raise CapatlasError(f"{Path(path)} is corrupted or unreadable ({exc}){': ' + rerun if rerun else ''}") from None

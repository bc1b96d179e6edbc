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
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from capatlas.artifacts.provenance import PROVENANCE_KEY, canonical_json, parquet_provenance
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


_SHARD_NAME = re.compile(r"(shard-\d+)")


def shard_key(path: str | os.PathLike) -> str:
    """`shard-00003` from any file named after its shard (scores, bin sums, the shard itself)."""
    match = _SHARD_NAME.search(Path(path).name)
    if not match:
        raise CapatlasError(f"{path}: cannot tell which shard this is (expected a name like shard-00000.parquet)")
    return match.group(1)


def read_score_provenance(path: str | os.PathLike) -> dict:
    """The score-shard job's provenance from the file's schema metadata."""
    try:
        metadata = pq.read_schema(path).metadata or {}
    except Exception as exc:
        raise CapatlasError(f"{path} is not a readable parquet file: {exc}") from None
    return parquet_provenance(metadata, Path(path), produced_by="score-shard")


def check_score_identity(path: str | os.PathLike, provenance: Mapping, seen: dict[str, str]) -> None:
    """The scores in `path` must be those of the shard the file is named after, and no shard may come twice.

    `seen` maps each shard file's sha256 (from provenance) to the shard that
    claimed it; a reader passes the same dict for every file it reads.
    """
    expected = shard_key(path)
    recorded = provenance.get("shard") or {}
    key = shard_key(Path(str(recorded.get("path", ""))))
    if key != expected:
        raise CapatlasError(
            f"{path} holds the scores of {key} (its provenance names {recorded.get('path')}), "
            f"not of {expected}: the file was copied or renamed; rescore {expected}"
        )
    digest = recorded.get("sha256")
    if digest is None:
        return
    if digest in seen:
        raise CapatlasError(
            f"{path} scores the same shard file (sha256 {digest[:12]}...) as {seen[digest]}: "
            f"its documents would count twice; rescore {expected}"
        )
    seen[digest] = expected


def run_signature(provenance: Mapping) -> dict:
    """What every shard of one attribution run shares: model, settings, preconditioner, query sets."""
    return {
        "identity": provenance.get("identity"),
        "preconditioner_sha256": (provenance.get("preconditioner") or {}).get("provenance_sha256"),
        "benchmarks": {
            b.get("name"): {
                "provenance_sha256": b.get("provenance_sha256"),
                "query_set_sha256": b.get("query_set_sha256"),
                "n_queries": b.get("n_queries"),
            }
            for b in provenance.get("benchmarks") or []
        },
    }

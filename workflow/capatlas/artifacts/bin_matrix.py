"""The bin matrix: `capatlas influence`'s outputs, read by contrast, figures and forget-sets.

One influence job writes, into one directory, through `write_influence_files`:

    bin_matrix.parquet        one row per (benchmark, bin): n_docs, mean, sd, sem,
                              z-score and the bootstrap intervals (analysis/influence.py
                              documents the columns)
    topic_marginals.parquet   one row per (benchmark, topic), and per (benchmark,
    format_marginals.parquet  format): the marginals of the z-scores
    bin_bootstrap.npz         per benchmark, the combined (documents x queries), the
                              document and the query bootstrap replicates of every
                              bin's mean ([B, 576] each)

Every file carries the job's provenance as canonical JSON (parquet schema
metadata key ``capatlas.influence``, npz array ``provenance``); the parquet
files are written with page checksums that `read_bin_matrix` verifies, and
a bootstrap file whose provenance is not its matrix's is refused: the two
must come from one job.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from capatlas.artifacts.provenance import canonical_json, identity_differences
from capatlas.artifacts.scores import run_signature
from capatlas.errors import CapatlasError
from capatlas.fileio import atomic_path

MATRIX_FILE = "bin_matrix.parquet"
TOPIC_FILE = "topic_marginals.parquet"
FORMAT_FILE = "format_marginals.parquet"
BOOTSTRAP_FILE = "bin_bootstrap.npz"
# A file-format key, not a module path: it stays as it was written before the package had wings.
METADATA_KEY = b"capatlas.influence"
REQUIRED_COLUMNS = ("benchmark", "bin_id", "n_docs", "mean", "zscore")
RERUN = "rerun `capatlas influence` (the influence rule)"
# The bootstrap file's replicate kinds, the primary (both sources of uncertainty) first.
REPLICATE_KINDS = ("combined", "documents", "queries")


def _table(frame: pd.DataFrame, provenance: Mapping) -> pa.Table:
    table = pa.Table.from_pandas(frame, preserve_index=False)
    return table.replace_schema_metadata({METADATA_KEY: canonical_json(provenance).encode()})


def _write_parquet(table: pa.Table, path: Path) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", write_statistics=True, write_page_checksum=True)


def write_bin_matrix(path: str | os.PathLike, matrix: pd.DataFrame, provenance: Mapping) -> None:
    """bin_matrix.parquet alone (tests and bench build inputs of the stages that read it this way)."""
    _write_parquet(_table(matrix, provenance), Path(path))


def write_influence_files(
    out_dir: str | os.PathLike,
    *,
    matrix: pd.DataFrame,
    topic_marginals: pd.DataFrame,
    format_marginals: pd.DataFrame,
    benchmarks: Sequence[str],
    document_replicates: Sequence[np.ndarray],
    query_replicates: Sequence[np.ndarray],
    combined_replicates: Sequence[np.ndarray],
    provenance: Mapping,
) -> None:
    """The four files of one influence job, each written atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_bin_matrix(out / MATRIX_FILE, matrix, provenance)
    _write_parquet(_table(topic_marginals, provenance), out / TOPIC_FILE)
    _write_parquet(_table(format_marginals, provenance), out / FORMAT_FILE)
    arrays = {"benchmarks": np.array(list(benchmarks), dtype=str), "provenance": np.array(canonical_json(provenance))}
    for j, name in enumerate(benchmarks):
        arrays[f"{name}/documents"] = document_replicates[j]
        arrays[f"{name}/queries"] = query_replicates[j]
        arrays[f"{name}/combined"] = combined_replicates[j]
    with atomic_path(out / BOOTSTRAP_FILE) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)


def read_influence_provenance(path: str | os.PathLike) -> dict:
    """The influence job's provenance from a bin-matrix or marginals file; raise naming the file if it has none."""
    try:
        metadata = pq.read_schema(path).metadata or {}
    except Exception as exc:
        raise CapatlasError(f"{path} is not a readable parquet file ({exc}): {RERUN}") from None
    if METADATA_KEY not in metadata:
        raise CapatlasError(f"{path} carries no provenance ({METADATA_KEY.decode()}): is it `capatlas influence` output?")
    return json.loads(metadata[METADATA_KEY])


def read_bin_matrix(path: str | os.PathLike, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """The bin matrix (or `columns` of it), every page checked, with the columns its readers need."""
    path = Path(path)
    if not path.is_file():
        raise CapatlasError(f"bin matrix {path} does not exist: {RERUN}")
    read_influence_provenance(path)
    try:
        schema = pq.read_schema(path)
        table = pq.read_table(path, columns=list(columns) if columns else None, page_checksum_verification=True)
    except (OSError, pa.ArrowInvalid) as exc:
        raise CapatlasError(f"{path} is corrupted or unreadable ({exc}): {RERUN}") from None
    missing = [c for c in (columns or REQUIRED_COLUMNS) if c not in schema.names]
    if missing:
        raise CapatlasError(f"{path} lacks column(s) {', '.join(missing)}: is it `capatlas influence` output?")
    return table.to_pandas()


def read_bootstrap(path: str | os.PathLike, provenance: Mapping | None = None) -> dict[str, dict[str, np.ndarray]]:
    """{benchmark: {kind: [B, 576]}} for kinds combined, documents, queries; with `provenance`, the file must be
    that job's."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            recorded = str(data["provenance"]) if "provenance" in data else None
            replicates = {
                name: {kind: data[f"{name}/{kind}"] for kind in REPLICATE_KINDS}
                for name in data["benchmarks"].tolist()
            }
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        # zipfile checks every member's CRC-32 as it reads it.
        raise CapatlasError(f"{path} is corrupted or unreadable ({type(exc).__name__}: {exc}): {RERUN}") from None
    if provenance is not None:
        if recorded is None:
            raise CapatlasError(f"{path} carries no provenance: {RERUN}")
        differences = identity_differences(dict(provenance), json.loads(recorded))
        if differences:
            raise CapatlasError(
                f"{path} was written by another influence job than its bin matrix ({'; '.join(differences[:3])}): {RERUN}"
            )
    return replicates


def check_scored_by_the_same_run(path: str | os.PathLike, scores: str | os.PathLike, score_provenance: Mapping) -> None:
    """The bin matrix in `path` must have been built from the attribution run that scored `scores`."""
    recorded = read_influence_provenance(path).get("attribution_run")
    if recorded is None:
        raise CapatlasError(f"{path} does not record its attribution run: {RERUN}")
    differences = identity_differences(run_signature(score_provenance), recorded)
    if differences:
        raise CapatlasError(
            f"{path} was built from another attribution run than {scores} ({'; '.join(differences[:3])}): {RERUN}"
        )

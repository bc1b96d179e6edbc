"""Shards: the working set's documents with their text, as `capatlas shard` writes them.

Written by `capatlas.corpus.shard` (``shards/shard-NNNNN.parquet``: doc_id,
bin_id, n_tokens, text); read by the preconditioner, the score jobs, the
forget sets and the atlas through `read_shard`, which checks what each of
them relies on and names the file when it does not hold.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from capatlas.errors import CapatlasError
from capatlas.taxonomy import N_BINS

COLUMNS = ("doc_id", "bin_id", "text")


def read_shard(
    path: str | Path, columns: Sequence[str] = COLUMNS, *, doc_ids: Iterable[str] | None = None
) -> pa.Table:
    """`columns` of one shard (only the rows of `doc_ids` when given, in file order).

    Refused, naming the file: a missing or unreadable file, a missing column,
    a missing value, a bin_id outside the 576 bins."""
    path = Path(path)
    if not path.is_file():
        raise CapatlasError(f"shard {path} does not exist: run `capatlas shard` first")
    try:
        names = pq.read_schema(path).names
    except Exception as exc:
        raise CapatlasError(f"shard {path} is not a readable parquet file: {exc}") from None
    missing = [c for c in columns if c not in names]
    if missing:
        raise CapatlasError(f"shard {path} lacks column(s) {', '.join(missing)}: is it `capatlas shard` output?")
    try:
        table = pq.read_table(path, columns=list(columns))
    except (OSError, pa.ArrowInvalid) as exc:
        raise CapatlasError(f"shard {path} is corrupted or unreadable ({exc}): rerun the shard rule") from None
    if doc_ids is not None:
        wanted = pa.array(sorted(set(doc_ids)), pa.string())
        table = table.filter(pc.is_in(table.column("doc_id"), value_set=wanted))
    for column in columns:
        if table.column(column).null_count:
            raise CapatlasError(f"shard {path} has missing values in column {column!r}")
    if "bin_id" in columns:
        bins = table.column("bin_id").to_numpy()
        bad = np.flatnonzero((bins < 0) | (bins >= N_BINS))
        if len(bad):
            i = int(bad[0])
            raise CapatlasError(
                f"shard {path}: document {table.column('doc_id')[i].as_py()!r} has bin_id {int(bins[i])}, "
                f"outside 0..{N_BINS - 1}"
            )
    return table

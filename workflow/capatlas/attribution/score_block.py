"""Bergson's per-document score store, written and read a block at a time.

Bergson keeps a score job's scores in one memory-mapped array of records,
one record per document with a ``(score_i, written_i)`` pair per query
(``bergson.score.score_writer``). Its writer fills a batch's scores one
query column at a time in Python, and its reader gathers the columns the
same way; with the study's ~17,000 queries that loop, not the gradients,
took most of a score job (issue 19: 84% of the scoring loop on CPU).

The pairs sit at a fixed stride inside each record, so the scores of all
documents and queries are one strided float array over the same memory,
and so are the written flags. `score_columns` builds those views;
`BlockScoreWriter` is Bergson's writer with its ``__call__`` replaced by
one vectorised assignment per batch, and `block_writer` puts it in
Bergson's place for the duration of a scoring call. The bytes written are
the same as Bergson's writer writes (a test compares them).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np

from capatlas.errors import CapatlasError


def score_columns(records: np.ndarray, field: str = "score") -> np.ndarray:
    """[n_records, n_queries] strided view of the ``<field>_i`` fields of Bergson's score records (no copy)."""
    fields = records.dtype.fields or {}
    n = sum(1 for name in fields if name.startswith(f"{field}_"))
    if not n:
        raise CapatlasError(f"the score store has no {field}_0 field: not a Bergson score file")
    dtype, first = fields[f"{field}_0"][:2]
    step = fields[f"{field}_1"][1] - first if n > 1 else records.dtype.itemsize
    offsets = np.array([fields[f"{field}_{i}"][1] for i in range(n)])
    if not np.array_equal(offsets, first + step * np.arange(n)) or any(
        fields[f"{field}_{i}"][0] != dtype for i in (0, n - 1)
    ):
        raise CapatlasError(f"the score store's {field} fields are not evenly spaced: an unknown Bergson layout")
    raw = records.reshape(-1).view(np.uint8)
    return np.ndarray(
        shape=(len(records), n), dtype=dtype, buffer=raw, offset=first, strides=(records.dtype.itemsize, step)
    )


def _writer_class():
    from bergson.score.score_writer import MemmapSequenceScoreWriter
    from bergson.utils.utils import tensor_to_numpy

    class BlockScoreWriter(MemmapSequenceScoreWriter):
        """Bergson's per-document score writer, one assignment per batch instead of two per query column."""

        def __call__(self, indices, scores, query_offset: int = 0):
            if not hasattr(self, "_columns"):
                self._columns = score_columns(self.scores)
                self._written = score_columns(self.scores, "written")
            block = tensor_to_numpy(scores.to(dtype=self.dtype).cpu())
            rows = np.asarray(indices, dtype=np.int64)
            columns = slice(query_offset, query_offset + block.shape[1])
            self._columns[rows, columns] = block.reshape(len(rows), -1)
            self._written[rows, columns] = True
            self.num_batches_since_flush += 1
            if self.num_batches_since_flush >= self.flush_interval:
                self.flush()

    return BlockScoreWriter


@contextlib.contextmanager
def block_writer() -> Iterator[None]:
    """Bergson's scoring writes through `BlockScoreWriter` inside this block (in this process)."""
    from bergson.score import score as bergson_score

    original = bergson_score.MemmapSequenceScoreWriter
    bergson_score.MemmapSequenceScoreWriter = _writer_class()
    try:
        yield
    finally:
        bergson_score.MemmapSequenceScoreWriter = original


class ScoreBlock:
    """A finished score store as [n_docs, n_queries] rows: ``block[a:b]`` is a float array of those rows, refused
    if Bergson left any of their cells unwritten (a zero-filled cell would otherwise read as a score of 0)."""

    def __init__(self, records: np.ndarray):
        self.columns = score_columns(records)
        self.written = score_columns(records, "written")

    def __len__(self) -> int:
        return len(self.columns)

    def __getitem__(self, rows: slice) -> np.ndarray:
        done = self.written[rows]
        if not done.all():
            row, column = np.argwhere(~done)[0]
            start = rows.start or 0
            raise CapatlasError(f"Bergson left the score of document row {start + row}, query {column} unwritten")
        return self.columns[rows]

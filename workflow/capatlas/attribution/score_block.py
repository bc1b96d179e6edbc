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

Bergson's scorer multiplies each batch's gradients by the query gradients
as it comes; with one document per batch that is a matrix-vector product
which reads the whole [queries, gradient dim] query matrix per document
(17,000 x 3,840 floats = 261 MB on the bench's tiny model: ~11 ms per
document on a 2-core CPU, more than its forward and backward). `BlockScorer`
does what Bergson's scorer does per batch (R^-1/2, the squared norms) but
keeps the preconditioned gradients and multiplies them by the queries
`SCORE_ROWS` documents at a time, always as a [SCORE_ROWS, dim] block (the
last one padded with zero rows), so every document's scores come from the
same product shape whatever its shard-mates: a document's scores do not
depend on its neighbours (a test checks), and differ from Bergson's
one-row products by float32 summation order only (measured in a test).
`block_scoring` puts both in Bergson's place.
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


# Documents whose scores are computed in one product against the queries. Every product has this many rows
# (the last block is padded), so its floating-point order is the same for every document.
SCORE_ROWS = 32


class _DrainingWriter:
    """The scorer's writer as Bergson's `score_worker` sees it: its final ``flush()`` first scores the documents
    the scorer still holds."""

    def __init__(self, scorer, writer):
        self._scorer = scorer
        self._writer = writer

    def __getattr__(self, name):
        return getattr(self._writer, name)

    def __call__(self, *args, **kwargs):
        return self._writer(*args, **kwargs)

    def flush(self):
        self._scorer.drain()
        self._writer.flush()


def _scorer_class():
    import torch
    from bergson.score.scorer import Scorer, _materialized

    class BlockScorer(Scorer):
        """Bergson's scorer with the query products taken `SCORE_ROWS` documents at a time (see the module)."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.blocked = (
                self.index_transform is not None and self.score_mode == "individual" and not self.attribute_tokens
            )
            self._pending_rows: list[int] = []
            self._pending_grads: dict[str, list] = {m: [] for m in self.modules}
            self._pending_norms: list = []
            if self.blocked:
                self._target = self.writer
                self.writer = _DrainingWriter(self, self.writer)

        @torch.inference_mode()
        def __call__(self, indices, mod_grads):
            if not self.blocked:
                return super().__call__(indices, mod_grads)
            # Per batch, as Bergson's `score`: R^-1/2 of the batch, then each module's squared norms in module order.
            grads = self.index_transform({m: _materialized(g) for m, g in mod_grads.items()})
            sq_norm = None
            for m in self.modules:
                g = grads[m].to(self.device, self.dtype, non_blocking=True)
                n = g.float().pow(2).sum(dim=1)
                sq_norm = n if sq_norm is None else sq_norm.add_(n)
                self._pending_grads[m].append(g)
            self._pending_norms.append(sq_norm)
            self._pending_rows.extend(int(i) for i in indices)
            if len(self._pending_rows) >= SCORE_ROWS:
                self._score_pending(final=False)

        @torch.inference_mode()
        def drain(self) -> None:
            """Score and write every document still held (the last block, padded)."""
            if self.blocked and self._pending_rows:
                self._score_pending(final=True)

        def _score_pending(self, final: bool) -> None:
            rows = self._pending_rows
            grads = {m: torch.cat(parts) for m, parts in self._pending_grads.items()}
            norms = torch.cat(self._pending_norms)
            done = len(rows) if final else len(rows) - len(rows) % SCORE_ROWS
            for a in range(0, done, SCORE_ROWS):
                b = min(done, a + SCORE_ROWS)
                scores = None
                for m in self.modules:
                    block = grads[m][a:b]
                    if b - a < SCORE_ROWS:
                        block = torch.cat([block, block.new_zeros((SCORE_ROWS - (b - a), block.shape[1]))])
                    part = (block @ self.query_grads_t[m]).float()
                    scores = part if scores is None else scores.add_(part)
                scores = scores[: b - a]
                if self.unit_normalize:  # Bergson's `_reduce`, element by element
                    scores = scores / norms[a:b].sqrt().clamp_min_(1e-12).unsqueeze(1)
                self._target(rows[a:b], scores, query_offset=self.query_offset)
            self._pending_rows = rows[done:]
            self._pending_grads = {m: [g[done:]] if done < len(rows) else [] for m, g in grads.items()}
            self._pending_norms = [norms[done:]] if done < len(rows) else []

    return BlockScorer


@contextlib.contextmanager
def block_scoring() -> Iterator[None]:
    """Bergson's scoring writes through `BlockScoreWriter` and scores through `BlockScorer` inside this block.

    With several ranks (`attribution.ranks`, or one per GPU) Bergson starts
    each rank as a fresh interpreter, which would not see a replacement made
    here; so Bergson's rank entry point is replaced too, by `ranked_score_worker`
    (pickled by name), which installs both in the rank before it scores."""
    from bergson.score import score as bergson_score

    original = bergson_score.Scorer
    original_worker = bergson_score.score_worker
    bergson_score.Scorer = _scorer_class()
    bergson_score.score_worker = ranked_score_worker
    bergson_score._capatlas_score_worker = original_worker
    try:
        with block_writer():
            yield
    finally:
        bergson_score.Scorer = original
        bergson_score.score_worker = original_worker
        del bergson_score._capatlas_score_worker


# Printed by each rank that installs the block writer and scorer (its log line, and what a test looks for).
RANK_MESSAGE = "capatlas: block scoring installed in Bergson rank"


def ranked_score_worker(*args, **kwargs):
    """Bergson's `score_worker` with the block writer and scorer installed in this process (a rank or the job)."""
    import sys

    from bergson.score import score as bergson_score

    original = getattr(bergson_score, "_capatlas_score_worker", None)
    if original is not None:  # the job's own process: already installed by block_scoring
        return original(*args, **kwargs)
    print(f"{RANK_MESSAGE} {args[0] if args else '?'}", file=sys.stderr, flush=True)
    with block_scoring():
        return bergson_score._capatlas_score_worker(*args, **kwargs)


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

"""Bergson's score store written and read a block at a time (capatlas.attribution.score_block)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from capatlas.attribution.score_block import ScoreBlock, _writer_class, block_writer, score_columns
from capatlas.errors import CapatlasError


def _fill(writer, rng, n_docs, n_queries):
    # Batches of documents in a shuffled order, each written in two query slices, as Bergson's scorer may.
    order = rng.permutation(n_docs)
    expected = rng.normal(size=(n_docs, n_queries)).astype(np.float32)
    half = n_queries // 2
    for batch in np.array_split(order, 5):
        writer(batch.tolist(), torch.from_numpy(expected[batch, :half]), query_offset=0)
        writer(batch.tolist(), torch.from_numpy(expected[batch, half:]), query_offset=half)
    writer.flush()
    return expected


def test_block_writer_writes_bergsons_bytes(tmp_path):
    from bergson.score.score_writer import MemmapSequenceScoreWriter

    n_docs, n_queries = 23, 9
    stores = {}
    for name, cls in (("bergson", MemmapSequenceScoreWriter), ("block", _writer_class())):
        writer = cls(tmp_path / name, n_docs, n_queries, distributed=False)
        expected = _fill(writer, np.random.default_rng(0), n_docs, n_queries)
        stores[name] = (tmp_path / name / "scores.bin").read_bytes()
        np.testing.assert_array_equal(ScoreBlock(writer.scores)[0:n_docs], expected)
        np.testing.assert_array_equal(score_columns(writer.scores), expected)
    assert stores["block"] == stores["bergson"]


def test_unwritten_cells_are_refused_and_the_writer_is_restored(tmp_path):
    from bergson.score import score as bergson_score

    original = bergson_score.MemmapSequenceScoreWriter
    with block_writer():
        assert bergson_score.MemmapSequenceScoreWriter is not original
        writer = bergson_score.MemmapSequenceScoreWriter(tmp_path / "s", 4, 3, distributed=False)
    assert bergson_score.MemmapSequenceScoreWriter is original
    writer([0, 1, 2], torch.ones(3, 3))
    writer([3], torch.ones(1, 2))  # document 3's last query never scored
    block = ScoreBlock(writer.scores)
    assert block[0:3].shape == (3, 3)
    with pytest.raises(CapatlasError, match=r"document row 3, query 2 unwritten"):
        block[2:4]

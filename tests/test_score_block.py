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


# --------------------------------------------------------------------------- block scorer


def _scorers(tmp_path, n_docs, n_queries, dims, seed=0):
    """Bergson's scorer and the block scorer on the same random queries and dense R^-1/2, each with a writer."""
    from bergson.score.score import _make_split_hessian
    from bergson.score.scorer import Scorer

    from capatlas.attribution.score_block import _scorer_class

    gen = torch.Generator().manual_seed(seed)
    modules = [f"m{i}" for i in range(len(dims))]
    queries = {m: torch.nn.functional.normalize(torch.randn(n_queries, d, generator=gen), dim=1) for m, d in zip(modules, dims)}
    hessians = {m: torch.randn(d, d, generator=gen) / d**0.5 for m, d in zip(modules, dims)}
    transform = _make_split_hessian(hessians, modules, torch.device("cpu"), torch.float32)
    out = {}
    for name, cls in (("bergson", Scorer), ("block", _scorer_class())):
        writer = _writer_class()(tmp_path / name, n_docs, n_queries, distributed=False)
        out[name] = cls(
            query_grads=queries, modules=modules, writer=writer, device=torch.device("cpu"), dtype=torch.float32,
            unit_normalize=True, score_mode="individual", index_transform=transform,
        )  # fmt: skip
    return modules, out


def _score(scorer, grads, batches):
    for batch in batches:
        scorer(list(batch), {m: g[batch] for m, g in grads.items()})
    scorer.writer.flush()
    return ScoreBlock(scorer.writer.scores)[0 : len(next(iter(grads.values())))].astype(np.float64)


def test_block_scorer_agrees_with_bergsons_scorer(tmp_path):
    """The block scorer's cosines equal Bergson's one-document products up to float32 summation order."""
    from capatlas.attribution.score_block import SCORE_ROWS

    n_docs, n_queries, dims = 2 * SCORE_ROWS + 7, 300, (64, 64, 64)  # two full blocks and a padded one
    modules, scorers = _scorers(tmp_path, n_docs, n_queries, dims)
    gen = torch.Generator().manual_seed(1)
    grads = {m: torch.randn(n_docs, d, generator=gen) for m, d in zip(modules, dims)}
    one_per_batch = [[i] for i in range(n_docs)]
    ours = _score(scorers["block"], grads, one_per_batch)
    theirs = _score(scorers["bergson"], grads, one_per_batch)
    assert np.abs(theirs).max() <= 1 + 1e-6 and theirs.std() > 1e-2
    # Measured: max |difference| 1.5e-7 on cosines up to 0.5 (1.2e-7 with 15 modules of 256 and 2,000 queries),
    # float32 rounding of sums in another order; 1e-6 leaves room
    # for other BLAS kernels. The e2e test against the `bergson score` CLI allows 1e-5.
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)
    # Batches of several documents (attribution.max_batch_size > 1): Bergson applies R^-1/2 per batch, whose
    # float32 products depend on the batch; the blocks agree with Bergson's batched scorer as closely.
    batches = np.array_split(np.arange(n_docs), 9)
    scorers_b = _scorers(tmp_path / "batched", n_docs, n_queries, dims)[1]
    batched = _score(scorers_b["block"], grads, batches)
    np.testing.assert_allclose(batched, _score(scorers_b["bergson"], grads, batches), rtol=0, atol=1e-6)
    np.testing.assert_allclose(batched, ours, rtol=0, atol=1e-6)


def test_block_scorer_scores_do_not_depend_on_neighbours(tmp_path):
    """A document's scores are the same bytes whatever documents share its block and where it sits in it."""
    from capatlas.attribution.score_block import SCORE_ROWS

    n_queries, dims = 200, (64, 64)
    gen = torch.Generator().manual_seed(2)
    pool = {m: torch.randn(3 * SCORE_ROWS, d, generator=gen) for m, d in zip(("m0", "m1"), dims)}
    seen: dict[int, np.ndarray] = {}
    rng = np.random.default_rng(3)
    for trial, n_docs in enumerate((SCORE_ROWS, SCORE_ROWS + 5, 3, 2 * SCORE_ROWS - 1)):
        picked = rng.choice(3 * SCORE_ROWS, size=n_docs, replace=False)
        _, scorers = _scorers(tmp_path / str(trial), n_docs, n_queries, dims)
        scores = _score(scorers["block"], {m: g[picked] for m, g in pool.items()}, [[i] for i in range(n_docs)])
        for row, doc in enumerate(picked):
            if doc in seen:
                np.testing.assert_array_equal(scores[row], seen[doc])
            seen[int(doc)] = scores[row]
    assert len(seen) > SCORE_ROWS


def test_block_scoring_installs_and_restores_both(tmp_path):
    from bergson.score import score as bergson_score

    from capatlas.attribution.score_block import block_scoring

    scorer, writer = bergson_score.Scorer, bergson_score.MemmapSequenceScoreWriter
    with block_scoring():
        assert bergson_score.Scorer is not scorer and bergson_score.MemmapSequenceScoreWriter is not writer
    assert bergson_score.Scorer is scorer and bergson_score.MemmapSequenceScoreWriter is writer

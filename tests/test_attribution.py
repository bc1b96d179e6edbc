"""TrackStar attribution stages (preconditioner, query gradients, shard scores) on a tiny OLMo-3 model.

One session-scoped world: a randomly initialised Olmo3ForCausalLM (hidden
32, 2 layers), a word-level tokenizer, 40 documents in 4 and in 8 shards,
two benchmarks of 4 queries each. Everything runs on the CPU offline.
"""

from __future__ import annotations

import json
import logging
import re
import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from capatlas.command import build_parser, run_stage, set_torch_threads
from capatlas.artifacts import scores as artifact_scores
from capatlas.artifacts.provenance import PROVENANCE_FILE, PROVENANCE_KEY, provenance_sha256
from capatlas.attribution import precondition as attribution_precondition
from capatlas.attribution import query_gradients as attribution_queries
from capatlas.attribution import score_shard as attribution_score
from capatlas.artifacts import doc_bootstrap
from capatlas.attribution.context import (
    AttributionSettings,
    load_query_set,
)
from capatlas.attribution.precondition import fit_preconditioner, sample_documents
from factories import write_word_level_model
from capatlas.attribution.query_gradients import build_query_gradients, build_query_indices
from capatlas.artifacts.binsums import read_bin_sums
from capatlas.attribution.score_shard import FAIL_SHARDS_ENV, injected_failure, score_shard
from capatlas.config import validate_config
from capatlas.errors import CapatlasError
from capatlas.taxonomy import N_BINS
from helpers_attribution import bergson_score_cli
from helpers_corpus import write_config

# Tiny models: a second torch thread only adds synchronisation (and spins on a busy CPU).
pytestmark = pytest.mark.usefixtures("one_torch_thread")

COMMON = (
    "the a of and to in is was for on that with as by at from it river music court market engine prayer "
    "recipe garden planet law vote team train hotel poem code chip fashion health history game bank film"
).split()
BENCHMARKS = ("bench_a", "bench_b")
N_QUERIES = 4  # per benchmark
COMMON_BINS = (3, 17, 200, 575)
ATTRIBUTION = {
    "projection_dim": 4,
    "token_batch_size": 64,
    "max_length": 64,
    "preconditioner_docs": 24,
    "target_downweight_components": 8,
}


def reserved_words(q: int) -> list[str]:
    return [f"w{q}x{i}" for i in range(7)]


def make_config(**attribution) -> dict:
    return validate_config(
        {
            "demo": {"enabled": True},
            "corpus": {"labels": {"topic": {"field": "t"}, "format": {"field": "f"}}},
            "attribution": {**ATTRIBUTION, **attribution},
        }
    )


def build_model(directory: Path) -> Path:
    words = COMMON + [":", "?"] + [w for q in range(len(BENCHMARKS) * N_QUERIES) for w in reserved_words(q)]
    write_word_level_model(
        directory, words, hidden=32, intermediate=64, layers=2, heads=4, max_length=128, sliding_window=64
    )
    return directory


def write_optimizer_state(model_dir: Path, path: Path) -> Path:
    """An AdamW state_dict after two steps on random tokens, as `optimizer.pt`."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(1)
    for _ in range(2):
        ids = torch.randint(4, model.config.vocab_size, (4, 16), generator=generator)
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(optimizer.state_dict(), path)
    return path


def query_texts() -> dict[str, list[tuple[str, str, str]]]:
    """benchmark -> [(item_id, prompt, answer)]; every query has its own words."""
    out: dict[str, list[tuple[str, str, str]]] = {}
    for b, name in enumerate(BENCHMARKS):
        rows = []
        for j in range(N_QUERIES):
            q = b * N_QUERIES + j
            words = reserved_words(q)
            rows.append((f"{name}-{j}", " ".join(words[:4]) + " ?", " ".join(words[4:])))
        out[name] = rows
    return out


def write_queries(directory: Path, tokenizer, rows) -> Path:
    from datasets import Dataset

    input_ids, labels, item_ids = [], [], []
    for item_id, prompt, answer in rows:
        prompt_ids = tokenizer(prompt)["input_ids"]
        ids = tokenizer(prompt + " " + answer)["input_ids"]
        assert ids[: len(prompt_ids)] == prompt_ids
        input_ids.append(ids)
        labels.append([-100] * len(prompt_ids) + ids[len(prompt_ids) :])
        item_ids.append(item_id)
    Dataset.from_dict({"input_ids": input_ids, "labels": labels, "item_id": item_ids}).save_to_disk(str(directory))
    return directory


def make_documents() -> list[dict]:
    """32 documents of common words in 4 bins + one per query whose text is that query's prompt and answer."""
    rng = random.Random(7)
    docs = []
    for i in range(32):
        text = " ".join(rng.choice(COMMON) for _ in range(rng.randint(8, 30)))
        docs.append({"text": text, "bin_id": rng.choice(COMMON_BINS), "planted": None})
    for rows in query_texts().values():
        for item_id, prompt, answer in rows:
            docs.append({"text": prompt + " " + answer, "bin_id": rng.choice(COMMON_BINS), "planted": item_id})
    order = list(range(len(docs)))
    rng.shuffle(order)
    for doc_number, i in enumerate(order):
        docs[i]["doc_id"] = f"doc-{doc_number:03d}"
    return sorted(docs, key=lambda d: d["doc_id"])


def write_shards(directory: Path, docs: list[dict], count: int) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(count):
        part = [d for i, d in enumerate(docs) if i % count == k]
        table = pa.table(
            {
                "doc_id": pa.array([d["doc_id"] for d in part], pa.string()),
                "bin_id": pa.array([d["bin_id"] for d in part], pa.int32()),
                "n_tokens": pa.array([len(d["text"].split()) for d in part], pa.int64()),
                "text": pa.array([d["text"] for d in part], pa.string()),
            }
        )
        path = directory / f"shard-{k:05d}.parquet"
        pq.write_table(table, path)
        paths.append(path)
    return paths


def cli_run(module, argv: list[str]) -> None:
    run_stage(module, argv)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("attribution")
    model = build_model(root / "model")
    tokenizer = AutoTokenizer.from_pretrained(model)
    queries = {name: write_queries(root / "queries" / name, tokenizer, rows) for name, rows in query_texts().items()}
    docs = make_documents()
    shards = {count: write_shards(root / f"shards{count}", docs, count) for count in (4, 8)}
    config = make_config()
    config_path = write_config(root / "config.yaml", config)
    results = root / "results"

    cli_run(
        attribution_precondition,
        [
            "--config",
            str(config_path),
            "--model",
            str(model),
            "--shards",
            *map(str, shards[4]),
            "--queries",
            *map(str, queries.values()),
            "--out",
            str(results / "preconditioner"),
        ],
    )
    cli_run(
        attribution_queries,
        [
            "--config",
            str(config_path),
            "--model",
            str(model),
            "--queries",
            *(f"{name}={path}" for name, path in queries.items()),
            "--preconditioner",
            str(results / "preconditioner"),
            "--out",
            *(f"{name}={results / 'queries' / name}" for name in queries),
        ],
    )
    index_args = [f"{name}={results / 'queries' / name}" for name in BENCHMARKS]
    outputs = {}
    for count, paths in shards.items():
        for k, shard in enumerate(paths):
            out = (
                results / f"scores{count}" / f"shard-{k:05d}.parquet",
                results / f"binsums{count}" / f"shard-{k:05d}.safetensors",
            )
            cli_run(
                attribution_score,
                [
                    "--config",
                    str(config_path),
                    "--model",
                    str(model),
                    "--shard",
                    str(shard),
                    "--preconditioner",
                    str(results / "preconditioner"),
                    "--query-index",
                    *index_args,
                    "--out-scores",
                    str(out[0]),
                    "--out-binsums",
                    str(out[1]),
                ],
            )
            outputs[(count, k)] = out
    return {
        "root": root,
        "model": model,
        "tokenizer": tokenizer,
        "queries": queries,
        "docs": docs,
        "shards": shards,
        "config": config,
        "config_path": config_path,
        "preconditioner": results / "preconditioner",
        "query_indices": {name: results / "queries" / name for name in BENCHMARKS},
        "outputs": outputs,
    }


def bergson_reference(world, shard: Path, benchmark: str, run_dir: Path) -> np.ndarray:
    return bergson_score_cli(
        model=world["model"],
        shard=shard,
        query_index=world["query_indices"][benchmark] / "index",
        hessian=world["preconditioner"] / "hessian",
        attribution=world["config"]["attribution"],
        run_dir=run_dir,
        timeout=300,
    )


@pytest.fixture(scope="module")
def reference(world, tmp_path_factory):
    """Bergson's own scores for shard 0 of the 4-shard split, per benchmark."""
    root = tmp_path_factory.mktemp("bergson_reference")
    shard = world["shards"][4][0]
    return {name: bergson_reference(world, shard, name, root / name) for name in BENCHMARKS}


def read_scores(path: Path) -> pa.Table:
    # The stage's own reader: page checksums verified, as influence reads them.
    return artifact_scores.read_scores(path)


# --------------------------------------------------------------------------- equivalence


def test_scores_equal_bergson_score(world, reference):
    shard = world["shards"][4][0]
    ours = read_scores(world["outputs"][(4, 0)][0])
    assert ours.column("doc_id").to_pylist() == pq.read_table(shard).column("doc_id").to_pylist()
    assert ours.schema.field("bin_id").type == pa.int32()
    for name in BENCHMARKS:
        assert ours.schema.field(name).type == pa.float32()
        ref = reference[name]
        assert ref.shape == (len(ours), N_QUERIES)
        # Cosines: bounded by 1, and not degenerate.
        assert np.abs(ref).max() <= 1 + 1e-6 and ref.std() > 1e-3
        np.testing.assert_allclose(ours.column(name).to_numpy(), ref.mean(axis=1), rtol=0, atol=1e-5)


def test_binsums_reproduce_per_query_means(world, reference):
    shard = pq.read_table(world["shards"][4][0])
    bins = shard.column("bin_id").to_numpy()
    sums = read_bin_sums(world["outputs"][(4, 0)][1])
    for name in BENCHMARKS:
        entry = sums[name]
        ref = reference[name]
        assert entry.sum.shape == entry.sumsq.shape == (N_BINS, N_QUERIES)
        assert entry.sum.dtype == np.float64 and entry.count.shape == (N_BINS,)
        assert entry.item_ids == [f"{name}-{j}" for j in range(N_QUERIES)]
        np.testing.assert_array_equal(entry.count, np.bincount(bins, minlength=N_BINS))
        for b in range(N_BINS):
            members = bins == b
            if not members.any():
                assert not entry.sum[b].any() and not entry.sumsq[b].any()
                continue
            np.testing.assert_allclose(entry.sum[b] / entry.count[b], ref[members].mean(axis=0), atol=1e-5)
            np.testing.assert_allclose(entry.sumsq[b], (ref[members] ** 2).sum(axis=0), atol=1e-5)
    provenance = sums.provenance
    assert provenance["stage"] == "score-shard"
    assert [b["name"] for b in provenance["benchmarks"]] == list(BENCHMARKS)
    assert json.loads(read_scores(world["outputs"][(4, 0)][0]).schema.metadata[PROVENANCE_KEY]) == provenance


def test_binsums_carry_the_document_bootstrap_of_the_scores(world):
    """boot_sum/boot_weight are the Poisson bootstrap of the float32 scores the parquet holds."""
    n_bootstrap, seed = world["config"]["analysis"]["bootstrap"], world["config"]["seed"]
    scores_path, binsums_path = world["outputs"][(4, 0)]
    table = read_scores(scores_path)
    sums = read_bin_sums(binsums_path)
    assert sums.provenance["document_bootstrap"] == {
        "n_bootstrap": n_bootstrap,
        "seed": seed,
        "weights": doc_bootstrap.WEIGHTS_SCHEME,
    }
    values = np.column_stack([table.column(name).to_numpy().astype(np.float64) for name in BENCHMARKS])
    keys = doc_bootstrap.document_keys(table.column("doc_id").to_pylist(), seed)
    weights = doc_bootstrap.poisson_weights(keys, n_bootstrap)  # [docs, B]
    bins = table.column("bin_id").to_numpy()
    for j, name in enumerate(BENCHMARKS):
        entry = sums[name]
        assert entry.boot_sum.shape == entry.boot_weight.shape == (n_bootstrap, N_BINS)
        assert entry.boot_sum.dtype == np.float64 and entry.boot_weight.dtype == np.uint32
        onehot = np.eye(N_BINS)[bins]  # [docs, 576]
        np.testing.assert_array_equal(entry.boot_weight, weights.T @ onehot)
        np.testing.assert_allclose(entry.boot_sum, (weights * values[:, j : j + 1]).T @ onehot, rtol=1e-12)
        assert entry.boot_weight.sum() > 0


def test_document_equal_to_query_scores_highest(world, tmp_path):
    # Each document alone in a bin: the bin sums are then the full per-document, per-query scores.
    docs = [d for d in world["docs"] if d["planted"]] + [d for d in world["docs"] if not d["planted"]][:12]
    docs = [{**d, "bin_id": i} for i, d in enumerate(docs)]
    (shard,) = write_shards(tmp_path / "shards", docs, 1)
    score_shard(
        world["config"],
        model=world["model"],
        shard=shard,
        preconditioner=world["preconditioner"],
        query_indices=world["query_indices"],
        out_scores=tmp_path / "scores.parquet",
        out_binsums=tmp_path / "binsums.safetensors",
    )
    sums = read_bin_sums(tmp_path / "binsums.safetensors")
    for name in BENCHMARKS:
        matrix = sums[name].sum[: len(docs)]  # [docs, queries]
        assert (sums[name].count[: len(docs)] == 1).all()
        for j, item_id in enumerate(sums[name].item_ids):
            planted = next(i for i, d in enumerate(docs) if d["planted"] == item_id)
            assert int(np.argmax(matrix[:, j])) == planted, (item_id, matrix[:, j])
        means = read_scores(tmp_path / "scores.parquet").column(name).to_numpy()
        np.testing.assert_allclose(means, matrix.mean(axis=1), atol=1e-6)


# --------------------------------------------------------------------------- determinism


def _scores_by_doc(world, count: int) -> dict[str, np.ndarray]:
    tables = [read_scores(world["outputs"][(count, k)][0]) for k in range(count)]
    table = pa.concat_tables(tables).sort_by("doc_id")
    return {"doc_id": np.array(table.column("doc_id").to_pylist())} | {
        name: table.column(name).to_numpy() for name in BENCHMARKS
    }


def test_scores_do_not_depend_on_sharding(world):
    four, eight = _scores_by_doc(world, 4), _scores_by_doc(world, 8)
    assert (four["doc_id"] == eight["doc_id"]).all() and len(four["doc_id"]) == len(world["docs"])
    for name in BENCHMARKS:
        scale = np.abs(four[name]).max()
        np.testing.assert_allclose(eight[name], four[name], rtol=1e-6, atol=1e-6 * scale)
        if AttributionSettings.from_config(world["config"]).max_batch_size == 1:
            # One document per pass: its score cannot see its shard-mates at all.
            np.testing.assert_array_equal(eight[name], four[name])
        # Summed over shards, the bin sums are the same whatever the shard count.
        totals = {
            count: sum(read_bin_sums(world["outputs"][(count, k)][1])[name].sum for k in range(count))
            for count in (4, 8)
        }
        np.testing.assert_allclose(totals[8], totals[4], rtol=1e-6, atol=1e-6)
        # So are the document bootstrap's: weights follow the documents, not the shards.
        for key, rtol in (("boot_weight", 0), ("boot_sum", 1e-5)):
            totals = {
                count: sum(getattr(read_bin_sums(world["outputs"][(count, k)][1])[name], key).astype(np.float64)
                           for k in range(count))
                for count in (4, 8)
            }  # fmt: skip
            np.testing.assert_allclose(totals[8], totals[4], rtol=rtol, atol=rtol * np.abs(totals[4]).max())


def test_batched_scoring_agrees_with_one_document_per_pass(world, tmp_path, monkeypatch):
    """attribution.max_batch_size > 1 (several documents per forward/backward, right-padded) scores what one
    document per pass scores, up to float32 order: same documents, bin means in the same order.

    Measured on this world (4 shards, 40 documents, 2 benchmarks x 4 queries, up to 8 documents per pass):
    max |document score difference| 2.2e-8 (bench_a) and 2.0e-8 (bench_b) on scores up to 0.13, (bin, query)
    means within 1.5e-8, Spearman 1.000000 for both. Tolerances: 1e-6 on scores (50x the measured float32
    noise; the demo measured <= 1.8e-8), rank agreement >= 0.99 and 4 of the top 5 (bin, query) means.
    """
    from scipy import stats

    from bergson.score import score as bergson_score

    batch_sizes = []
    allocate = bergson_score.allocate_batches

    def recording(*args, **kwargs):
        batches = allocate(*args, **kwargs)
        batch_sizes.extend(len(b) for b in batches)
        return batches

    monkeypatch.setattr(bergson_score, "allocate_batches", recording)
    config = make_config(max_batch_size=8, token_batch_size=128)
    outputs = {}
    for k, shard in enumerate(world["shards"][4]):
        outputs[k] = (tmp_path / f"shard-{k:05d}.parquet", tmp_path / f"shard-{k:05d}.safetensors")
        score_shard(
            config, model=world["model"], shard=shard, preconditioner=world["preconditioner"],
            query_indices=world["query_indices"], out_scores=outputs[k][0], out_binsums=outputs[k][1],
        )  # fmt: skip
    assert max(batch_sizes) > 1, batch_sizes  # documents did share passes
    one = _scores_by_doc(world, 4)
    table = pa.concat_tables([read_scores(outputs[k][0]) for k in outputs]).sort_by("doc_id")
    assert table.column("doc_id").to_pylist() == one["doc_id"].tolist()
    for name in BENCHMARKS:
        batched = table.column(name).to_numpy().astype(np.float64)
        single = one[name].astype(np.float64)
        diff = np.abs(batched - single).max()
        print(f"{name}: batched vs one per pass max |score diff| {diff:.3g} (max |score| {np.abs(single).max():.3g}), "
              f"document Spearman {stats.spearmanr(batched, single).statistic:.6f}")  # fmt: skip
        assert diff <= 1e-6, diff
        assert stats.spearmanr(batched, single).statistic >= 0.99
        # Per (bin, query) means from the bin sums, summed over the shards.
        means = {}
        for label, paths in (("single", [world["outputs"][(4, k)][1] for k in range(4)]),
                             ("batched", [outputs[k][1] for k in outputs])):  # fmt: skip
            entries = [read_bin_sums(path)[name] for path in paths]
            total, count = sum(e.sum for e in entries), sum(e.count for e in entries)
            means[label] = (total[count > 0] / count[count > 0, None]).ravel()
            # The bin means a benchmark's ranking uses: mean over queries.
            means[label + "_bins"] = (total[count > 0] / count[count > 0, None]).mean(axis=1)
        np.testing.assert_allclose(means["batched"], means["single"], rtol=0, atol=1e-6)
        print(f"{name}: (bin, query) means max |diff| {np.abs(means['batched'] - means['single']).max():.3g}, "
              f"Spearman {stats.spearmanr(means['batched'], means['single']).statistic:.6f}")  # fmt: skip
        assert stats.spearmanr(means["batched"], means["single"]).statistic >= 0.99
        top = {label: set(np.argsort(-means[label])[:5]) for label in ("batched", "single")}
        assert len(top["batched"] & top["single"]) >= 4
        assert (np.argsort(-means["batched_bins"]) == np.argsort(-means["single_bins"])).all()
        # The combined bootstrap's sums follow the scores.
        for k in outputs:
            b, s = read_bin_sums(outputs[k][1])[name], read_bin_sums(world["outputs"][(4, k)][1])[name]
            np.testing.assert_array_equal(b.boot_weight, s.boot_weight)
            np.testing.assert_allclose(b.joint_sum, s.joint_sum, rtol=0, atol=1e-5)


def test_two_ranks_score_what_one_process_scores(world, tmp_path, capfd):
    """attribution.ranks: 2 runs Bergson's data-parallel ranks (on the CPU here, gloo), each with capatlas's block
    writer and scorer installed, and gives one process's scores (to float rounding: the ranks run on fewer
    threads) and the same bin sums."""
    from capatlas.attribution.score_block import RANK_MESSAGE

    config = make_config(ranks=2)
    shard = world["shards"][4][0]
    out_scores, out_binsums = tmp_path / "shard-00000.parquet", tmp_path / "shard-00000.safetensors"
    score_shard(
        config, model=world["model"], shard=shard, preconditioner=world["preconditioner"],
        query_indices=world["query_indices"], out_scores=out_scores, out_binsums=out_binsums,
    )  # fmt: skip
    assert capfd.readouterr().err.count(RANK_MESSAGE) == 2
    one = read_scores(world["outputs"][(4, 0)][0])
    two = read_scores(out_scores)
    assert two.column("doc_id").to_pylist() == one.column("doc_id").to_pylist()
    for name in BENCHMARKS:
        np.testing.assert_allclose(two.column(name).to_numpy(), one.column(name).to_numpy(), rtol=0, atol=1e-6)
        a, b = read_bin_sums(out_binsums)[name], read_bin_sums(world["outputs"][(4, 0)][1])[name]
        np.testing.assert_array_equal(a.count, b.count)
        np.testing.assert_allclose(a.sum, b.sum, rtol=0, atol=1e-5)


def test_rerun_is_bit_identical(world, tmp_path):
    shard = world["shards"][4][1]
    first_scores, first_sums = world["outputs"][(4, 1)]
    score_shard(
        world["config"],
        model=world["model"],
        shard=shard,
        preconditioner=world["preconditioner"],
        query_indices=world["query_indices"],
        out_scores=tmp_path / "again.parquet",
        out_binsums=tmp_path / "again.safetensors",
    )
    assert read_scores(tmp_path / "again.parquet").equals(read_scores(first_scores))
    assert (tmp_path / "again.safetensors").read_bytes() == Path(first_sums).read_bytes()
    # Nothing but the two outputs is left beside them (Bergson's work dir is gone).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.parquet", "again.safetensors"]


def test_query_indices_built_in_one_job_equal_each_built_alone(world, tmp_path, monkeypatch):
    """One job inverts the preconditioner once for every benchmark, and each index has the bytes of a build alone."""
    from bergson import builder

    inversions = []
    original = builder.load_preconditioner
    monkeypatch.setattr(builder, "load_preconditioner", lambda *a, **k: inversions.append(a) or original(*a, **k))
    counting = builder.load_preconditioner
    build_query_indices(
        world["config"],
        model=world["model"],
        query_sets=world["queries"],
        preconditioner=world["preconditioner"],
        out={name: tmp_path / "together" / name for name in world["queries"]},
    )
    assert len(inversions) == 1
    for name, queries in world["queries"].items():
        build_query_gradients(
            world["config"], model=world["model"], queries=queries, preconditioner=world["preconditioner"],
            benchmark=name, out=tmp_path / "alone" / name,
        )  # fmt: skip
        alone = (tmp_path / "alone" / name / "index" / "gradients.bin").read_bytes()
        assert (tmp_path / "together" / name / "index" / "gradients.bin").read_bytes() == alone
    assert len(inversions) == 1 + len(world["queries"])
    assert builder.load_preconditioner is counting  # the job put back what it found


def test_query_set_from_another_tokenizer_is_refused(world, tmp_path):
    """`capatlas queries` records its tokenizer files' sha256 (tests/test_queries.py); query-gradients compares it."""
    from capatlas.fileio import tokenizer_sha256

    forged = tmp_path / "bench_a"
    shutil.copytree(world["queries"]["bench_a"], forged)
    (forged / "queries.json").write_text(json.dumps({"tokenizer_sha256": "0" * 64}))
    with pytest.raises(CapatlasError, match=r"queries\.json: the query set was tokenised with other tokenizer files"):
        build_query_gradients(
            world["config"], model=world["model"], queries=forged, preconditioner=world["preconditioner"],
            benchmark="bench_a", out=tmp_path / "out",
        )  # fmt: skip
    assert not (tmp_path / "out").exists()
    (forged / "queries.json").write_text(json.dumps({"tokenizer_sha256": tokenizer_sha256(world["model"])}))
    build_query_gradients(
        world["config"], model=world["model"], queries=forged, preconditioner=world["preconditioner"],
        benchmark="bench_a", out=tmp_path / "out",
    )  # fmt: skip
    assert (tmp_path / "out" / "index" / "gradients.bin").is_file()


def test_preconditioner_sample_spans_shards_and_ignores_sharding(world):
    by_four = sample_documents(world["shards"][4], 24, 42).column("doc_id").to_pylist()
    by_eight = sample_documents(world["shards"][8], 24, 42).column("doc_id").to_pylist()
    assert by_four == by_eight and len(set(by_four)) == 24
    # Not the first 24 rows of the shards read in order (bergson-notes 4).
    rows_in_order = [d for path in world["shards"][4] for d in pq.read_table(path).column("doc_id").to_pylist()]
    assert set(by_four) != set(rows_in_order[:24])
    assert sample_documents(world["shards"][4], 24, 43).column("doc_id").to_pylist() != by_four
    provenance = json.loads((world["preconditioner"] / PROVENANCE_FILE).read_text())
    assert provenance["sample"]["n_docs"] == 24
    assert pq.read_table(world["preconditioner"] / "sample.parquet").column("doc_id").to_pylist() == by_four


# --------------------------------------------------------------------------- provenance


def test_provenance_records_the_run(world):
    pre = json.loads((world["preconditioner"] / PROVENANCE_FILE).read_text())
    assert pre["stage"] == "preconditioner"
    assert pre["identity"]["attribution"]["projection_dim"] == 4
    assert len(pre["identity"]["model_sha256"]) == 64
    assert pre["optimizer_state"] == {"used": False, "path": None, "sha256": None}
    assert set(pre["query_sets"]) == set(BENCHMARKS)
    assert 0.0 <= pre["mixing"]["lambda"] < 1.0
    for name in BENCHMARKS:
        query = json.loads((world["query_indices"][name] / PROVENANCE_FILE).read_text())
        assert query["preconditioner"]["provenance_sha256"] == provenance_sha256(pre)
        assert query["in_preconditioner"] is True and query["n_queries"] == N_QUERIES
        items = pq.read_table(world["query_indices"][name] / "items.parquet")
        assert items.column("item_id").to_pylist() == [f"{name}-{j}" for j in range(N_QUERIES)]


def test_preconditioner_with_other_projection_is_refused(world, tmp_path):
    other = tmp_path / "preconditioner8"
    fit_preconditioner(
        make_config(projection_dim=8, preconditioner_docs=8),
        model=world["model"],
        shards=world["shards"][4],
        queries=world["queries"],
        out=other,
    )
    out = tmp_path / "out"
    with pytest.raises(CapatlasError) as excinfo:
        score_shard(
            world["config"],
            model=world["model"],
            shard=world["shards"][4][0],
            preconditioner=other,
            query_indices=world["query_indices"],
            out_scores=out / "scores.parquet",
            out_binsums=out / "binsums.safetensors",
        )
    message = str(excinfo.value)
    assert str(other / PROVENANCE_FILE) in message
    assert "attribution.projection_dim is 8 there but 4 in this job" in message
    assert not out.exists()

    # A query index built against another preconditioner is refused too, naming the index.
    with pytest.raises(CapatlasError, match="projection_dim"):
        build_query_gradients(
            world["config"],
            model=world["model"],
            queries=world["queries"]["bench_a"],
            preconditioner=other,
            benchmark="bench_a",
            out=tmp_path / "qa",
        )
    assert not (tmp_path / "qa").exists()


def test_query_index_from_another_preconditioner_is_refused(world, tmp_path):
    forged = tmp_path / "bench_b"
    shutil.copytree(world["query_indices"]["bench_b"], forged)
    provenance = json.loads((forged / PROVENANCE_FILE).read_text())
    provenance["preconditioner"]["provenance_sha256"] = "0" * 64
    (forged / PROVENANCE_FILE).write_text(json.dumps(provenance))
    out = tmp_path / "out"
    with pytest.raises(CapatlasError) as excinfo:
        score_shard(
            world["config"],
            model=world["model"],
            shard=world["shards"][4][0],
            preconditioner=world["preconditioner"],
            query_indices={"bench_a": world["query_indices"]["bench_a"], "bench_b": forged},
            out_scores=out / "scores.parquet",
            out_binsums=out / "binsums.safetensors",
        )
    assert str(forged / PROVENANCE_FILE) in str(excinfo.value)
    assert "rerun `capatlas query-gradients`" in str(excinfo.value)
    assert not out.exists()

    # Passing a benchmark's index under another name is caught as well.
    with pytest.raises(CapatlasError, match="holds the queries of benchmark 'bench_a'"):
        score_shard(
            world["config"],
            model=world["model"],
            shard=world["shards"][4][0],
            preconditioner=world["preconditioner"],
            query_indices={"bench_b": world["query_indices"]["bench_a"]},
            out_scores=out / "scores.parquet",
            out_binsums=out / "binsums.safetensors",
        )


def test_other_model_is_refused(world, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    other = tmp_path / "model"
    shutil.copytree(world["model"], other)
    weights = load_file(other / "model.safetensors")
    name = next(iter(weights))
    weights[name] = weights[name] + 0.01 * torch.ones_like(weights[name])
    save_file(weights, other / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CapatlasError, match="model_sha256 is '[0-9a-f]{64}' there but '[0-9a-f]{64}' in this job"):
        score_shard(
            world["config"],
            model=other,
            shard=world["shards"][4][0],
            preconditioner=world["preconditioner"],
            query_indices=world["query_indices"],
            out_scores=tmp_path / "out" / "scores.parquet",
            out_binsums=tmp_path / "out" / "binsums.safetensors",
        )
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- lambda, optimizer state


def test_lambda_recorded_and_warned_when_one(world, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="capatlas")
    provenance = fit_preconditioner(
        make_config(preconditioner_docs=24, target_downweight_components=1000),
        model=world["model"],
        shards=world["shards"][4],
        queries=world["queries"],
        out=tmp_path / "p1000",
    )
    assert provenance["mixing"]["lambda"] == 1.0
    # 8 queries: per module at most 8 nonzero eigenvalues of 16 components.
    mixing = provenance["mixing"]
    assert mixing["query_nonzero_eigenvalues"] <= 8 * 14 < mixing["components"] == 16 * 14
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "lambda is exactly 1.0" in r.message]
    assert len(warnings) == 1
    saved = json.loads((tmp_path / "p1000" / PROVENANCE_FILE).read_text())
    assert saved["mixing"]["lambda"] == 1.0

    caplog.clear()
    provenance = fit_preconditioner(
        make_config(preconditioner_docs=24, target_downweight_components=4),
        model=world["model"],
        shards=world["shards"][4],
        queries=world["queries"],
        out=tmp_path / "p4",
    )
    assert 0.0 < provenance["mixing"]["lambda"] < 1.0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "lambda" in r.message]


def test_optimizer_state_is_used_and_recorded(world, tmp_path):
    state = write_optimizer_state(world["model"], tmp_path / "ckpt" / "optimizer.pt")
    config = make_config(preconditioner_docs=8, optimizer_state=str(state.parent))
    provenance = fit_preconditioner(
        config, model=world["model"], shards=world["shards"][4], queries=world["queries"], out=tmp_path / "pre"
    )
    assert provenance["optimizer_state"]["used"] is True
    assert provenance["optimizer_state"]["path"] == str(state.parent.resolve())
    assert len(provenance["identity"]["attribution"]["optimizer_state_sha256"]) == 64
    from bergson.gradients import GradientProcessor

    assert GradientProcessor.load(tmp_path / "pre" / "hessian").normalizers  # the Adam normalizer was applied
    # A job without the optimizer state does not match this preconditioner.
    with pytest.raises(CapatlasError, match="optimizer_state_sha256"):
        build_query_gradients(
            make_config(preconditioner_docs=8),
            model=world["model"],
            queries=world["queries"]["bench_a"],
            preconditioner=tmp_path / "pre",
            benchmark="bench_a",
            out=tmp_path / "qa",
        )


# --------------------------------------------------------------------------- input checks


def test_query_without_label_tokens_is_refused(world, tmp_path):
    from datasets import Dataset

    Dataset.from_dict(
        {
            "input_ids": [[5, 6, 7], [5, 6, 7, 8]],
            "labels": [[-100, 6, 7], [5, -100, -100, -100]],
            "item_id": ["ok", "bad"],
        }
    ).save_to_disk(str(tmp_path / "q"))
    with pytest.raises(CapatlasError, match="item 'bad' has no label token after position 0"):
        load_query_set(tmp_path / "q", name="x", max_length=64)
    Dataset.from_dict({"input_ids": [[5, 6, 7]], "labels": [[-100, 9, 7]], "item_id": ["odd"]}).save_to_disk(
        str(tmp_path / "q2")
    )
    with pytest.raises(CapatlasError, match="item 'odd' has a label that differs"):
        load_query_set(tmp_path / "q2", name="x", max_length=64)
    with pytest.raises(CapatlasError, match="more than fit one token batch"):
        load_query_set(world["queries"]["bench_a"], name="bench_a", max_length=4)


def test_shard_with_bad_bin_and_short_documents(world, tmp_path):
    docs = [{"doc_id": "a", "bin_id": 5, "text": "river"}, {"doc_id": "b", "bin_id": 5, "text": "the river music"}]
    (shard,) = write_shards(tmp_path / "shards", docs, 1)
    score_shard(
        world["config"],
        model=world["model"],
        shard=shard,
        preconditioner=world["preconditioner"],
        query_indices=world["query_indices"],
        out_scores=tmp_path / "s.parquet",
        out_binsums=tmp_path / "b.safetensors",
    )
    scores = read_scores(tmp_path / "s.parquet")
    # One token: nothing to predict, so no score and no count.
    assert np.isnan(scores.column("bench_a")[0].as_py()) and np.isfinite(scores.column("bench_a")[1].as_py())
    assert read_bin_sums(tmp_path / "b.safetensors")["bench_a"].count[5] == 1

    bad = [{"doc_id": "c", "bin_id": N_BINS, "text": "the river"}]
    (shard,) = write_shards(tmp_path / "bad", bad, 1)
    with pytest.raises(CapatlasError, match=f"document 'c' has bin_id {N_BINS}"):
        score_shard(
            world["config"],
            model=world["model"],
            shard=shard,
            preconditioner=world["preconditioner"],
            query_indices=world["query_indices"],
            out_scores=tmp_path / "bad.parquet",
            out_binsums=tmp_path / "bad.safetensors",
        )


def test_empty_shard_gives_empty_outputs(world, tmp_path):
    (shard,) = write_shards(tmp_path / "shards", [], 1)
    score_shard(
        world["config"],
        model=world["model"],
        shard=shard,
        preconditioner=world["preconditioner"],
        query_indices=world["query_indices"],
        out_scores=tmp_path / "s.parquet",
        out_binsums=tmp_path / "b.safetensors",
    )
    scores = read_scores(tmp_path / "s.parquet")
    assert scores.num_rows == 0 and scores.column_names == ["doc_id", "bin_id", *BENCHMARKS]
    sums = read_bin_sums(tmp_path / "b.safetensors")
    for name in BENCHMARKS:
        assert sums[name].sum.shape == (N_BINS, N_QUERIES) and not sums[name].count.any()


def test_cli_reports_mismatch_without_traceback(world, tmp_path, monkeypatch, capsys):
    from capatlas import cli

    stages = {name for name, _, _ in cli.STAGES}
    extra = tuple(
        entry
        for entry in (
            ("preconditioner", "capatlas.attribution.precondition", "fit R"),
            ("query-gradients", "capatlas.attribution.query_gradients", "query index"),
            ("score-shard", "capatlas.attribution.score_shard", "score a shard"),
        )
        if entry[0] not in stages
    )
    monkeypatch.setattr(cli, "STAGES", cli.STAGES + extra)
    config_path = write_config(tmp_path / "config.yaml", make_config(projection_dim=8))
    code = cli.main(
        [
            "score-shard",
            "--config",
            str(config_path),
            "--model",
            str(world["model"]),
            "--shard",
            str(world["shards"][4][0]),
            "--preconditioner",
            str(world["preconditioner"]),
            "--query-index",
            *[f"{name}={path}" for name, path in world["query_indices"].items()],
            "--out-scores",
            str(tmp_path / "out" / "s.parquet"),
            "--out-binsums",
            str(tmp_path / "out" / "b.safetensors"),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "capatlas score-shard: error:" in err and "projection_dim is 4 there but 8 in this job" in err
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- fault injection (issue 6)


def test_fault_injection_names_the_shard_and_writes_nothing(world, tmp_path, monkeypatch, capsys):
    from capatlas import cli

    monkeypatch.setenv(FAIL_SHARDS_ENV, " 00003, 1 ")
    args = [
        "score-shard",
        "--config",
        str(world["config_path"]),
        "--model",
        str(world["model"]),
        "--shard",
        str(world["shards"][4][1]),
        "--preconditioner",
        str(world["preconditioner"]),
        "--query-index",
        *[f"{name}={path}" for name, path in world["query_indices"].items()],
        "--out-scores",
        str(tmp_path / "out" / "s.parquet"),
        "--out-binsums",
        str(tmp_path / "out" / "b.safetensors"),
    ]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert f"injected failure: shard shard-00001.parquet is listed in ${FAIL_SHARDS_ENV}" in err
    assert not (tmp_path / "out").exists()

    # Shards not listed are untouched by the switch; a malformed list is an error.
    injected_failure(world["shards"][4][0], {FAIL_SHARDS_ENV: "00003,1"})
    injected_failure(world["shards"][4][1], {FAIL_SHARDS_ENV: ""})
    with pytest.raises(CapatlasError, match=r"lists shard numbers such as 00002,5, not 'shard-1'"):
        injected_failure(world["shards"][4][0], {FAIL_SHARDS_ENV: "shard-1"})
    # The switch is not part of any output: the world's shard 1 was scored without it.
    provenance = read_bin_sums(world["outputs"][(4, 1)][1]).provenance
    assert FAIL_SHARDS_ENV not in json.dumps(provenance)


def test_threads_flag_bounds_torch(world, tmp_path):
    import torch

    before = torch.get_num_threads()
    try:
        args = build_parser(attribution_score).parse_args(
            ["--config", "c", "--model", "m", "--shard", "s", "--preconditioner", "p"]
            + ["--query-index", "a=b", "--out-scores", "o", "--out-binsums", "b", "--threads", "1"]
        )
        set_torch_threads(args.threads)
        assert torch.get_num_threads() == 1
        with pytest.raises(CapatlasError, match="--threads must be 1 or more"):
            set_torch_threads(0)
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------- the DAG at paper scale


def test_paper_scale_plan_has_one_scoring_job_per_shard_on_a_gpu(repo_root, venv_bin, tmp_path):
    from test_dag import job_counts, site_config

    site, _ = site_config(tmp_path)
    result = subprocess.run(
        [
            str(venv_bin / "snakemake"),
            "-n",
            "-p",
            "--configfile",
            str(repo_root / "config" / "olmo3-7b.yaml"),
            str(site),
        ],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    counts = job_counts(output)
    assert counts["preconditioner"] == 1 and counts["query_gradients"] == 1 and counts["score_shard"] == 316
    shell = next(line for line in output.splitlines() if " score-shard " in line)
    models = tmp_path / "models" / "allenai"
    # Documents with the base model, queries with the Instruct model; no optimizer state in HF checkpoints.
    assert f"--model {models / 'Olmo-3-1025-7B'}" in shell and f"--query-model {models / 'Olmo-3-7B-Instruct'}" in shell
    assert "--optimizer-state" not in shell
    assert re.search(r"score_shard:.*?resources:[^\n]*\bgpu=1\b", output, re.S)
    for k in (0, 315):
        assert f"attribution/scores/shard-{k:05d}.parquet" in output


def test_documents_cut_to_max_length_are_counted(world, caplog):
    """Every document that reached max_length is counted (log and provenance), as the queries count theirs."""
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    from capatlas.attribution import score_shard as stage

    shard = world["shards"][4][0]
    texts = pq.read_table(shard, columns=["text"]).column("text").to_pylist()
    tokenizer = AutoTokenizer.from_pretrained(world["model"])
    limit = 12
    expected = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) >= limit for t in texts)
    assert 0 < expected < len(texts)  # the test cuts some documents and not others
    job = SimpleNamespace(
        model=SimpleNamespace(path=str(world["model"])),
        effective_max_length=limit,
        settings=SimpleNamespace(truncation=True),
    )
    with caplog.at_level("INFO", logger=stage.__name__):
        docs = stage._tokenized_shard(job, shard)
    assert docs.n_at_limit == expected and docs.lengths.max() == limit
    assert f"{expected} of {len(texts)} documents of {shard.name}" in caplog.text

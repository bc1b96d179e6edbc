"""Forget sets: planned runs, unit ranking, influence-ranked and matched random sets, retain pools, errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from capatlas import plan
from capatlas.unlearning import forget_sets as fs
from capatlas.cli import main as cli_main
from capatlas.errors import CapatlasError
from capatlas.taxonomy import TOPIC_SLUGS, bin_id, bin_slug
from helpers_unlearning import bin_matrix_from, make_config, synthetic_corpus, write_benchmarks, write_inputs

BENCHES = ("bench_a", "bench_b")


@pytest.fixture
def config(tmp_path):
    return make_config(write_benchmarks(tmp_path / "b", names=BENCHES))


def test_planned_runs_enumerate_targets_slots_conditions_and_seeds(tmp_path):
    entries = write_benchmarks(tmp_path / "b", names=BENCHES)
    config = make_config(
        entries,
        units={"select": "top_k", "top_k": 2},
        forget={"conditions": ["influence", "random", "global_random"], "seeds": [0, 4]},
    )
    runs = plan.planned_runs(config)
    assert len(runs) == 2 * (2 * 2 * 2 + 2)
    assert plan.PlannedRun("bench_b", "top2", "random", 4) in runs
    assert plan.PlannedRun("bench_a", "global", "global_random", 0) in runs
    assert runs[0].path == "bench_a/top1/influence/seed0"
    explicit = make_config(entries, targets=["bench_b"], units={"select": "explicit", "explicit": ["games"]})
    assert {(r.target, r.unit) for r in plan.planned_runs(explicit)} == {("bench_b", "games")}
    assert len(plan.unit_slots(make_config(entries, units={"select": "all"}))) == 24
    with pytest.raises(CapatlasError, match="not topic slugs"):
        plan.planned_runs(make_config(entries, units={"select": "explicit", "explicit": ["gamez"]}))
    with pytest.raises(CapatlasError, match="unlearning.targets"):
        plan.planned_runs(make_config(entries, targets=["nope"]))


def test_unit_scores_are_mean_or_max_bin_z_or_the_contrast():
    rows = []
    for b, (za, zb) in {bin_id(0, 0): (3.0, 1.0), bin_id(0, 1): (1.0, 0.0), bin_id(1, 0): (2.5, 3.0),
                        bin_id(2, 5): (np.nan, np.nan)}.items():  # fmt: skip
        rows += [{"benchmark": "bench_a", "bin_id": b, "zscore": za}, {"benchmark": "bench_b", "bin_id": b, "zscore": zb}]
    matrix = pd.DataFrame(rows)
    z = fs.unit_scores(matrix, "topic", "bench_a", "zscore")
    assert list(z.index) == [TOPIC_SLUGS[1], TOPIC_SLUGS[0]]  # topic 2 has only an empty bin
    assert z[TOPIC_SLUGS[0]] == pytest.approx(2.0)
    contrast = fs.unit_scores(matrix, "topic", "bench_a", "contrast")
    assert list(contrast.index) == [TOPIC_SLUGS[0], TOPIC_SLUGS[1]]
    assert contrast[TOPIC_SLUGS[0]] == pytest.approx(((3 - 1) + (1 - 0)) / 2)
    bins = fs.unit_scores(matrix, "bin", "bench_b", "zscore")
    assert bins.index[0] == bin_slug(bin_id(1, 0)) and bins.iloc[0] == 3.0
    # By its strongest bin, topic 0 (one bin at 3.0) outranks topic 1 (2.5), against the mean's order.
    peak = fs.unit_scores(matrix, "topic", "bench_a", "zscore", aggregate="max")
    assert list(peak.index) == [TOPIC_SLUGS[0], TOPIC_SLUGS[1]] and peak.iloc[0] == 3.0
    assert fs.unit_scores(matrix, "topic", "bench_a", "contrast", aggregate="max")[TOPIC_SLUGS[0]] == 2.0
    with pytest.raises(CapatlasError, match="aggregate"):
        fs.unit_scores(matrix, "topic", "bench_a", "zscore", aggregate="median")


def test_influence_and_random_sets(config):
    docs = synthetic_corpus(BENCHES, docs_per_bin=6)
    matrix = bin_matrix_from(docs, BENCHES)
    sets, resolved = fs.build_forget_sets(config, docs, matrix)
    top_topic = fs.unit_scores(matrix, "topic", "bench_a", "zscore").index[0]
    assert resolved["bench_a"] == {"top1": top_topic}
    by_key = {(s.run.target, s.run.condition, s.run.seed): s for s in sets}
    influence = by_key[("bench_a", "influence", 0)]
    unit_docs = docs[[TOPIC_SLUGS[t] == top_topic for t in docs["topic_id"]]]
    expected = unit_docs.sort_values("bench_a", ascending=False).head(3)["doc_id"]
    assert set(influence.docs["doc_id"]) == set(expected)
    assert influence.docs["score"].min() >= unit_docs["bench_a"].nlargest(3).min()
    assert set(by_key[("bench_a", "influence", 1)].docs["doc_id"]) == set(expected)  # the same in every seed
    for seed in (0, 1):
        random = by_key[("bench_a", "random", seed)]
        assert len(random.docs) == 3 and random.unit == top_topic
        assert set(random.docs["doc_id"]).isdisjoint(expected)
        assert set(random.docs["doc_id"]) <= set(unit_docs["doc_id"])
        assert abs(random.token_mismatch) <= 0.1
        assert random.reference_tokens == influence.docs["n_tokens"].sum()
    assert set(by_key[("bench_a", "random", 0)].docs["doc_id"]) != set(by_key[("bench_a", "random", 1)].docs["doc_id"])
    again, _ = fs.build_forget_sets(config, docs, matrix)
    assert all(a.docs.equals(b.docs) for a, b in zip(sets, again))


def test_matched_random_matches_count_and_tokens():
    rng = np.random.default_rng(0)
    reference = pd.DataFrame({"doc_id": [f"r{k}" for k in range(20)], "n_tokens": rng.integers(400, 900, 20)})
    candidates = pd.DataFrame({"doc_id": [f"c{k}" for k in range(500)], "n_tokens": rng.integers(50, 1500, 500)})
    picked = fs.matched_random(reference, candidates, np.random.default_rng(1), match_pool=5, token_tolerance=0.01)
    assert len(picked) == 20 and picked["doc_id"].is_unique
    total, target = picked["n_tokens"].sum(), reference["n_tokens"].sum()
    assert abs(total - target) <= 0.01 * target


def test_global_controls(tmp_path):
    config = make_config(
        write_benchmarks(tmp_path / "b", names=BENCHES),
        forget={"conditions": ["global_influence", "global_random"], "n_docs": 4},
    )
    docs = synthetic_corpus(BENCHES, docs_per_bin=4)
    sets, _ = fs.build_forget_sets(config, docs, bin_matrix_from(docs, BENCHES))
    top = {s.run.seed: s for s in sets if s.run.target == "bench_b" and s.run.condition == "global_influence"}
    assert set(top[0].docs["doc_id"]) == set(docs.nlargest(4, "bench_b")["doc_id"])
    rand = [s for s in sets if s.run.target == "bench_b" and s.run.condition == "global_random"]
    assert all(s.unit == "global" and set(s.docs["doc_id"]).isdisjoint(top[0].docs["doc_id"]) for s in rand)


def test_too_small_or_empty_units_name_the_run(tmp_path):
    entries = write_benchmarks(tmp_path / "b", names=BENCHES)
    docs = synthetic_corpus(BENCHES, docs_per_bin=2, topics=(0, 1), formats=(0,))
    matrix = bin_matrix_from(docs, BENCHES)
    empty = make_config(entries, units={"select": "explicit", "explicit": ["games"]})
    with pytest.raises(CapatlasError, match=r"bench_a/games/influence/seed0: topic 'games' has no documents, needs 6"):
        fs.build_forget_sets(empty, docs, matrix)
    small = make_config(entries, forget={"n_docs": 3})
    with pytest.raises(CapatlasError, match=r"bench_a/top1/influence/seed0: .* has 2 documents, needs 6"):
        fs.build_forget_sets(small, docs, matrix)
    no_random = make_config(entries, forget={"n_docs": 2})
    with pytest.raises(CapatlasError, match=r"bench_a/top1/random/seed0: .* has 2 documents, needs 4"):
        fs.build_forget_sets(no_random, docs, matrix)
    # The paper's select: all on a corpus with two topics: every missing topic in one message, and
    # the topics there are to choose from.
    every = make_config(entries, units={"select": "all"}, forget={"n_docs": 1})
    with pytest.raises(CapatlasError) as info:
        fs.build_forget_sets(every, docs, matrix)
    message = str(info.value)
    assert message.startswith("22 topic(s) to unlearn have too few documents")
    assert "bench_a/games/influence/seed0: topic 'games' has no documents, needs 2" in message
    assert "topics with at least 2 documents: adult_content, art_and_design;" in message
    with pytest.raises(CapatlasError, match="top_k"):
        fs.resolve_units(make_config(entries), None, "bench_a")


def test_retain_pool_draws_per_unit_and_round(tmp_path):
    config = make_config(
        write_benchmarks(tmp_path / "b", names=BENCHES),
        retain={"docs_per_unit": 4, "resample_every": 2},
        train={"max_steps": 5},
    )
    docs = synthetic_corpus(BENCHES, docs_per_bin=3)
    pool = fs.build_retain_pool(config, docs, seed=0)
    assert sorted(pool["round"].unique()) == [0, 1, 2]
    assert (pool.groupby(["round", "unit"]).size() == 4).all()
    assert not pool.groupby("round")["doc_id"].apply(frozenset).duplicated().all()
    assert pool.equals(fs.build_retain_pool(config, docs, seed=0))
    assert not pool.equals(fs.build_retain_pool(config, docs, seed=1))


def test_cli_writes_sets_with_text_and_metadata(tmp_path, config):
    import yaml

    docs = synthetic_corpus(BENCHES, docs_per_bin=6)
    paths = write_inputs(tmp_path / "in", docs, BENCHES)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    out = tmp_path / "unlearning"
    args = ["forget-sets", "--config", str(config_path), "--manifest", str(paths["manifest"]),
            "--scores", *map(str, paths["scores"]), "--shards", *map(str, paths["shards"]),
            "--bin-matrix", str(paths["bin_matrix"]), "--out", str(out)]  # fmt: skip
    assert cli_main(args) == 0
    for run in plan.planned_runs(config):
        frame, meta = fs.read_forget_set(out / run.path / "forget_set.parquet")
        assert len(frame) == 3 and meta["condition"] == run.condition and meta["seed"] == run.seed
        texts = dict(zip(docs["doc_id"], docs["text"]))
        assert all(texts[d] == t for d, t in zip(frame["doc_id"], frame["text"]))
    seed, retain = fs.read_retain_pool(out / "retain" / "seed1.parquet", job_name="test")
    assert seed == 1 and {"doc_id", "unit", "round", "text"} <= set(retain.columns)
    summary = json.loads((out / "forget_sets.json").read_text())
    assert summary["units"]["bench_a"]["top1"] in TOPIC_SLUGS
    # A shard left out: documents without scores are named.
    args_missing = [a for a in args if a != str(paths["scores"][1])]
    assert cli_main(args_missing) == 2


@pytest.mark.parametrize("fault", ["copied over another shard", "duplicate shard", "flipped bit"])
def test_forget_sets_refuse_swapped_or_corrupted_scores(tmp_path, fault):
    """The forget sets read the same verified scores influence does: identity from provenance, page checksums."""
    docs = synthetic_corpus(BENCHES, docs_per_bin=6)
    paths = write_inputs(tmp_path / "in", docs, BENCHES)
    scores = paths["scores"]
    if fault == "copied over another shard":
        shutil.copyfile(scores[0], scores[1])
        expected = "holds the scores of shard-00000"
    elif fault == "duplicate shard":
        scores = [scores[0], *scores]
        expected = "scores the same shard file"
    else:
        data = bytearray(scores[1].read_bytes())
        # Inside the data of a column forget-sets reads (a benchmark's scores).
        chunk = pq.ParquetFile(scores[1]).metadata.row_group(0).column(2)
        data[chunk.data_page_offset + chunk.total_compressed_size // 2] ^= 0x04
        scores[1].write_bytes(bytes(data))
        expected = "shard-00001.parquet"
    with pytest.raises(CapatlasError, match=expected):
        fs.read_scored_docs(paths["manifest"], scores, BENCHES)


def test_count_matched_random_ignores_length(tmp_path):
    config = make_config(write_benchmarks(tmp_path / "b", names=BENCHES), forget={"match_tokens": False})
    docs = synthetic_corpus(BENCHES, docs_per_bin=6)
    sets, _ = fs.build_forget_sets(config, docs, bin_matrix_from(docs, BENCHES))
    influence = {s.run.target: s for s in sets if s.run.condition == "influence"}
    for s in (s for s in sets if s.run.condition == "random"):
        assert len(s.docs) == 3 and set(s.docs["doc_id"]).isdisjoint(influence[s.run.target].docs["doc_id"])
        assert s.reference_tokens == influence[s.run.target].docs["n_tokens"].sum()

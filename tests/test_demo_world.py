"""The synthetic demo world: coverage, labels, planted structure, schemas, determinism, atomicity."""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import yaml
import zstandard

from capatlas.demo import text as demo_text
from capatlas.demo import world as demo_world
from capatlas import taxonomy
from capatlas.cli import main as cli_main
from capatlas.config import load_config

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG = REPO_ROOT / "config" / "config.yaml"

# MMLU subject groups (reference/benchmarks.md; STEM as in lm-evaluation-harness).
MMLU_SOCIAL_SCIENCES = {
    "econometrics", "high_school_geography", "high_school_government_and_politics",
    "high_school_macroeconomics", "high_school_microeconomics", "high_school_psychology",
    "human_sexuality", "professional_psychology", "public_relations", "security_studies",
    "sociology", "us_foreign_policy",
}
MMLU_STEM = {
    "abstract_algebra", "anatomy", "astronomy", "college_biology", "college_chemistry",
    "college_computer_science", "college_mathematics", "college_physics", "computer_security",
    "conceptual_physics", "electrical_engineering", "elementary_mathematics", "high_school_biology",
    "high_school_chemistry", "high_school_computer_science", "high_school_mathematics",
    "high_school_physics", "high_school_statistics", "machine_learning",
}

SMALL = {
    "seed": 3,
    "demo": {
        "n_files": 3,
        "docs_per_bin": 3,
        "items_per_benchmark": 12,
        "planted_bins_per_benchmark": 4,
        "planted_docs_per_bin": 4,
        "small_bin_fraction": 0.05,
        "duplicate_fraction": 0.02,
        "short_fraction": 0.02,
    },
}


def small_config(**demo_overrides) -> dict:
    overrides = {**SMALL, "demo": {**SMALL["demo"], **demo_overrides}}
    return load_config(CONFIG, overrides)


def read_records(world: Path) -> dict[str, list[dict]]:
    records = {}
    for path in sorted((world / "corpus").glob("*.jsonl.zst")):
        payload = zstandard.ZstdDecompressor().decompress(path.read_bytes()).decode()
        records[path.name] = [json.loads(line) for line in payload.splitlines()]
    return records


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def bin_of(record: dict) -> int:
    labels = record["metadata"]["weborganizer"]
    return taxonomy.bin_id(taxonomy.resolve_topic(labels["topic"]), taxonomy.resolve_format(labels["format"]))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world") / "world"
    config = small_config()
    truth = demo_world.build_world(config, out)
    return out, config, truth


@pytest.fixture(scope="module")
def records(world):
    return read_records(world[0])


def all_records(records):
    return [r for rows in records.values() for r in rows]


def test_layout_and_every_bin_covered(world, records):
    out, config, truth = world
    assert sorted(records) == [f"part-{i:04d}.jsonl.zst" for i in range(config["demo"]["n_files"])]
    rows = all_records(records)
    assert len({r["id"] for r in rows}) == len(rows) == truth["corpus"]["docs"]
    per_bin = Counter(bin_of(r) for r in rows)
    assert len(per_bin) == taxonomy.N_BINS
    assert [per_bin[b] for b in range(taxonomy.N_BINS)] == truth["corpus"]["docs_per_bin"]
    for r in rows:
        assert r["source"] == "demo" and r["text"] and r["metadata"]["url"].startswith("https://")
    for name in ("ground_truth.json", "world.json", "benchmarks/mmlu/dev.jsonl"):
        assert (out / name).is_file()


def test_labels_use_every_spelling(records):
    spellings = Counter()
    for r in all_records(records):
        for facet, value in r["metadata"]["weborganizer"].items():
            if isinstance(value, int):
                spellings["id"] += 1
            elif value in (taxonomy.TOPIC_SLUGS if facet == "topic" else taxonomy.FORMAT_SLUGS):
                spellings["slug"] += 1
            else:
                spellings["name"] += 1
    assert set(spellings) == {"id", "slug", "name"}


def test_bins_are_spread_over_files(records):
    # Docs are assigned by id hash, so a reader cannot assume contiguous bins.
    files_per_bin = defaultdict(set)
    for name, rows in records.items():
        for r in rows:
            files_per_bin[bin_of(r)].add(name)
    assert sum(len(files) > 1 for files in files_per_bin.values()) > taxonomy.N_BINS // 2
    for rows in records.values():
        bins = [bin_of(r) for r in rows]
        assert bins != sorted(bins)


def test_small_bins_duplicates_and_short_docs(world, records):
    _, config, truth = world
    counts = truth["corpus"]
    quota = config["manifest"]["docs_per_bin"]
    assert counts["small_bins"] and counts["duplicates"] > 0 and counts["shorts"] > 0
    for b in counts["small_bins"]:
        assert counts["docs_per_bin"][b] < min(quota, config["demo"]["docs_per_bin"])
    rows = all_records(records)
    by_text = defaultdict(list)
    for r in rows:
        by_text[r["text"]].append(r)
    copies = [group for group in by_text.values() if len(group) > 1]
    assert sum(len(g) - 1 for g in copies) == counts["duplicates"]
    for group in copies:
        assert len({bin_of(r) for r in group}) == 1  # same labels, different ids
    # Short docs sit far below the demo's min_tokens (16) with any tokenizer.
    shorts = [r for r in rows if len(r["text"].split()) <= 6]
    assert len(shorts) == counts["shorts"]
    assert counts["unique_texts"] == len(by_text)
    # The min-token filter and dedup never empty a bin.
    long_texts = defaultdict(set)
    for r in rows:
        if len(r["text"].split()) > 6:
            long_texts[bin_of(r)].add(r["text"])
    assert len(long_texts) == taxonomy.N_BINS


def test_normal_docs_are_sixty_to_about_a_hundred_fifty_words(world, records):
    truth = world[2]
    planted = {i for b in truth["benchmarks"].values() for i in b["planted_doc_ids"]}
    words = [len(r["text"].split()) for r in all_records(records) if r["id"] not in planted]
    normal = [w for w in words if w > 6]
    assert min(normal) >= 40 and sorted(normal)[int(0.95 * len(normal))] <= 160


def _markers(entry: dict) -> list[str]:
    """Strings that only a planted sentence of this benchmark can contain."""
    if entry["name"] in ("mmlu_social_sciences", "mmlu_stem"):
        return [f["entity"] for f in entry["facts"]]
    if entry["name"] == "socialiqa":
        return [f["action"] for f in entry["facts"]]
    return [f["answer"] for f in entry["facts"]]


def test_facts_appear_only_in_planted_bins(world, records):
    _, config, truth = world
    rows = all_records(records)
    benchmarks = truth["benchmarks"]
    assert set(benchmarks) == {"socialiqa", "mmlu_social_sciences", "arc_challenge", "mmlu_stem"}
    planted_bins = {}
    for name, entry in benchmarks.items():
        bins = [p["bin_id"] for p in entry["planted_bins"]]
        assert len(bins) == config["demo"]["planted_bins_per_benchmark"]
        for p in entry["planted_bins"]:
            assert taxonomy.bin_slug(p["bin_id"]) == f"{p['topic']}__{p['format']}"
        planted_bins.update({b: name for b in bins})
    assert len(planted_bins) == 4 * config["demo"]["planted_bins_per_benchmark"]  # disjoint

    for r in rows:
        owner = planted_bins.get(bin_of(r))
        for name, entry in benchmarks.items():
            hits = sum(r["text"].count(m) for m in _markers(entry))
            if name == owner:
                assert hits >= demo_world.SENTENCES_PER_PLANTED_DOC // 2, (name, r["text"])
            else:
                assert hits == 0, (name, r["id"], r["text"])
    for name, entry in benchmarks.items():
        docs = [r for r in rows if r["id"] in set(entry["planted_doc_ids"])]
        assert len(docs) == config["demo"]["planted_docs_per_bin"] * len(entry["planted_bins"])
        assert {bin_of(r) for r in docs} == {p["bin_id"] for p in entry["planted_bins"]}
        # Each fact recurs across documents, so a tiny model can learn it.
        text = "\n".join(r["text"] for r in docs)
        for marker in _markers(entry):
            assert text.count(marker) >= 3, (name, marker)


def test_planted_bins_are_thematic(world):
    truth = world[2]
    spec = {b.name: b for b in demo_world.DEMO_BENCHMARKS}
    for name, entry in truth["benchmarks"].items():
        for p in entry["planted_bins"]:
            assert p["topic"] in spec[name].topics and p["format"] in spec[name].formats


def test_answer_words_never_in_filler_vocabulary():
    assert not demo_text.answer_words() & demo_text.filler_words()


def test_distractors_are_decoys_no_document_states(world, records):
    # An item must be answerable from its benchmark's planted material as a
    # whole: distractors are never another item's answer, and never in the corpus.
    out, _, truth = world
    corpus = "\n".join(r["text"] for r in all_records(records))
    assert not demo_text.decoy_words() & (demo_text.filler_words() | demo_text.answer_words())
    siqa = read_jsonl(out / "benchmarks/social_i_qa/validation.jsonl")
    mmlu = read_jsonl(out / "benchmarks/mmlu/test.jsonl")
    arc = read_jsonl(out / "benchmarks/ai2_arc/ARC-Challenge/test.jsonl")
    wrong = {
        "socialiqa": [row["answer" + k] for row in siqa for k in "ABC" if k != "ABC"[int(row["label"]) - 1]],
        "arc_challenge": [
            t for row in arc for t, lab in zip(row["choices"]["text"], row["choices"]["label"]) if lab != row["answerKey"]
        ],
        "mmlu": [c for row in mmlu for i, c in enumerate(row["choices"]) if i != row["answer"]],
    }
    decoys = {name: set(entry["decoys"]) for name, entry in truth["benchmarks"].items()}
    assert set(wrong["socialiqa"]) <= decoys["socialiqa"]
    assert set(wrong["arc_challenge"]) <= decoys["arc_challenge"]
    assert set(wrong["mmlu"]) <= decoys["mmlu_social_sciences"] | decoys["mmlu_stem"]
    answers = {f["answer"] for entry in truth["benchmarks"].values() for f in entry["facts"]}
    for choice in {c for values in wrong.values() for c in values}:
        assert choice not in answers
        assert choice.split()[-1] not in corpus, choice


def test_items_follow_the_real_schemas(world):
    out, config, truth = world
    n_items = config["demo"]["items_per_benchmark"]
    facts = {name: entry["facts"] for name, entry in truth["benchmarks"].items()}

    siqa = read_jsonl(out / "benchmarks/social_i_qa/validation.jsonl")
    assert len(siqa) == n_items
    reactions = {f["action"]: f["answer"] for f in facts["socialiqa"]}
    for row in siqa:
        assert list(row) == ["context", "question", "answerA", "answerB", "answerC", "label"]
        assert row["label"] in {"1", "2", "3"}
        answer = row["answer" + "ABC"[int(row["label"]) - 1]]
        action = next(a for a in reactions if a in row["context"])
        assert answer == reactions[action]
        # New names: the pattern must generalise beyond the people it was stated for.
        assert not any(name in row["context"] for name in demo_text.SOCIAL_DOC_NAMES)
    assert {row["label"] for row in siqa} == {"1", "2", "3"}

    mmlu = read_jsonl(out / "benchmarks/mmlu/test.jsonl")
    assert len(mmlu) == 2 * n_items
    subjects = {row["subject"] for row in mmlu}
    assert subjects & MMLU_SOCIAL_SCIENCES and subjects & MMLU_STEM
    assert subjects <= MMLU_SOCIAL_SCIENCES | MMLU_STEM
    knowledge = {f["entity"]: f["answer"] for name in ("mmlu_social_sciences", "mmlu_stem") for f in facts[name]}
    for row in mmlu:
        assert list(row) == ["question", "subject", "choices", "answer"]
        assert isinstance(row["answer"], int) and 0 <= row["answer"] <= 3 and len(row["choices"]) == 4
        entity = next(e for e in knowledge if e in row["question"])
        assert row["choices"][row["answer"]] == knowledge[entity]
        assert len(set(row["choices"])) == 4
    assert {row["answer"] for row in mmlu} == {0, 1, 2, 3}
    for name in ("mmlu_social_sciences", "mmlu_stem"):
        assert set(truth["benchmarks"][name]["subjects"]) == {
            row["subject"] for row in mmlu if row["subject"] in truth["benchmarks"][name]["subjects"]
        }
    dev = read_jsonl(out / "benchmarks/mmlu/dev.jsonl")
    assert Counter(row["subject"] for row in dev) == {s: demo_world.MMLU_DEV_PER_SUBJECT for s in subjects}

    arc = read_jsonl(out / "benchmarks/ai2_arc/ARC-Challenge/test.jsonl")
    assert len(arc) == n_items and len({row["id"] for row in arc}) == n_items
    outcomes = {f["material"]: f["answer"] for f in facts["arc_challenge"]}
    keys = set()
    for row in arc:
        assert list(row) == ["id", "question", "choices", "answerKey"]
        assert list(row["choices"]) == ["text", "label"]
        labels = row["choices"]["label"]
        assert labels in (["A", "B", "C", "D"], ["1", "2", "3", "4"])
        material = next(m for m in outcomes if m in row["question"])
        assert row["choices"]["text"][labels.index(row["answerKey"])] == outcomes[material]
        keys.add(row["answerKey"])
    assert keys & {"1", "2", "3", "4"} and keys & {"A", "B", "C", "D"}


def test_ground_truth_describes_each_benchmark(world):
    truth = world[2]
    cells = {(e["domain"], e["capability"]) for e in truth["benchmarks"].values()}
    assert cells == {("social", "reasoning"), ("social", "knowledge"), ("stem", "reasoning"), ("stem", "knowledge")}
    for entry in truth["benchmarks"].values():
        assert entry["n_items"] == SMALL["demo"]["items_per_benchmark"]
        assert entry["facts"] and entry["fact_kind"] in ("pattern", "fact")


def test_default_world_is_byte_identical_and_fast(tmp_path):
    config = load_config(CONFIG)
    started = time.perf_counter()
    demo_world.build_world(config, tmp_path / "a")
    assert time.perf_counter() - started < 10
    demo_world.build_world(config, tmp_path / "b")
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) == config["demo"]["n_files"] + 6
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_seed_changes_the_world(tmp_path):
    a = demo_world.build_world(small_config(), tmp_path / "a")
    b = demo_world.build_world(load_config(CONFIG, {**SMALL, "seed": 4}), tmp_path / "b")
    assert a["benchmarks"]["mmlu_stem"]["facts"] != b["benchmarks"]["mmlu_stem"]["facts"]


def test_failure_mid_write_leaves_no_partial_output(tmp_path, monkeypatch):
    out = tmp_path / "world"

    def broken(path, rows):
        raise OSError("disk full")

    monkeypatch.setattr(demo_world, "_write_jsonl", broken)
    with pytest.raises(OSError, match="disk full"):
        demo_world.build_world(small_config(), out)
    assert list(tmp_path.iterdir()) == []


def test_failure_keeps_the_previous_world(tmp_path, monkeypatch):
    out = tmp_path / "world"
    demo_world.build_world(small_config(), out)
    before = (out / "ground_truth.json").read_bytes()
    monkeypatch.setattr(demo_world, "_write_json", lambda path, obj: (_ for _ in ()).throw(OSError("killed")))
    with pytest.raises(OSError):
        demo_world.build_world(small_config(n_files=2), out)
    assert (out / "ground_truth.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["world"]


def test_cli_writes_the_world(tmp_path):
    raw = yaml.safe_load(CONFIG.read_text())
    raw["demo"] = {**raw.get("demo", {}), **SMALL["demo"]}
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    assert cli_main(["demo-world", "--config", str(config_path), "--out", str(tmp_path / "w")]) == 0
    assert (tmp_path / "w" / "ground_truth.json").is_file()
    assert cli_main(["demo-world", "--config", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()

"""Benchmark loaders, validation, subsampling and prompt formats.

Inputs are small files in the real HF schemas (allenai/social_i_qa,
cais/mmlu, allenai/ai2_arc) and layouts (jsonl, parquet, the hub's
data/<split>-00000-of-00001.parquet, save_to_disk); expected prompts are
spelled out from reference/benchmarks.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from capatlas.benchmarks import items as bm
from capatlas.errors import CapatlasError

SIQA_ROWS = [
    {
        "context": "Tracy didn't go home that evening and resisted Riley's attacks.",
        "question": "What does Tracy need to do before this?",
        "answerA": "make a new plan",
        "answerB": "Go home and see Riley",
        "answerC": "Find somewhere to go",
        "label": "3",
    },
    {
        "context": "Sydney walked past a homeless woman asking for change.",
        "question": "How would you describe Sydney?",
        "answerA": "sympathetic",
        "answerB": "like a person who was unable to help",
        "answerC": "incredulous",
        "label": "1",
    },
    {
        "context": "Sasha protected the patients' rights.",
        "question": "What will patients want to do next?",
        "answerA": "write a letter",
        "answerB": "get petitions signed",
        "answerC": "live longer",
        "label": "2",
    },
]

ARC_ROWS = [
    {
        "id": "Mercury_7175875",
        "question": "An astronomer observes that a planet rotates faster after a meteorite impact. "
        "Which is the most likely effect of this increase in rotation?",
        "choices": {
            "text": ["Planetary density will decrease.", "Planetary years will become longer.",
                     "Planetary days will become shorter.", "Planetary gravity will become stronger."],
            "label": ["A", "B", "C", "D"],
        },
        "answerKey": "C",
    },
    {
        "id": "NYSEDREGENTS_2015_4_8",
        "question": "Which object is a producer?",
        "choices": {"text": ["rock", "grass", "snail", "hawk"], "label": ["1", "2", "3", "4"]},
        "answerKey": "2",
    },
    {
        "id": "Mercury_SC_401169",
        "question": "Which tool is best to measure the mass of a rock?",
        "choices": {"text": ["ruler", "balance", "thermometer"], "label": ["A", "B", "C"]},
        "answerKey": "B",
    },
]  # fmt: skip

MMLU_SUBJECT_SAMPLE = ["abstract_algebra", "anatomy", "econometrics", "sociology", "philosophy", "astronomy"]


def mmlu_rows(per_subject: int = 3, *, letters: bool = False, tag: str = "") -> list[dict]:
    rows = []
    for subject in MMLU_SUBJECT_SAMPLE:
        for k in range(per_subject):
            answer = k % 4
            rows.append(
                {
                    "question": f"{subject} {tag}question {k}?",
                    "subject": subject,
                    "choices": [f"{subject} option {j}" for j in range(4)],
                    "answer": "ABCD"[answer] if letters else answer,
                }
            )
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def cfg(name: str, loader: str, source, **extra) -> dict:
    base = {
        "name": name,
        "domain": "social",
        "capability": "reasoning",
        "loader": loader,
        "source": str(source),
        "config_name": None,
        "split": "test",
        "subjects": None,
        "prompt_format": "olmes_rc",
        "fewshot": 0,
        "limit": None,
        "fields": {},
    }
    base.update(extra)
    return base


# ---------------------------------------------------------------------------
# MMLU subjects


def test_mmlu_groups_match_the_reference():
    assert len(bm.MMLU_SUBJECTS) == len(set(bm.MMLU_SUBJECTS)) == 57
    assert len(bm.MMLU_GROUPS["social_sciences"]) == 12
    assert len(bm.MMLU_GROUPS["stem"]) == 19
    assert len(bm.MMLU_GROUPS["stem_hendrycks"]) == 18
    assert set(bm.MMLU_GROUPS["stem"]) - set(bm.MMLU_GROUPS["stem_hendrycks"]) == {"anatomy"}
    assert "anatomy" not in bm.MMLU_GROUPS["social_sciences"]
    for group in bm.MMLU_GROUPS.values():
        assert set(group) <= set(bm.MMLU_SUBJECTS)
    assert not set(bm.MMLU_GROUPS["stem"]) & set(bm.MMLU_GROUPS["social_sciences"])
    assert "us_foreign_policy" in bm.MMLU_GROUPS["social_sciences"]


def test_resolve_subjects():
    assert bm.resolve_subjects(None) is None
    assert bm.resolve_subjects("stem") == list(bm.MMLU_GROUPS["stem"])
    assert bm.resolve_subjects(["sociology", "anatomy", "sociology"]) == ["sociology", "anatomy"]
    assert bm.resolve_subjects("virology") == ["virology"]
    assert len(bm.resolve_subjects(["social_sciences", "stem"])) == 31
    with pytest.raises(CapatlasError, match=r"benchmark 'mm'.*'stemm'.*did you mean 'stem'"):
        bm.resolve_subjects("stemm", benchmark="mm")
    with pytest.raises(CapatlasError, match="benchmark 'mm'.*'sociologyy'"):
        bm.resolve_subjects(["sociologyy"], benchmark="mm")
    # Other loaders filter on their own subject names.
    assert bm.resolve_subjects(["algebra"], loader="multiple_choice") == ["algebra"]


def test_benchmark_roles(demo_config):
    roles = bm.benchmark_roles(demo_config)
    assert roles == {
        "socialiqa": ("social", "reasoning"),
        "mmlu_social_sciences": ("social", "knowledge"),
        "arc_challenge": ("stem", "reasoning"),
        "mmlu_stem": ("stem", "knowledge"),
    }
    with pytest.raises(CapatlasError, match="'gsm8k' is not in the config.*socialiqa"):
        bm.benchmark_config(demo_config, "gsm8k")


# ---------------------------------------------------------------------------
# Loaders and layouts


def test_socialiqa_jsonl(tmp_path):
    src = write_jsonl(tmp_path / "siqa" / "validation.jsonl", SIQA_ROWS)
    items = bm.load_items(cfg("siqa", "socialiqa", src.parent, split="validation"), seed=1)
    assert [i.gold for i in items] == [2, 0, 1]
    first = items[0]
    assert first.item_id == "siqa-validation-0" and first.row == 0
    assert first.context == SIQA_ROWS[0]["context"]
    assert first.question == SIQA_ROWS[0]["question"]
    assert first.choices == ["make a new plan", "Go home and see Riley", "Find somewhere to go"]
    # A file path works as well as its directory.
    assert bm.load_items(cfg("siqa", "socialiqa", src, split="validation"), seed=1) == items


def test_socialiqa_hub_parquet_layout(tmp_path):
    # lighteval/siqa and the hub's parquet conversion: data/<split>-00000-of-00001.parquet
    write_parquet(tmp_path / "siqa" / "data" / "validation-00000-of-00001.parquet", SIQA_ROWS)
    write_parquet(tmp_path / "siqa" / "data" / "train-00000-of-00001.parquet", SIQA_ROWS[:1])
    items = bm.load_items(cfg("siqa", "socialiqa", tmp_path / "siqa", split="validation"), seed=1)
    assert len(items) == 3 and [i.gold for i in items] == [2, 0, 1]


def test_arc_parquet_numeric_keys_and_config_dir(tmp_path):
    root = tmp_path / "ai2_arc"
    write_parquet(root / "ARC-Challenge" / "test-00000-of-00001.parquet", ARC_ROWS)
    write_parquet(root / "ARC-Easy" / "test-00000-of-00001.parquet", ARC_ROWS[:1])
    items = bm.load_items(cfg("arc", "arc", root, config_name="ARC-Challenge"), seed=0)
    assert [i.item_id for i in items] == ["Mercury_7175875", "NYSEDREGENTS_2015_4_8", "Mercury_SC_401169"]
    assert [i.gold for i in items] == [2, 1, 1]
    assert items[1].choices == ["rock", "grass", "snail", "hawk"]
    assert len(items[2].choices) == 3
    # The config directory itself as source (the demo's layout).
    assert bm.load_items(cfg("arc", "arc", root / "ARC-Challenge"), seed=0) == items
    with pytest.raises(CapatlasError, match="no config directory 'ARC-Hard'.*ARC-Challenge, ARC-Easy"):
        bm.load_items(cfg("arc", "arc", root, config_name="ARC-Hard"), seed=0)


def test_mmlu_save_to_disk_subject_groups(tmp_path):
    import datasets

    dd = datasets.DatasetDict(
        {
            "test": datasets.Dataset.from_list(mmlu_rows(3)),
            "dev": datasets.Dataset.from_list(mmlu_rows(5)),
        }
    )
    dd.save_to_disk(str(tmp_path / "mmlu"))
    social = bm.load_items(cfg("mmlu_ss", "mmlu", tmp_path / "mmlu", subjects="social_sciences"), seed=0)
    assert {i.subject for i in social} == {"econometrics", "sociology"}
    assert len(social) == 6
    stem = bm.load_items(cfg("mmlu_stem", "mmlu", tmp_path / "mmlu", subjects="stem"), seed=0)
    assert {i.subject for i in stem} == {"abstract_algebra", "anatomy", "astronomy"}
    hendrycks = bm.load_items(cfg("mmlu_h", "mmlu", tmp_path / "mmlu", subjects="stem_hendrycks"), seed=0)
    assert {i.subject for i in hendrycks} == {"abstract_algebra", "astronomy"}
    everything = bm.load_items(cfg("mmlu_all", "mmlu", tmp_path / "mmlu"), seed=0)
    assert len(everything) == 18
    # Item ids and rows refer to the unfiltered split, so they do not move with the subject list.
    assert social[0].item_id == f"mmlu_ss-test-{social[0].row}" == "mmlu_ss-test-6"
    assert [i.gold for i in social[:3]] == [0, 1, 2]
    with pytest.raises(bm.SplitNotFoundError, match="no split 'validation'.*test, dev"):
        bm.load_items(cfg("mmlu", "mmlu", tmp_path / "mmlu", split="validation"), seed=0)


def test_mmlu_single_saved_dataset_and_letter_answers(tmp_path):
    import datasets

    datasets.Dataset.from_list(mmlu_rows(2, letters=True)).save_to_disk(str(tmp_path / "one"))
    items = bm.load_items(cfg("m", "mmlu", tmp_path / "one"), seed=0)
    assert [i.gold for i in items[:2]] == [0, 1]
    src = write_jsonl(tmp_path / "letters" / "test.jsonl", mmlu_rows(4, letters=True))
    assert [i.gold for i in bm.load_items(cfg("m", "mmlu", src.parent), seed=0)[:4]] == [0, 1, 2, 3]


def test_mmlu_hub_layouts(tmp_path):
    root = tmp_path / "cais_mmlu"
    write_parquet(root / "all" / "test-00000-of-00001.parquet", mmlu_rows(2))
    write_parquet(root / "all" / "dev-00000-of-00001.parquet", mmlu_rows(5))
    for subject in ("anatomy", "sociology"):
        rows = [r for r in mmlu_rows(2) if r["subject"] == subject]
        write_parquet(root / subject / "test-00000-of-00001.parquet", rows)
    with_config = bm.load_items(cfg("m", "mmlu", root, config_name="all", subjects="stem"), seed=0)
    assert {i.subject for i in with_config} == {"abstract_algebra", "anatomy", "astronomy"}
    # No config name: "all" is used when present ...
    assert bm.load_items(cfg("m", "mmlu", root, subjects="stem"), seed=0) == with_config
    # ... else one directory per requested subject.
    (root / "all" / "test-00000-of-00001.parquet").unlink()
    (root / "all" / "dev-00000-of-00001.parquet").unlink()
    (root / "all").rmdir()
    per_subject = bm.load_items(cfg("m", "mmlu", root, subjects=["anatomy", "sociology"]), seed=0)
    assert [i.subject for i in per_subject] == ["anatomy", "anatomy", "sociology", "sociology"]


def test_mmlu_subjects_need_a_subject_field(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "subject"} for r in mmlu_rows(1)]
    src = write_jsonl(tmp_path / "m" / "test.jsonl", rows)
    with pytest.raises(CapatlasError, match=r"item m-test-0 \(row 0\): has no subject"):
        bm.load_items(cfg("m", "mmlu", src, subjects="stem"), seed=0)
    # Without a subject filter the items are fine.
    assert len(bm.load_items(cfg("m", "mmlu", src), seed=0)) == len(rows)
    with pytest.raises(CapatlasError, match="no item has one of the 12 requested subjects"):
        src2 = write_jsonl(tmp_path / "m2" / "test.jsonl", [r for r in mmlu_rows(1) if r["subject"] == "anatomy"])
        bm.load_items(cfg("m", "mmlu", src2, subjects="social_sciences"), seed=0)


def test_generic_loader(tmp_path):
    rows = [
        {"uid": "q1", "stem": "2 + 2 =", "options": ["3", "4", "5"], "target": 1},
        {"uid": "q2", "stem": "Capital of France?", "options": ["Rome", "Paris"], "target": "Paris"},
        {"uid": "q3", "stem": "Largest planet?", "options": ["Mars", "Venus", "Jupiter"], "target": "C"},
        {"uid": "q4", "stem": "Colour of the sky?", "options": ["blue", "green"], "target": "0"},
    ]
    src = write_jsonl(tmp_path / "gen.jsonl", rows)
    fields = {"id": "uid", "question": "stem", "choices": "options", "answer": "target"}
    items = bm.load_items(cfg("gen", "multiple_choice", src, fields=fields), seed=0)
    assert [i.item_id for i in items] == ["q1", "q2", "q3", "q4"]
    assert [i.gold for i in items] == [1, 1, 2, 0]
    assert items[0].question == "2 + 2 ="

    # CSV with one column per choice, a 1-based answer and a question template.
    csv_path = tmp_path / "gen.csv"
    csv_path.write_text("ctx,q,a,b,ans\nIt rains.,What do you take?,umbrella,sunscreen,1\n")
    fields = {"question": "{ctx} {q}", "choices": ["a", "b"], "answer": "ans", "answer_type": "index1"}
    (item,) = bm.load_items(cfg("gen2", "multiple_choice", csv_path, fields=fields), seed=0)
    assert item.question == "It rains. What do you take?"
    assert item.choices == ["umbrella", "sunscreen"] and item.gold == 0
    assert item.item_id == "gen2-test-0"

    # Default field names, ARC-like {text,label} choices answered by label.
    rows = [{"question": "Pick two", "choices": {"text": ["one", "two"], "label": ["1", "2"]}, "answer": "2"}]
    src = write_jsonl(tmp_path / "g3" / "test.jsonl", rows)
    (item,) = bm.load_items(cfg("g3", "multiple_choice", src, fields={}), seed=0)
    assert item.gold == 1
    # Numeric choices: an answer that is both an index and a choice's text must be spelled out.
    rows = [{"question": "3 + 1?", "choices": ["3", "4", "5", "6"], "answer": "4"},
            {"question": "2 + 1?", "choices": ["3", "4", "5", "6"], "answer": "3"}]  # fmt: skip
    src5 = write_jsonl(tmp_path / "g5" / "test.jsonl", rows)
    with pytest.raises(CapatlasError, match="item g5-test-1 .*ambiguous.*fields.answer_type"):
        bm.load_items(cfg("g5", "multiple_choice", src5), seed=0)
    items = bm.load_items(cfg("g5", "multiple_choice", src5, fields={"answer_type": "text"}), seed=0)
    assert [i.gold for i in items] == [1, 0]
    with pytest.raises(CapatlasError, match="item g4-test-0 .*no column 'prompt' \\(fields.question\\)"):
        bm.load_items(cfg("g4", "multiple_choice", src, fields={"question": "prompt"}), seed=0)


@pytest.mark.parametrize("layout", ["hub parquet branch", "AI2 original download"])
def test_socialiqa_loads_from_the_layouts_users_have_on_disk(tmp_path, layout):
    """The hub's main branch holds only a loading script; users have the parquet branch or AI2's zip."""
    root = tmp_path / "social_i_qa"
    if layout == "hub parquet branch":  # refs/convert/parquet: <config>/<split>/0000.parquet
        write_parquet(root / "default" / "validation" / "0000.parquet", SIQA_ROWS)
        (root / "social_i_qa.py").write_text("# the loading script of the main branch\n")
    else:  # socialiqa-train-dev.zip: dev.jsonl (no labels) + dev-labels.lst, 1-based
        write_jsonl(root / "dev.jsonl", [{k: v for k, v in r.items() if k != "label"} for r in SIQA_ROWS])
        (root / "dev-labels.lst").write_text("".join(r["label"] + "\n" for r in SIQA_ROWS))
    items = bm.load_items(cfg("siqa", "socialiqa", root, split="validation"), seed=0)
    assert [i.gold for i in items] == [int(r["label"]) - 1 for r in SIQA_ROWS]
    assert items[0].choices == [SIQA_ROWS[0]["answerA"], SIQA_ROWS[0]["answerB"], SIQA_ROWS[0]["answerC"]]
    if layout == "AI2 original download":
        (root / "dev-labels.lst").write_text("1\n")
        with pytest.raises(CapatlasError, match=r"dev-labels.lst holds 1 labels but .*dev.jsonl holds"):
            bm.load_items(cfg("siqa", "socialiqa", root, split="validation"), seed=0)


def test_auto_answers_refuse_integers_that_may_be_one_based(tmp_path):
    """Labels "1"/"2" of 3 choices read as 0-based would be one choice off on every item: auto must not guess."""
    rows = [{"question": f"q{k}", "choices": ["a", "b", "c"], "answer": str(1 + k % 2)} for k in range(4)]
    src = write_jsonl(tmp_path / "one_based" / "test.jsonl", rows)
    with pytest.raises(CapatlasError, match=r"benchmark 'ob'.*from 1 to 2 and none is 0.*answer_type"):
        bm.load_items(cfg("ob", "multiple_choice", src), seed=0)
    items = bm.load_items(cfg("ob", "multiple_choice", src, fields={"answer_type": "index1"}), seed=0)
    assert [i.gold for i in items] == [0, 1, 0, 1]
    # A split that uses 0 is 0-based; floats holding integers count as integers.
    rows[0]["answer"] = 0.0
    src = write_jsonl(tmp_path / "zero_based" / "test.jsonl", rows)
    assert [i.gold for i in bm.load_items(cfg("zb", "multiple_choice", src), seed=0)] == [0, 2, 1, 2]


@pytest.mark.parametrize(
    ("loader", "row", "item", "reason"),
    [
        ("socialiqa", {**SIQA_ROWS[0], "label": ""}, "s-test-1", "missing answer"),
        ("socialiqa", {**SIQA_ROWS[0], "label": "4"}, "s-test-1", "out of range"),
        ("socialiqa", {**SIQA_ROWS[0], "label": "0"}, "s-test-1", "out of range"),
        ("mmlu", {**mmlu_rows(1)[0], "answer": None}, "s-test-1", "missing answer"),
        ("mmlu", {**mmlu_rows(1)[0], "answer": 4}, "s-test-1", "out of range"),
        ("mmlu", {**mmlu_rows(1)[0], "answer": "E"}, "s-test-1", "out of range"),
        ("mmlu", {**mmlu_rows(1)[0], "choices": []}, "s-test-1", "empty choices"),
        ("arc", {**ARC_ROWS[1], "answerKey": "E"}, "NYSEDREGENTS_2015_4_8", "answerKey 'E' is not among"),
        ("arc", {**ARC_ROWS[0], "answerKey": None}, "Mercury_7175875", "missing answer"),
        ("arc", {**ARC_ROWS[0], "choices": {"text": [], "label": []}}, "Mercury_7175875", "empty choices"),
        ("multiple_choice", {"question": "q", "choices": ["a", "b"], "answer": 2}, "s-test-1", "out of range"),
        ("multiple_choice", {"question": "q", "choices": ["a", "b"], "answer": "zz"}, "s-test-1", "not a valid"),
        ("multiple_choice", {"question": "q", "choices": [], "answer": 0}, "s-test-1", "empty choices"),
    ],
)
def test_bad_items_name_the_item(tmp_path, loader, row, item, reason):
    good = {"socialiqa": SIQA_ROWS[1], "mmlu": mmlu_rows(1)[1], "arc": ARC_ROWS[2]}.get(
        loader, {"question": "ok", "choices": ["a", "b"], "answer": 0}
    )
    src = write_jsonl(tmp_path / "bad" / "test.jsonl", [good, row])
    with pytest.raises(CapatlasError) as info:
        bm.load_items(cfg("s", loader, src), seed=0)
    message = str(info.value)
    assert "benchmark 's'" in message and item in message and "row 1" in message
    assert reason in message


def test_limit_is_seeded_bounded_and_ordered(tmp_path):
    rows = [dict(SIQA_ROWS[i % 3], question=f"q{i}?") for i in range(50)]
    src = write_jsonl(tmp_path / "s" / "test.jsonl", rows)
    a = bm.load_items(cfg("s", "socialiqa", src, limit=10), seed=7)
    b = bm.load_items(cfg("s", "socialiqa", src, limit=10), seed=7)
    c = bm.load_items(cfg("s", "socialiqa", src, limit=10), seed=8)
    assert a == b and len(a) == 10
    assert [i.row for i in a] == sorted(i.row for i in a)
    assert [i.row for i in a] != [i.row for i in c]
    # A different benchmark name draws a different sample from the same seed.
    other = bm.load_items(cfg("t", "socialiqa", src, limit=10), seed=7)
    assert [i.row for i in other] != [i.row for i in a]
    assert len(bm.load_items(cfg("s", "socialiqa", src, limit=500), seed=7)) == 50


def test_world_placeholder_and_missing_sources(tmp_path):
    write_jsonl(tmp_path / "world" / "benchmarks" / "siqa" / "validation.jsonl", SIQA_ROWS)
    bench = cfg("s", "socialiqa", "{world}/benchmarks/siqa", split="validation")
    assert len(bm.load_items(bench, seed=0, world_dir=tmp_path / "world")) == 3
    with pytest.raises(CapatlasError, match="uses \\{world\\} but no demo world"):
        bm.load_items(bench, seed=0)
    with pytest.raises(CapatlasError, match="source .*/nowhere/siqa does not exist"):
        bm.load_items(cfg("s", "socialiqa", tmp_path / "nowhere" / "siqa"), seed=0)
    with pytest.raises(bm.SplitNotFoundError, match="no split 'test'.*validation.jsonl"):
        bm.load_items(cfg("s", "socialiqa", tmp_path / "world" / "benchmarks" / "siqa"), seed=0)


def test_missing_hub_dataset_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    bench = cfg("siqa", "socialiqa", "capatlas-no-such-org/no-such-dataset", split="validation")
    with pytest.raises(CapatlasError, match="benchmark 'siqa'.*not in the local cache.*local path"):
        bm.load_items(bench, seed=0)


# ---------------------------------------------------------------------------
# Prompts (reference/benchmarks.md)

SIQA = bm.MCItem("s1", "What will Kai want to do next?", ["sleep", "eat", "run"], 1, context="Kai cooked dinner.")
ARC = bm.MCItem("a1", "Which is a mammal?", ["shark", "whale", "trout", "eel"], 1)
MMLU = bm.MCItem("m1", "What is 2 + 2?", ["3", "4", "5", "6"], 1, subject="high_school_mathematics")
MMLU_SHOT = bm.MCItem("m2", "What is 1 + 1?", ["2", "3", "4", "5"], 0, subject="high_school_mathematics")


@pytest.mark.parametrize(
    ("item", "loader", "fmt", "prompt", "continuations"),
    [
        (SIQA, "socialiqa", "lm_eval", "Q: Kai cooked dinner. What will Kai want to do next?\nA:",
         [" sleep", " eat", " run"]),
        (SIQA, "socialiqa", "olmes_rc", "Question: Kai cooked dinner. What will Kai want to do next?\nAnswer:",
         [" sleep", " eat", " run"]),
        (SIQA, "socialiqa", "olmes_mc",
         "Question: Kai cooked dinner. What will Kai want to do next?\n A. sleep\n B. eat\n C. run\nAnswer:",
         [" A", " B", " C"]),
        (ARC, "arc", "lm_eval", "Question: Which is a mammal?\nAnswer:", [" shark", " whale", " trout", " eel"]),
        (ARC, "arc", "olmes_rc", "Question: Which is a mammal?\nAnswer:", [" shark", " whale", " trout", " eel"]),
        (ARC, "arc", "olmes_mc",
         "Question: Which is a mammal?\n A. shark\n B. whale\n C. trout\n D. eel\nAnswer:", [" A", " B", " C", " D"]),
        (MMLU, "mmlu", "lm_eval",
         "The following are multiple choice questions (with answers) about high school mathematics.\n\n"
         "What is 2 + 2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:", [" A", " B", " C", " D"]),
        # OLMES's MMLU prompts carry the same subject header (oe-eval's MMLU task description).
        (MMLU, "mmlu", "olmes_rc",
         "The following are multiple choice questions (with answers) about high school mathematics.\n\n"
         "Question: What is 2 + 2?\nAnswer:", [" 3", " 4", " 5", " 6"]),
        (MMLU, "mmlu", "olmes_mc",
         "The following are multiple choice questions (with answers) about high school mathematics.\n\n"
         "Question: What is 2 + 2?\n A. 3\n B. 4\n C. 5\n D. 6\nAnswer:", [" A", " B", " C", " D"]),
        (ARC, "multiple_choice", "lm_eval", "Question: Which is a mammal?\nAnswer:",
         [" shark", " whale", " trout", " eel"]),
    ],
)  # fmt: skip
def test_render_formats(item, loader, fmt, prompt, continuations):
    rendered = bm.render(item, fmt, benchmark_loader=loader)
    assert rendered.prompt == prompt
    assert rendered.continuations == continuations
    assert rendered.gold == item.gold
    assert rendered.completion == continuations[item.gold]
    assert rendered.choice_texts == item.choices


def test_render_fewshot_layout():
    rendered = bm.render(MMLU, "lm_eval", benchmark_loader="mmlu", fewshot_items=[MMLU_SHOT, MMLU_SHOT])
    shot = "What is 1 + 1?\nA. 2\nB. 3\nC. 4\nD. 5\nAnswer: A"
    assert rendered.prompt == (
        "The following are multiple choice questions (with answers) about high school mathematics.\n\n"
        f"{shot}\n\n{shot}\n\nWhat is 2 + 2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:"
    )
    assert rendered.prompt.count("The following are") == 1
    rendered = bm.render(SIQA, "olmes_rc", benchmark_loader="socialiqa", fewshot_items=[SIQA])
    assert rendered.prompt == (
        "Question: Kai cooked dinner. What will Kai want to do next?\nAnswer: eat\n\n"
        "Question: Kai cooked dinner. What will Kai want to do next?\nAnswer:"
    )
    rendered = bm.render(ARC, "olmes_mc", benchmark_loader="arc", fewshot_items=[ARC])
    assert rendered.prompt.startswith(
        "Question: Which is a mammal?\n A. shark\n B. whale\n C. trout\n D. eel\nAnswer: B\n\n"
    )
    with pytest.raises(CapatlasError, match="unknown prompt format 'harness'"):
        bm.render(ARC, "harness", benchmark_loader="arc")


def test_subject_header_can_be_turned_off_and_needs_a_subject():
    plain = bm.render(MMLU, "olmes_mc", benchmark_loader="mmlu", subject_header=False)
    assert plain.prompt == "Question: What is 2 + 2?\n A. 3\n B. 4\n C. 5\n D. 6\nAnswer:"
    headed = bm.render(MMLU, "olmes_mc", benchmark_loader="mmlu", fewshot_items=[MMLU_SHOT])
    assert headed.prompt.startswith("The following are multiple choice questions (with answers) about high school")
    assert headed.prompt.count("The following are") == 1
    # Only MMLU has subjects; an MMLU item without one gets no header rather than "about ."
    assert bm.render(ARC, "olmes_mc", benchmark_loader="arc").prompt.startswith("Question:")
    no_subject = bm.MCItem("m3", "Q?", ["a", "b"], 0)
    assert bm.render(no_subject, "olmes_rc", benchmark_loader="mmlu").prompt == "Question: Q?\nAnswer:"


def test_fewshot_pools(tmp_path):
    import datasets

    datasets.DatasetDict(
        {"test": datasets.Dataset.from_list(mmlu_rows(3)), "dev": datasets.Dataset.from_list(mmlu_rows(5, tag="dev "))}
    ).save_to_disk(str(tmp_path / "mmlu"))
    bench = cfg("m", "mmlu", tmp_path / "mmlu", subjects="social_sciences", fewshot=2, prompt_format="lm_eval")
    items = bm.load_all_items(bench)
    pool = bm.load_fewshot_pool(bench, items)
    assert pool.source == "dev" and not pool.same_split
    shots = bm.select_fewshot(items[0], pool, 2, seed=0, name="m")
    # lm-eval's choice: the first k dev items of the item's subject.
    assert [s.item_id for s in shots] == ["m-dev-10", "m-dev-11"]
    assert all(s.subject == items[0].subject for s in shots)
    # A dev item identical to the test item would put the answer in the prompt: skipped.
    copy_pool = bm.FewshotPool(bm.parse_rows(mmlu_rows(5), {**bench, "split": "dev"}), "dev", False)
    shots = bm.select_fewshot(items[0], copy_pool, 2, seed=0, name="m")
    assert items[0].question not in {s.question for s in shots} and len(shots) == 2
    rendered = bm.render_items(items, bench, seed=0, pool=pool)
    assert rendered[0].prompt.count("\n\n") == 3 and rendered[0].prompt.count("Answer:") == 3

    # No dev split: seeded examples from the split itself, never the item.
    src = write_jsonl(tmp_path / "s" / "test.jsonl", [dict(SIQA_ROWS[i % 3], question=f"q{i}?") for i in range(12)])
    sbench = cfg("s", "socialiqa", src.parent, fewshot=3)
    sitems = bm.load_all_items(sbench)
    spool = bm.load_fewshot_pool(sbench, sitems)
    assert spool.same_split and spool.source == "test"
    for item in sitems:
        shots = bm.select_fewshot(item, spool, 3, seed=5, name="s")
        assert len(shots) == 3 and item.item_id not in {s.item_id for s in shots}
        assert shots == bm.select_fewshot(item, spool, 3, seed=5, name="s")
    # With a train split beside it (lm-eval's and OLMES's choice), SocialIQA's and ARC's examples come from train.
    write_jsonl(tmp_path / "s" / "train.jsonl", [dict(SIQA_ROWS[i % 3], question=f"t{i}?") for i in range(5)])
    tpool = bm.load_fewshot_pool(sbench, sitems)
    assert tpool.source == "train" and not tpool.same_split
    assert all(s.question.startswith("t") for s in bm.select_fewshot(sitems[0], tpool, 3, seed=5, name="s"))
    # An MMLU file has no dev split beside it: examples come from the file, never the item.
    mfile = write_jsonl(tmp_path / "mfile.jsonl", mmlu_rows(3))
    mbench = cfg("mf", "mmlu", mfile, fewshot=2)
    mitems = bm.load_all_items(mbench)
    mpool = bm.load_fewshot_pool(mbench, mitems)
    assert mpool.same_split and mpool.source == "test"
    shots = bm.select_fewshot(mitems[0], mpool, 5, seed=0, name="mf")
    assert [s.subject for s in shots] == [mitems[0].subject] * 2 and mitems[0] not in shots
    with pytest.raises(CapatlasError, match="fewshot=3 needs a pool"):
        bm.render_items(sitems, sbench, seed=0)

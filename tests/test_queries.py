"""Attribution queries: completion-only labels, left truncation, atomic output, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from capatlas.benchmarks import items as bm
from capatlas.benchmarks import queries as qm
from capatlas.errors import CapatlasError
from capatlas.fileio import tokenizer_sha256

SENTENCES = [
    "Question: Which is a mammal?\nAnswer: whale",
    "Question: Kai cooked dinner. What will Kai want to do next?\nAnswer: eat",
    "The following are multiple choice questions (with answers) about high school mathematics.",
    "What is 2 + 2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer: B",
    "the cat sat on the mat and the dog sat on the log",
    "Q: Tracy went home. What does Tracy need to do?\nA: sleep",
]


def train_tokenizer(directory: Path, *, bos: bool = False, strip: bool = False, trim: bool = True) -> Path:
    """A tiny ByteLevel BPE saved like a model's tokenizer (OLMo-like: no BOS unless `bos`).

    `trim=False` leaves out the post-processor, as the demo model's tokenizer
    does: a token's offsets then include its leading space.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    if strip:
        tok.normalizer = normalizers.Strip(left=False, right=True)
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|bos|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(SENTENCES * 4, trainer)
    if bos:
        bos_id = tok.token_to_id("<|bos|>")
        tok.post_processor = processors.TemplateProcessing(
            single="<|bos|> $A", pair="<|bos|> $A <|bos|> $B", special_tokens=[("<|bos|>", bos_id)]
        )
    elif trim:
        tok.post_processor = processors.ByteLevel(trim_offsets=True)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|pad|>",
        bos_token="<|bos|>" if bos else None,
    )
    fast.save_pretrained(str(directory))
    return directory


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    return train_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def tokenizer(tok_dir):
    return qm.load_tokenizer(str(tok_dir))


def labelled(ids, labels):
    return [t for t, lab in zip(ids, labels) if lab != qm.IGNORE_INDEX]


ITEMS = [
    bm.MCItem("a1", "Which is a mammal?", ["shark", "whale", "trout"], 1),
    bm.MCItem("s1", "What will Kai want to do next?", ["sleep", "eat"], 1, context="Kai cooked dinner."),
    bm.MCItem("m1", "What is 2 + 2?", ["3", "4", "5", "6"], 1, subject="high_school_mathematics"),
]


@pytest.fixture(scope="module")
def untrimmed(tmp_path_factory):
    return qm.load_tokenizer(str(train_tokenizer(tmp_path_factory.mktemp("untrimmed"), trim=False)))


@pytest.mark.parametrize("trimmed", [True, False], ids=["trimmed-offsets", "untrimmed-offsets"])
@pytest.mark.parametrize("fmt", bm.PROMPT_FORMATS)
def test_labels_cover_exactly_the_completion(tokenizer, untrimmed, fmt, trimmed):
    tokenizer = tokenizer if trimmed else untrimmed
    loaders = ["arc", "socialiqa", "mmlu"]
    rendered = [bm.render(item, fmt, benchmark_loader=loader) for item, loader in zip(ITEMS, loaders)]
    ds = qm.build_queries(ITEMS, rendered, tokenizer, max_length=512, benchmark="b")
    assert ds.column_names == list(qm.QUERY_COLUMNS)
    for row, r in zip(ds, rendered):
        ids, labels = row["input_ids"], row["labels"]
        n_prompt = labels.index(next(x for x in labels if x != qm.IGNORE_INDEX))
        # Prompt tokens all ignored, then every remaining token labelled with its own id.
        assert all(x == qm.IGNORE_INDEX for x in labels[:n_prompt])
        assert labels[n_prompt:] == ids[n_prompt:]
        assert n_prompt >= 1
        assert tokenizer.decode(ids) == r.prompt + r.completion
        assert tokenizer.decode(labelled(ids, labels)).strip() == r.completion.strip()
        assert tokenizer.decode(ids[:n_prompt]).rstrip() == r.prompt.rstrip()
        assert row["completion"] == r.completion and row["prompt"] == r.prompt
        assert row["gold"] == r.gold and row["truncated"] is False
    assert ds["item_id"] == ["a1", "s1", "m1"]
    assert ds["subject"] == ["", "", "high_school_mathematics"]


def test_straddling_token_counts_as_completion(tokenizer):
    # "Ġcat" is one token; with the boundary inside it, it must be labelled.
    prompt, completion = "the dog sat on the mat and the ca", "t sat"
    full = tokenizer(prompt + completion, add_special_tokens=False, return_offsets_mapping=True)
    straddling = [t for t, (s, e) in zip(full["input_ids"], full["offset_mapping"]) if s < len(prompt) < e]
    assert straddling, "fixture tokenizer should have a token across the boundary"
    ids, labels, _ = qm.tokenize_query(prompt, completion, tokenizer)
    assert set(straddling) <= set(labelled(ids, labels))
    assert tokenizer.decode(labelled(ids, labels)).endswith("cat sat")


def test_left_truncation_keeps_the_answer(tokenizer):
    prompt = "the cat sat on the mat and the dog sat on the log. " * 6 + "Question: Which is a mammal?\nAnswer:"
    completion = " whale"
    full_ids, full_labels, truncated = qm.tokenize_query(prompt, completion, tokenizer)
    assert not truncated
    ids, labels, truncated = qm.tokenize_query(prompt, completion, tokenizer, max_length=12)
    assert truncated and len(ids) == 12
    assert ids == full_ids[-12:] and labels == full_labels[-12:]
    assert tokenizer.decode(labelled(ids, labels)) == completion
    with pytest.raises(CapatlasError, match="item x1: .*exceed attribution.max_length=12.*truncation is off"):
        qm.tokenize_query(prompt, completion, tokenizer, max_length=12, truncation=False, where="item x1")
    n_completion = len(labelled(full_ids, full_labels))
    with pytest.raises(CapatlasError, match="completion alone has"):
        qm.tokenize_query(prompt, completion, tokenizer, max_length=n_completion)


def test_bos_is_prepended_only_when_the_tokenizer_adds_one(tmp_path, tokenizer):
    assert qm.default_bos(tokenizer) is None
    with_bos = qm.load_tokenizer(str(train_tokenizer(tmp_path / "bos", bos=True)))
    bos_id = qm.default_bos(with_bos)
    assert bos_id == with_bos.convert_tokens_to_ids("<|bos|>")
    rendered = [bm.render(ITEMS[0], "olmes_rc", benchmark_loader="arc")]
    ds = qm.build_queries(ITEMS[:1], rendered, with_bos, max_length=8, benchmark="b")
    ids, labels = ds[0]["input_ids"], ds[0]["labels"]
    assert ids[0] == bos_id and labels[0] == qm.IGNORE_INDEX and len(ids) == 8 and ds[0]["truncated"]
    assert with_bos.decode(labelled(ids, labels)).strip() == "whale"


def test_item_without_label_tokens_is_named(tmp_path):
    # A tokenizer that strips trailing whitespace leaves a whitespace answer no token at all.
    stripping = qm.load_tokenizer(str(train_tokenizer(tmp_path / "strip", strip=True)))
    items = [ITEMS[0], bm.MCItem("blank-7", "Which is a mammal?", ["  ", "whale"], 0)]
    rendered = [bm.Rendered("Question: Which is a mammal?\nAnswer:", [" whale"], 0),
                bm.Rendered("Question: Which is a mammal?\nAnswer:", ["  "], 0)]  # fmt: skip
    with pytest.raises(CapatlasError, match="benchmark 'arcx': item blank-7: no token of the completion"):
        qm.build_queries(items, rendered, stripping, max_length=64, benchmark="arcx")
    # A prompt that tokenizes to nothing leaves only position 0, which no loss ever scores.
    assert len(stripping("the", add_special_tokens=False)["input_ids"]) == 1
    with pytest.raises(CapatlasError, match="item q: no token of the completion"):
        qm.tokenize_query("", "the", stripping, where="item q")


# ---------------------------------------------------------------------------
# The CLI, end to end

ARC_ROWS = [
    {"id": f"ARC_{k}", "question": f"Which animal is number {k}?",
     "choices": {"text": ["shark", "whale", "trout", "eel"], "label": ["A", "B", "C", "D"] if k % 2 else ["1", "2", "3", "4"]},
     "answerKey": "B" if k % 2 else "2"}
    for k in range(8)
]  # fmt: skip


def write_benchmark_config(tmp_path: Path, benchmarks: list[dict], **models) -> Path:
    """The demo config with these benchmarks (the demo keeps every other key valid)."""
    config = yaml.safe_load((Path(__file__).resolve().parent.parent / "config" / "config.yaml").read_text())
    config.update(run="t", results_dir=str(tmp_path / "results"), seed=3, benchmarks=benchmarks)
    config.setdefault("attribution", {})["max_length"] = 64
    # These tests are about rendering: every item is a query (the roles have tests of their own).
    config["item_roles"] = {"design": "overlapping"}
    if models:
        config["models"] = {role: {"path": str(path)} for role, path in models.items()}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


ARC_BENCH = {"name": "arc_challenge", "domain": "stem", "capability": "reasoning", "loader": "arc",
             "source": "{world}/benchmarks/ai2_arc/ARC-Challenge"}  # fmt: skip


def write_arc_world(tmp_path: Path) -> Path:
    """A demo-world-shaped directory holding ARC_ROWS as ARC-Challenge's test split."""
    world = tmp_path / "world"
    src = world / "benchmarks" / "ai2_arc" / "ARC-Challenge" / "test.jsonl"
    src.parent.mkdir(parents=True)
    src.write_text("".join(json.dumps(r) + "\n" for r in ARC_ROWS))
    return world


@pytest.fixture
def cli(monkeypatch):
    """capatlas.cli.main with the queries stage registered (cli.py owns the real entry)."""
    from capatlas import cli as cli_module

    if not any(name == "queries" for name, _, _ in cli_module.STAGES):
        stage = ("queries", "capatlas.benchmarks.queries", "tokenize a benchmark's items as attribution queries")
        monkeypatch.setattr(cli_module, "STAGES", (*cli_module.STAGES, stage))
    return cli_module.main


def test_cli_end_to_end(tmp_path, tok_dir, cli):
    import datasets

    world = write_arc_world(tmp_path)
    bench = {**ARC_BENCH, "prompt_format": "olmes_mc", "fewshot": 1, "limit": 5}
    config = write_benchmark_config(tmp_path, [bench])
    out = tmp_path / "q" / "arc_challenge"
    argv = ["queries", "--config", str(config), "--benchmark", "arc_challenge",
            "--tokenizer", str(tok_dir), "--out", str(out), "--world", str(world)]  # fmt: skip
    assert cli(argv) == 0
    ds = datasets.load_from_disk(str(out))
    assert len(ds) == 5
    summary = json.loads((out / "queries.json").read_text())
    assert summary["benchmark"] == "arc_challenge" and summary["n_items"] == 5
    assert summary["n_items_available"] == 8
    assert summary["prompt_format"] == "olmes_mc" and summary["fewshot"] == 1
    assert summary["fewshot_source"] == "test"
    assert summary["tokenizer"] == str(tok_dir.resolve())
    assert summary["tokenizer_sha256"] == tokenizer_sha256(tok_dir)
    assert summary["bos_prepended"] is False and summary["seed"] == 3
    assert summary["item_ids"] == ds["item_id"]
    assert summary["label_tokens"]["min"] >= 1
    for row in ds:
        assert row["completion"] == " B"
        assert row["prompt"].count("Answer:") == 2  # one example, then the item
        assert sum(x != qm.IGNORE_INDEX for x in row["labels"]) == 1
    # Deterministic: a rerun writes identical bytes.
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    assert cli(argv) == 0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first
    assert sorted(p.name for p in out.parent.iterdir()) == ["arc_challenge"]

    # Unknown benchmark: exit status 2, named.
    assert cli([*argv[:4], "nope", *argv[5:]]) == 2


def test_held_out_roles_split_every_subject_and_never_overlap():
    items = [bm.MCItem(f"q{k}", "?", ["a", "b"], 0, subject=f"s{k % 3}") for k in range(60)]
    roles = {"design": "held_out", "queries": 0.5, "guard": 0.2}
    assigned = bm.assign_roles(items, roles, seed=3, name="mmlu_stem")
    for subject in ("s0", "s1", "s2"):  # 20 items each: 10 queries, 4 guard, 6 evaluation
        mine = [r for item, r in zip(items, assigned) if item.subject == subject]
        assert (mine.count("queries"), mine.count("guard"), mine.count("evaluation")) == (10, 4, 6)
    split = {role: {i.item_id for i in bm.items_for_role(items, role, roles, seed=3, name="mmlu_stem")} for role in bm.ROLES}
    assert not (split["queries"] & split["evaluation"]) and not (split["guard"] & (split["queries"] | split["evaluation"]))
    assert set().union(*split.values()) == {i.item_id for i in items}
    # Seeded: the same split again, another under another seed or benchmark name.
    assert bm.assign_roles(items, roles, seed=3, name="mmlu_stem") == assigned
    assert bm.assign_roles(items, roles, seed=4, name="mmlu_stem") != assigned
    assert bm.assign_roles(items, roles, seed=3, name="mmlu_social_sciences") != assigned
    # The study's design: every item in every role.
    overlapping = bm.items_for_role(items, "queries", {"design": "overlapping"}, seed=3, name="x")
    assert overlapping == bm.items_for_role(items, "evaluation", {"design": "overlapping"}, seed=3, name="x") == items
    with pytest.raises(CapatlasError, match=r"item_roles.*leave no evaluation items"):
        bm.assign_roles(items, {"queries": 0.6, "guard": 0.4}, seed=3, name="x")
    with pytest.raises(CapatlasError, match=r"benchmark 'x': none of its 60 items is a guard item"):
        bm.items_for_role(items, "guard", {"queries": 0.5}, seed=3, name="x")


def test_query_sets_hold_only_query_items_and_record_the_split(tmp_path, tok_dir, cli):
    world = write_arc_world(tmp_path)
    bench = dict(ARC_BENCH)
    config_path = write_benchmark_config(tmp_path, [bench])
    config = yaml.safe_load(config_path.read_text())
    config["item_roles"] = {"design": "held_out", "queries": 0.5}
    config_path.write_text(yaml.safe_dump(config))
    out = tmp_path / "q" / "arc_challenge"
    argv = ["queries", "--config", str(config_path), "--benchmark", "arc_challenge",
            "--tokenizer", str(tok_dir), "--out", str(out), "--world", str(world)]  # fmt: skip
    assert cli(argv) == 0
    summary = json.loads((out / "queries.json").read_text())
    items = bm.load_items(bench, seed=3, world_dir=world)
    evaluated = {i.item_id for i in bm.items_for_role(items, "evaluation", config["item_roles"], seed=3, name="arc_challenge")}
    assert summary["item_ids"] and not set(summary["item_ids"]) & evaluated
    assert set(summary["item_ids"]) | evaluated == {i.item_id for i in items}
    assert summary["item_roles"] == {"design": "held_out", "queries_fraction": 0.5, "guard_fraction": 0.0,
                                     "items": {"queries": 4, "evaluation": 4, "guard": 0}}  # fmt: skip


def test_cli_bad_item_leaves_no_output(tmp_path, tok_dir, cli, capsys):
    rows = [*ARC_ROWS[:3], {**ARC_ROWS[3], "answerKey": "Z"}]
    src = tmp_path / "arc.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    bench = {"name": "arc", "domain": "stem", "capability": "reasoning", "loader": "arc", "source": str(src)}
    config = write_benchmark_config(tmp_path, [bench], query=tok_dir)
    out = tmp_path / "q" / "arc"
    code = cli(["queries", "--config", str(config), "--benchmark", "arc", "--out", str(out)])
    assert code == 2
    assert "ARC_3" in capsys.readouterr().err
    assert not out.exists()
    assert not out.parent.exists() or not list(out.parent.iterdir())

    # Fixed, it runs with the defaults: models.query.path as tokenizer, the run's demo world for {world}.
    world_src = tmp_path / "results" / "t" / "demo" / "world" / "arc.jsonl"
    world_src.parent.mkdir(parents=True)
    world_src.write_text("".join(json.dumps(r) + "\n" for r in ARC_ROWS[:3]))
    bench["source"] = "{world}/arc.jsonl"
    config = write_benchmark_config(tmp_path, [bench], query=tok_dir)
    assert cli(["queries", "--config", str(config), "--benchmark", "arc", "--out", str(out)]) == 0
    summary = json.loads((out / "queries.json").read_text())
    assert summary["tokenizer"] == str(tok_dir.resolve()) and summary["source"] == str(world_src.resolve())
    assert summary["item_ids"] == ["ARC_0", "ARC_1", "ARC_2"] and summary["prompt_format"] == "olmes_rc"


def test_write_queries_is_atomic(tmp_path, tokenizer):
    out = tmp_path / "q"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    rendered = [bm.render(ITEMS[0], "olmes_rc", benchmark_loader="arc")]
    ds = qm.build_queries(ITEMS[:1], rendered, tokenizer, max_length=64, benchmark="b")

    class Boom(RuntimeError):
        pass

    class Exploding:
        def save_to_disk(self, path):
            ds.save_to_disk(path)
            raise Boom

    with pytest.raises(Boom):
        qm.write_queries(Exploding(), out, {})
    # The old directory is untouched and no temporary sibling is left behind.
    assert [p.name for p in tmp_path.iterdir()] == ["q"]
    assert [p.name for p in out.iterdir()] == ["stale.txt"]
    qm.write_queries(ds, out, {"n": 1})
    assert not (out / "stale.txt").exists() and json.loads((out / "queries.json").read_text()) == {"n": 1}


def test_queries_are_cut_to_what_attribution_takes(tmp_path, tok_dir, cli):
    """max_length, token_batch_size and the model's limit all bound a query; Bergson then takes every row as is."""
    import datasets
    import shutil

    from transformers import Olmo3Config

    from capatlas.attribution.context import load_query_set

    long_rows = [{**row, "question": f"Which animal is number {k}? " + "the cat sat on the mat " * 12}
                 for k, row in enumerate(ARC_ROWS[:3])]  # fmt: skip
    src = tmp_path / "arc.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in long_rows))
    bench = {"name": "arc", "domain": "stem", "capability": "reasoning", "loader": "arc", "source": str(src)}
    config_path = write_benchmark_config(tmp_path, [bench])
    config = yaml.safe_load(config_path.read_text())
    config["attribution"].update(max_length=64, token_batch_size=24)
    config_path.write_text(yaml.safe_dump(config))

    def build(tokenizer_dir: Path, name: str) -> tuple[datasets.Dataset, dict]:
        out = tmp_path / "q" / name
        argv = ["queries", "--config", str(config_path), "--benchmark", "arc", "--tokenizer", str(tokenizer_dir)]
        assert cli([*argv, "--out", str(out)]) == 0
        return datasets.load_from_disk(str(out)), json.loads((out / "queries.json").read_text())

    # The token batch (24) is below attribution.max_length (64): queries are cut to 24, from the left.
    ds, summary = build(tok_dir, "batch")
    assert summary["max_length"] == 24 and summary["n_truncated"] == 3
    assert summary["max_length_limits"]["attribution.token_batch_size"] == 24
    assert max(len(ids) for ids in ds["input_ids"]) == 24
    assert all(row["completion"].strip() == "whale" and row["labels"][-1] != qm.IGNORE_INDEX for row in ds)
    assert len(load_query_set(tmp_path / "q" / "batch", name="arc", max_length=24).item_ids) == 3

    # A model that takes only 20 positions caps them further.
    model_dir = tmp_path / "model"
    shutil.copytree(tok_dir, model_dir)
    Olmo3Config(vocab_size=400, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=20).save_pretrained(model_dir)  # fmt: skip
    ds, summary = build(model_dir, "model")
    assert summary["max_length"] == 20 and summary["max_length_limits"]["model"] == 20
    assert max(len(ids) for ids in ds["input_ids"]) == 20
    assert qm.query_max_length({"attribution": {"max_length": 64, "token_batch_size": 24}}, None, 10) == 10

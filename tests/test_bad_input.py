"""Bad input, table-driven: each case is what a user types, the message they get, and no partial output.

Each case builds a tiny input in its own directory and runs what the user
would run: `snakemake -n` for mistakes in the config (the first thing a
run does is plan the DAG), or the stage's command for mistakes in a file a
stage reads. Every case must fail with a message that names the key, file,
row or item at fault, and leave no output behind.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from capatlas import cli
from helpers_analysis import make_scores, write_shards
from helpers_corpus import build_tokenizer, make_records, write_config, write_records
from helpers_runs import snakemake_command


@dataclass
class Failure:
    """What the user saw: exit status, the message, and the directory outputs would have gone to."""

    returncode: int
    message: str
    outputs: Path
    # Files under `outputs` before the command ran (its inputs), not counted as its output.
    existing: frozenset[Path] = frozenset()


def snakemake_dry_run(workdir: Path, config: dict) -> Failure:
    config_path = workdir / "config.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    done = subprocess.run(
        snakemake_command(workdir, config_path, "-n", cores=1),
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
        timeout=300,
    )
    return Failure(done.returncode, done.stdout + done.stderr, workdir / "results")


def files_under(directory: Path) -> frozenset[Path]:
    return frozenset(p for p in directory.rglob("*") if not p.is_dir()) if directory.exists() else frozenset()


def capatlas(argv: list[str], outputs: Path, capsys) -> Failure:
    existing = files_under(outputs)
    capsys.readouterr()
    code = cli.main(argv)
    captured = capsys.readouterr()
    return Failure(code, captured.err, outputs, existing)


def study_config(tmp: Path, **sections) -> dict:
    """A non-demo config over a tiny local corpus and tokenizer; `sections` replace top-level keys."""
    corpus = tmp / "corpus"
    write_records(corpus / "part-0.jsonl", make_records(30, seed=1))
    tokenizer = build_tokenizer(tmp / "model")
    config = {
        "run": "bad_input",
        "corpus": {
            "paths": [str(corpus / "*.jsonl")],
            "labels": {
                "topic": {"source": "field", "field": "metadata.weborganizer.topic"},
                "format": {"source": "field", "field": "metadata.weborganizer.format"},
            },
        },
        "models": {"document": {"path": str(tokenizer)}},
        "manifest": {"docs_per_bin": 2, "min_tokens": 0},
        "shards": {"count": 2},
        # The 2 x 2 design in full (planning refuses a missing cell); the cases read arc_challenge only.
        "benchmarks": [
            {"name": name, "domain": domain, "capability": capability, "loader": "arc",
             "source": str(tmp / "arc.jsonl"), "split": "test"}
            for name, domain, capability in (
                ("arc_challenge", "stem", "reasoning"), ("stem_knowledge", "stem", "knowledge"),
                ("social_reasoning", "social", "reasoning"), ("social_knowledge", "social", "knowledge"),
            )
        ],  # fmt: skip
        "unlearning": {"enabled": False},
    }
    config.update(sections)
    return config


# --------------------------------------------------------------------------- the cases


def config_typo(tmp, capsys):
    config = study_config(tmp, manifest={"docs_per_bn": 2})
    return snakemake_dry_run(tmp, config)


def config_wrong_type(tmp, capsys):
    config = study_config(tmp, shards={"count": "four"})
    return snakemake_dry_run(tmp, config)


def missing_model(tmp, capsys):
    config = study_config(tmp)
    config["models"]["document"]["path"] = str(tmp / "no_such_model")
    return snakemake_dry_run(tmp, config)


def missing_corpus(tmp, capsys):
    config = study_config(tmp)
    config["corpus"]["paths"] = [str(tmp / "no_such_corpus" / "*.jsonl.zst")]
    return snakemake_dry_run(tmp, config)


def _manifest(tmp, capsys, records_file: Path) -> Failure:
    config = write_config(tmp / "config.yaml", study_config(tmp))
    out = tmp / "manifest"
    argv = ["manifest", "--config", str(config), "--files", str(records_file), "--tokenizer", str(tmp / "model"),
            "--out", str(out)]  # fmt: skip
    return capatlas(argv, out, capsys)


def malformed_corpus_line(tmp, capsys):
    path = tmp / "broken" / "part-0.jsonl"
    write_records(path, make_records(5, seed=2))
    lines = path.read_text().splitlines(keepends=True)
    lines[2] = lines[2][: len(lines[2]) // 2] + "\n"  # line 3 cut in half, as a truncated copy leaves it
    path.write_text("".join(lines))
    return _manifest(tmp, capsys, path)


def unknown_label(tmp, capsys):
    records = make_records(5, seed=3)
    records[3]["metadata"]["weborganizer"]["topic"] = "underwater_basket_weaving"
    return _manifest(tmp, capsys, write_records(tmp / "labels" / "part-0.jsonl", records))


def invalid_benchmark_answer(tmp, capsys):
    items = [
        {
            "id": f"q{k}",
            "question": "which river is longest ?",
            "choices": {"text": ["the river", "a court", "the market", "an engine"], "label": ["A", "B", "C", "D"]},
            "answerKey": "E" if k == 1 else "A",
        }
        for k in range(3)
    ]
    (tmp / "arc.jsonl").write_text("".join(json.dumps(item) + "\n" for item in items))
    config = write_config(tmp / "config.yaml", study_config(tmp))
    out = tmp / "queries"
    argv = ["queries", "--config", str(config), "--benchmark", "arc_challenge", "--tokenizer", str(tmp / "model"),
            "--out", str(out)]  # fmt: skip
    return capatlas(argv, out, capsys)


def tokenizer_not_matching_model(tmp, capsys):
    from helpers_unlearning import arc_items, sentences, tiny_model_dir

    from capatlas.demo.tokenizer import train_tokenizer

    model = tiny_model_dir(tmp / "model_dir")
    # A user's model directory with another model's tokenizer: ids past the embedding.
    train_tokenizer(sentences(400, seed=9) + [f"word{k}" for k in range(600)], 1000).save_pretrained(model)
    (tmp / "arc.jsonl").write_text("".join(json.dumps(item) + "\n" for item in arc_items(3)))
    config = write_config(tmp / "config.yaml", study_config(tmp, evaluation={"batch_size": 4, "threads": 1}))
    out = tmp / "eval"
    argv = ["evaluate", "--config", str(config), "--model", str(model), "--out", str(out / "base.json")]
    return capatlas(argv, out, capsys)


def shard_from_other_preconditioner(tmp, capsys):
    data = make_scores(3, docs_per_bin=1, n_queries=2)
    scores, binsums = write_shards(
        data, tmp / "attribution", 4, provenance_edits={2: {"preconditioner.provenance_sha256": "c" * 64}}
    )
    config = write_config(tmp / "config.yaml", study_config(tmp, analysis={"bootstrap": 0, "permutations": 0}))
    out = tmp / "influence"
    argv = ["influence", "--config", str(config), "--scores", *map(str, scores), "--binsums", *map(str, binsums),
            "--out", str(out)]  # fmt: skip
    return capatlas(argv, out, capsys)


def empty_forget_set(tmp, capsys):
    run_dir = tmp / "unlearning" / "arc_challenge" / "topic-literature" / "influence" / "seed0"
    forget = run_dir / "forget_set.parquet"
    forget.parent.mkdir(parents=True)
    empty = pa.table({"doc_id": pa.array([], pa.string()), "text": pa.array([], pa.string())})
    pq.write_table(empty, forget)
    retain = tmp / "unlearning" / "retain" / "seed0.parquet"
    retain.parent.mkdir(parents=True)
    pq.write_table(pa.table({"doc_id": ["d1"], "text": ["the river"]}), retain)
    (tmp / "base.json").write_text("{}")
    config = write_config(tmp / "config.yaml", study_config(tmp, unlearning={"enabled": True}))
    argv = ["unlearn", "--config", str(config), "--model", str(tmp / "model"), "--forget-set", str(forget),
            "--retain-pool", str(retain), "--baseline", str(tmp / "base.json"), "--out", str(run_dir)]  # fmt: skip
    return capatlas(argv, run_dir, capsys)


@dataclass(frozen=True)
class Case:
    make: Callable[[Path, object], Failure]
    # Every fragment must be in the message.
    expected: tuple[str, ...]


CASES = {
    "config typo": Case(config_typo, ("unknown config key 'manifest.docs_per_bn'", "did you mean 'docs_per_bin'")),
    "config wrong type": Case(config_wrong_type, ("config key 'shards.count'", "'four'", "integer")),
    "missing model path": Case(missing_model, ("configured input(s) do not exist", "models.document.path", "no_such_model")),
    "missing corpus path": Case(missing_corpus, ("corpus glob", "no_such_corpus/*.jsonl.zst", "matches no file")),
    # Stage commands: exit status 2, "capatlas <stage>: error: <message>" on stderr.
    "malformed corpus line": Case(
        malformed_corpus_line, ("capatlas manifest: error: ", "broken/part-0.jsonl", "line 3", "malformed JSON")
    ),
    "unknown label": Case(
        unknown_label, ("capatlas manifest: error: ", "labels/part-0.jsonl", "line 4", "underwater_basket_weaving")
    ),
    "benchmark answer not a choice": Case(
        invalid_benchmark_answer, ("capatlas queries: error: ", "arc_challenge", "q1", "'E'", "not among the choice")
    ),
    "tokenizer not matching the model": Case(
        tokenizer_not_matching_model, ("capatlas evaluate: error: ", "tokenizer", "model_dir")
    ),
    "shard from another preconditioner": Case(
        shard_from_other_preconditioner,
        ("capatlas influence: error: ", "shard-00002.parquet", "different attribution run", "preconditioner"),
    ),
    "empty forget set": Case(empty_forget_set, ("capatlas unlearn: error: ", "forget_set.parquet", "is empty")),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_named_and_leaves_no_output(name, tmp_path, capsys):
    case = CASES[name]
    failure = case.make(tmp_path, capsys)
    assert failure.returncode != 0, f"{name}: accepted\n{failure.message[-3000:]}"
    if case.expected[0].startswith("capatlas "):
        assert failure.returncode == 2, failure.message[-3000:]
    missing = [fragment for fragment in case.expected if fragment not in failure.message]
    assert not missing, f"{name}: {missing} not in the message:\n{failure.message[-3000:]}"
    # A user error is a message, not a crash.
    assert "Traceback" not in failure.message, failure.message[-3000:]
    leftovers = [
        path
        for path in sorted(files_under(failure.outputs) - failure.existing)
        # A run that starts writes its validated config (configs/<hash>.yaml, and config.yaml for people).
        if path.relative_to(failure.outputs).parts[1:] != ("config.yaml",)
        and path.relative_to(failure.outputs).parts[1:2] != ("configs",)
    ]
    assert not leftovers, f"{name}: partial output {leftovers[:5]}"


def test_a_job_stopped_with_sigterm_leaves_no_scratch_or_partial_output(tmp_path):
    # How SLURM stops a job at its time limit or on scancel: SIGTERM mid-write. The
    # stage unwinds like any failure (exit 143), so neither Bergson's scratch
    # directory nor a half-written output stays behind, and the default
    # handler is back afterwards.
    import signal
    import time

    from capatlas.attribution.context import bergson_workdir
    from capatlas.fileio import atomic_path

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as stopped:
        with cli.sigterm_unwinds():
            with bergson_workdir(tmp_path / "scores.parquet") as scratch, atomic_path(tmp_path / "binsums.safetensors") as tmp:
                (scratch / "scores.bin").write_bytes(b"\0" * 64)
                tmp.write_bytes(b"partial")
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(10)  # the handler interrupts this
    assert stopped.value.code == 128 + signal.SIGTERM
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is before

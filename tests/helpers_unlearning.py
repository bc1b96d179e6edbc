"""Tiny models, tokenizers, benchmarks and tables for the evaluation and unlearning tests."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from capatlas.artifacts.bin_matrix import write_bin_matrix
from capatlas.artifacts.scores import read_score_provenance, run_signature, scores_table, write_scores
from capatlas.config import validate_config
from capatlas import plan
from capatlas.corpus.manifest import Candidate, manifest_table, text_sha256
from capatlas.corpus.shard import SHARD_SCHEMA
from capatlas.fileio import file_sha256, write_parquet
from capatlas.taxonomy import bin_id

WORDS = (
    "the cat sat on a mat while dogs ran far away from red boxes and blue hats "
    "every answer is here question choice model learns facts about owls and rivers"
).split()

TINY_MODEL = {
    "vocab_size": 300,
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "max_position_embeddings": 256,
    "sliding_window": 16,
}


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 14))) for _ in range(n)]


def tiny_model_dir(path: Path, seed: int = 0) -> Path:
    """A randomly initialised Olmo3ForCausalLM + BPE tokenizer saved as an HF directory."""
    import torch

    from capatlas.demo.model import build_model
    from capatlas.demo.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(sentences(200, seed), TINY_MODEL["vocab_size"])
    torch.manual_seed(seed)
    model = build_model(TINY_MODEL, tokenizer)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def arc_items(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for k in range(n):
        texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4))) for _ in range(4)]
        labels = ["A", "B", "C", "D"] if k % 3 else ["1", "2", "3", "4"]
        rows.append(
            {
                "id": f"item-{k}",
                "question": " ".join(rng.choice(WORDS) for _ in range(6)) + "?",
                "choices": {"text": texts, "label": labels},
                "answerKey": labels[rng.randrange(4)],
            }
        )
    return rows


def write_benchmarks(root: Path, names: tuple[str, ...] = ("bench_a", "bench_b"), n_items: int = 6) -> list[dict]:
    """ARC-schema jsonl files, one per benchmark; returns their config entries."""
    entries = []
    for k, name in enumerate(names):
        path = root / f"{name}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in arc_items(n_items, seed=k + 1)))
        entries.append(
            {
                "name": name,
                "domain": "social" if k % 2 == 0 else "stem",
                "capability": "reasoning",
                "loader": "arc",
                "source": str(path),
                "split": "test",
                "prompt_format": ["olmes_rc", "olmes_mc"][k % 2],
            }
        )
    return entries


def make_config(benchmarks: list[dict], item_roles: dict | None = None, **unlearning) -> dict:
    """A validated config for the tests: no demo, the given benchmarks and unlearning overrides.

    Every item is evaluated (item_roles overlapping) unless `item_roles` says otherwise.
    """
    raw = {
        "seed": 3,
        "benchmarks": benchmarks,
        "item_roles": item_roles or {"design": "overlapping"},
        "corpus": {"paths": ["unused"], "labels": {"topic": {"field": "t"}, "format": {"field": "f"}}},
        "models": {"document": {"path": "unused"}},
        "evaluation": {"batch_size": 5, "threads": 1, "device": "cpu"},
        "unlearning": _deep(
            {
                "unit": "topic",
                "units": {"select": "top_k", "top_k": 1},
                "forget": {"n_docs": 3, "seeds": [0, 1], "match_pool": 3, "token_tolerance": 0.1},
                "retain": {"docs_per_unit": 2, "resample_every": 0},
                "train": {"batch_size": 2, "grad_accum": 1, "max_steps": 3, "max_length": 32, "lr": 1e-2},
                "device": "cpu",
                "threads": 1,
            },
            unlearning,
        ),
    }
    return validate_config(raw, source="test config")


def _deep(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        out[key] = _deep(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def synthetic_corpus(benchmarks: tuple[str, ...], *, docs_per_bin: int = 3, topics=(0, 1, 2), formats=(0, 1), seed=0):
    """Scored documents of a few bins: manifest columns, one score column per benchmark, and text."""
    rng = np.random.default_rng(seed)
    rows = []
    for t in topics:
        for f in formats:
            for k in range(docs_per_bin):
                row = {
                    "doc_id": f"d-{t:02d}-{f:02d}-{k}",
                    "bin_id": bin_id(t, f),
                    "topic_id": t,
                    "format_id": f,
                    "n_tokens": int(rng.integers(20, 200)),
                    "text": " ".join(sentences(2, seed=t * 100 + f * 10 + k)),
                }
                for b in benchmarks:
                    row[b] = float(rng.normal())
                rows.append(row)
    return pd.DataFrame(rows)


def bin_matrix_from(docs: pd.DataFrame, benchmarks: tuple[str, ...]) -> pd.DataFrame:
    """A long bin matrix (benchmark, bin_id, n_docs, mean, zscore) from document scores."""
    frames = []
    for b in benchmarks:
        means = docs.groupby("bin_id")[b].agg(["mean", "count"])
        z = (means["mean"] - means["mean"].mean()) / means["mean"].std(ddof=1)
        frames.append(
            pd.DataFrame(
                {"benchmark": b, "bin_id": means.index, "n_docs": means["count"].to_numpy(),
                 "mean": means["mean"].to_numpy(), "zscore": z.to_numpy()}
            )
        )  # fmt: skip
    return pd.concat(frames, ignore_index=True)


def write_inputs(root: Path, docs: pd.DataFrame, benchmarks: tuple[str, ...], n_shards: int = 2) -> dict:
    """manifest.parquet, scores and shards in the pipeline's formats; returns their paths."""
    root.mkdir(parents=True, exist_ok=True)
    manifest = root / "manifest.parquet"
    # Through the corpus stages' own table builders and schemas, as the manifest and shard stages write them.
    candidates = [
        Candidate(0, text_sha256(text), doc, int(bin_), int(n), "synthetic.jsonl", row)
        for row, (doc, bin_, n, text) in enumerate(zip(docs["doc_id"], docs["bin_id"], docs["n_tokens"], docs["text"]))
    ]
    write_parquet(manifest_table(candidates), manifest)
    scores, shards = [], []
    (root / "scores").mkdir(exist_ok=True)
    for k in range(n_shards):
        part = docs.iloc[k::n_shards]
        shards.append(root / plan.shard_file(k))
        columns = [part[field.name].tolist() for field in SHARD_SCHEMA]
        write_parquet(pa.table([pa.array(c, f.type) for c, f in zip(columns, SHARD_SCHEMA)], schema=SHARD_SCHEMA), shards[-1])
        # Through the scores owner, with the provenance score-shard records (which shard, its sha256).
        provenance = {"stage": "score-shard", "shard": {"path": str(shards[-1]), "sha256": file_sha256(shards[-1])}}
        table = scores_table(
            part["doc_id"].tolist(), part["bin_id"].to_numpy(), {b: part[b].to_numpy() for b in benchmarks}, provenance
        )
        scores.append(root / "scores" / f"shard-{k:05d}.parquet")
        write_scores(scores[-1], table)
    matrix = root / "bin_matrix.parquet"
    # Through the bin matrix's owner, with the provenance an influence job records.
    write_bin_matrix(
        matrix,
        bin_matrix_from(docs, benchmarks),
        {"stage": "influence", "attribution_run": run_signature(read_score_provenance(scores[0]))},
    )
    return {"manifest": manifest, "scores": scores, "shards": shards, "bin_matrix": matrix}

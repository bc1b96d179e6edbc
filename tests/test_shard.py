"""Token-balanced shards with text, read back from the corpus and checked against the manifest."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers_corpus import (
    make_config,
    make_records,
    split_records,
    tokenizer_dir,  # noqa: F401  (fixture)
    write_config,
    write_records,
)

from capatlas import cli
from capatlas.corpus.manifest import text_sha256
from capatlas.corpus.shard import SHARD_SCHEMA, assign_shards, write_shards


def test_greedy_assignment_rule():
    # Sorted by tokens desc then doc_id: e(9) a(5) b(5) c(3) d(1); lightest shard, ties -> lowest k.
    tokens = [5, 5, 3, 1, 9]
    ids = ["a", "b", "c", "d", "e"]
    assert assign_shards(tokens, ids, 2).tolist() == [1, 1, 0, 1, 0]  # shards end at 12 and 11 tokens
    assert assign_shards(tokens, ids, 7).tolist() == [1, 2, 3, 4, 0]


def test_assignment_is_balanced():
    rng = random.Random(3)
    tokens = [rng.randint(16, 600) for _ in range(1000)]
    ids = [f"d{i:04d}" for i in range(1000)]
    for count in (3, 8, 16):
        assignment = assign_shards(tokens, ids, count)
        totals = np.bincount(assignment, weights=tokens, minlength=count)
        assert totals.max() / totals.min() < 1.01
        assert totals.max() - totals.min() <= max(tokens)


def build_manifest_dir(
    tmp_path, tokenizer, records, parts=(40, 30, 50), names=("a.jsonl.zst", "b.parquet", "c.jsonl.gz")
):
    files = [
        write_records(tmp_path / "corpus" / name, part)
        for name, part in zip(names, split_records(records, list(parts)), strict=True)
    ]
    config = make_config(tokenizer, manifest={"docs_per_bin": 5, "min_tokens": 6})
    config_path = write_config(tmp_path / "config.yaml", config)
    out = tmp_path / "manifest"
    code = cli.main(["manifest", "--config", str(config_path), "--out", str(out), "--files", *map(str, files)])
    assert code == 0
    return config, config_path, out, files


def read_shards(directory, count):
    return [pq.read_table(Path(directory) / f"shard-{k:05d}.parquet") for k in range(count)]


def test_shards_partition_the_manifest_with_checked_text(tmp_path, tokenizer_dir, capsys):
    records = make_records(120, seed=2, topics=4, formats=3, max_words=60)
    config, config_path, manifest_dir, _ = build_manifest_dir(tmp_path, tokenizer_dir, records)
    out = tmp_path / "shards"
    assert cli.main(["shard", "--config", str(config_path), "--manifest", str(manifest_dir), "--out", str(out)]) == 0
    manifest = pq.read_table(manifest_dir / "manifest.parquet").to_pylist()
    by_id = {r["doc_id"]: r for r in manifest}
    texts = {r["id"]: r["text"] for r in records}
    shards = read_shards(out, 3)
    seen = []
    for table in shards:
        assert table.schema.equals(SHARD_SCHEMA)
        rows = table.to_pylist()
        assert [r["doc_id"] for r in rows] == sorted(r["doc_id"] for r in rows)
        for r in rows:
            assert r["text"] == texts[r["doc_id"]]
            assert text_sha256(r["text"]) == by_id[r["doc_id"]]["text_sha256"]
            assert (r["bin_id"], r["n_tokens"]) == (by_id[r["doc_id"]]["bin_id"], by_id[r["doc_id"]]["n_tokens"])
        seen.extend(r["doc_id"] for r in rows)
    assert sorted(seen) == sorted(by_id)  # every manifest doc in exactly one shard
    tokens = [sum(t.column("n_tokens").to_pylist()) for t in shards]
    assert max(tokens) / min(tokens) < 1.1
    summary = json.loads((out / "shards.json").read_text())
    assert [s["tokens"] for s in summary["shards"]] == tokens
    assert [s["docs"] for s in summary["shards"]] == [len(t) for t in shards]
    assert summary["total_docs"] == len(manifest)
    assert sorted(p.name for p in out.iterdir()) == [
        "shard-00000.parquet",
        "shard-00001.parquet",
        "shard-00002.parquet",
        "shards.json",
    ]

    # Deterministic: again, and with two reader processes, byte for byte.
    again = write_shards(manifest_dir, tmp_path / "shards2", count=3, threads=2)
    assert again == summary
    for k in range(3):
        name = f"shard-{k:05d}.parquet"
        assert (out / name).read_bytes() == (tmp_path / "shards2" / name).read_bytes()


def test_more_shards_than_documents(tmp_path, tokenizer_dir, caplog):
    records = make_records(6, seed=1, topics=1, formats=1)
    _, _, manifest_dir, _ = build_manifest_dir(tmp_path, tokenizer_dir, records, parts=(6,), names=("a.jsonl",))
    n_docs = pq.read_metadata(manifest_dir / "manifest.parquet").num_rows
    with caplog.at_level(logging.WARNING):
        summary = write_shards(manifest_dir, tmp_path / "shards", count=n_docs + 3)
    assert "will be empty" in caplog.text
    shards = read_shards(tmp_path / "shards", n_docs + 3)
    assert [len(t) for t in shards] == [1] * n_docs + [0] * 3
    assert all(t.schema.equals(SHARD_SCHEMA) for t in shards)
    assert summary["count"] == n_docs + 3


def test_changed_corpus_is_detected_and_nothing_written(tmp_path, tokenizer_dir, capsys):
    records = make_records(30, seed=5, topics=2, formats=2)
    _, config_path, manifest_dir, files = build_manifest_dir(
        tmp_path, tokenizer_dir, records, parts=(30,), names=("a.jsonl",)
    )
    locations = pq.read_table(manifest_dir / "locations.parquet").to_pylist()
    victim = locations[len(locations) // 2]
    changed = [dict(r) for r in records]
    changed[victim["row"]]["text"] += " edited"
    write_records(files[0], changed)
    out = tmp_path / "shards"
    code = cli.main(["shard", "--config", str(config_path), "--manifest", str(manifest_dir), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert f"file {files[0]}, line {victim['row'] + 1}" in err and "text_sha256" in err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".shards")]

    write_records(files[0], records[: victim["row"]])  # truncated corpus
    code = cli.main(["shard", "--config", str(config_path), "--manifest", str(manifest_dir), "--out", str(out)])
    assert code == 2 and f"has no row {victim['row']}" in capsys.readouterr().err
    assert not out.exists()


def test_missing_manifest_files_are_named(tmp_path):
    from capatlas.errors import CapatlasError

    (tmp_path / "m").mkdir()
    with pytest.raises(CapatlasError, match="locations.parquet does not exist|manifest.parquet does not exist"):
        write_shards(tmp_path / "m", tmp_path / "s", count=2)
    assert not (tmp_path / "s").exists()

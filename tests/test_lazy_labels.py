"""Lazy labels: the classifier runs only where the sample needs it, and the sample is the eager one's."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pytest
from helpers_corpus import (  # noqa: F401
    FakeClassifier,
    make_config,
    skewed_format,
    split_records,
    text_of,
    tokenizer_dir,
    write_config,
    write_records,
)

from capatlas import cli
from capatlas.corpus import lazy_scan
from capatlas.taxonomy import N_FORMATS

OUTPUTS = ("manifest.parquet", "locations.parquet")


def skewed_corpus(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    records = []
    for i in range(n):
        text = text_of(rng.randint(3, 40), rng)
        records.append({"id": f"doc-{i:06d}", "text": text, "meta": {"t": rng.choice([0, 3, 7])}})
    for i in range(0, n, 25):  # exact duplicates, in other files, labelled differently ('copy-' sorts first)
        j = rng.randrange(n)
        records[i] = {**records[j], "id": f"copy-{i:06d}", "meta": dict(records[j]["meta"])}
    for r in records:
        r["meta"]["f"] = skewed_format(r["text"], r["id"])
    return records


@pytest.mark.parametrize("allocation", ["quota", "proportional"])
def test_lazy_labels_give_the_eager_sample(tmp_path, tokenizer_dir, monkeypatch, capsys, allocation):
    fake = FakeClassifier()
    monkeypatch.setattr(lazy_scan, "classifier_for", lambda corpus, facets: fake)
    records = skewed_corpus(6000, seed=1)
    files = [
        write_records(tmp_path / "corpus" / f"part-{i}.jsonl", part)
        for i, part in enumerate(split_records(records, [1400, 1600, 1800, 1200]))
    ]
    manifest = {"docs_per_bin": 2, "min_tokens": 6, "allocation": allocation, "fraction": 0.05}
    topic = {"source": "field", "field": "meta.t"}
    eager = make_config(tokenizer_dir, manifest=manifest)
    eager["corpus"]["labels"] = {"topic": topic, "format": {"source": "field", "field": "meta.f"}}
    lazy = make_config(tokenizer_dir, manifest=manifest)
    lazy["corpus"]["labels"] = {"topic": topic, "format": {"source": "classifier", "model": str(tmp_path)}}
    eager_path, lazy_path = write_config(tmp_path / "eager.yaml", eager), write_config(tmp_path / "lazy.yaml", lazy)
    base = ["manifest", "--files", *map(str, files), "--threads", "1"]
    assert cli.main([*base, "--config", str(eager_path), "--out", str(tmp_path / "eager")]) == 0, capsys.readouterr().err
    # One process over everything, and map-reduce over two groups.
    assert cli.main([*base, "--config", str(lazy_path), "--out", str(tmp_path / "lazy")]) == 0, capsys.readouterr().err
    classified_single = fake.n_classified
    scans = []
    for g, group in enumerate([files[:2], files[2:]]):
        out = tmp_path / "scan" / str(g)
        argv = ["manifest-scan", "--config", str(lazy_path), "--group", str(g), "--out", str(out), "--threads", "1"]
        assert cli.main([*argv, "--files", *map(str, group)]) == 0, capsys.readouterr().err
        scans.append(str(out))
    merged = tmp_path / "merged"
    assert cli.main([*base, "--config", str(lazy_path), "--out", str(merged), "--scans", *scans]) == 0
    for out in ("lazy", "merged"):
        for name in OUTPUTS:
            assert (tmp_path / out / name).read_bytes() == (tmp_path / "eager" / name).read_bytes(), (out, name)
    contract = json.loads((tmp_path / "lazy" / "contract.json").read_text())
    streams = contract["lazy_labels"]["streams"]
    assert sum(s["records"] for s in streams.values()) == len(records)
    fraction = sum(s["classified"] for s in streams.values()) / len(records)
    assert classified_single < len(records) and fraction < 0.9, fraction
    merged_contract = json.loads((merged / "contract.json").read_text())
    merged_streams = merged_contract["lazy_labels"]["streams"]
    assert sum(s["classified"] for s in merged_streams.values()) < 0.9 * len(records)
    if allocation == "quota":
        # Copies classified in one group and not in the other were resolved by classifying them in the merge.
        assert merged_contract["second_pass_files"] > 0
    # Estimated counts keep each topic's totals exact and stay near the eager (exact) counts.
    exact = {int(r["bin_id"]): r for r in _summary(tmp_path / "eager")}
    estimated = {int(r["bin_id"]): r for r in _summary(tmp_path / "lazy")}
    for t in (0, 3, 7):
        bins = range(t * N_FORMATS, (t + 1) * N_FORMATS)
        for column in ("population", "after_dedup", "after_filter"):
            assert sum(int(estimated[b][column]) for b in bins) == sum(int(exact[b][column]) for b in bins), column
    assert all(estimated[b]["sampled"] == exact[b]["sampled"] for b in exact)


def _summary(out: Path):
    import csv

    with open(out / "bin_summary.csv") as handle:
        return list(csv.DictReader(handle))


def test_lazy_labels_on_the_demo_world_with_a_built_classifier(tmp_path, tokenizer_dir, capsys):
    """The real classifier path (a BERT the test builds) on the demo world: lazy == labels for every file."""
    from helpers_corpus import build_classifier

    from capatlas.config import load_config
    from capatlas.demo import world as demo_world

    model = build_classifier(tmp_path / "classifier")
    world = tmp_path / "world"
    demo_world.build_world(load_config(Path(__file__).parents[1] / "config" / "config.yaml"), world)
    files = sorted((world / "corpus").glob("*.jsonl.zst"))
    config = make_config(
        tokenizer_dir,
        manifest={"docs_per_bin": 2, "min_tokens": 16},
        corpus={
            "labels": {
                "topic": {"source": "field", "field": "metadata.weborganizer.topic"},
                "format": {"source": "classifier", "model": str(model)},
            },
            "classifier": {"batch_size": 8, "max_length": 32, "device": "cpu"},
        },
    )
    config_path = write_config(tmp_path / "config.yaml", config)
    labels_dir = tmp_path / "labels"
    from capatlas.corpus.readers import file_key

    for path in files:
        out = labels_dir / f"{file_key(path)}.parquet"
        assert cli.main(["labels", "--config", str(config_path), "--file", str(path), "--out", str(out)]) == 0
    base = ["manifest", "--config", str(config_path), "--files", *map(str, files), "--threads", "1"]
    assert cli.main([*base, "--out", str(tmp_path / "eager"), "--labels-dir", str(labels_dir)]) == 0
    assert cli.main([*base, "--out", str(tmp_path / "lazy")]) == 0, capsys.readouterr().err
    for name in OUTPUTS:
        assert (tmp_path / "lazy" / name).read_bytes() == (tmp_path / "eager" / name).read_bytes(), name
    contract = json.loads((tmp_path / "lazy" / "contract.json").read_text())
    assert sum(s["records"] for s in contract["lazy_labels"]["streams"].values()) == contract["counts"]["records"]


def test_merge_classifies_unclassified_records_that_could_enter_a_sample():
    """The merge's late check: scans that left needed records unclassified still give the full sample."""
    from capatlas.corpus import manifest as m
    from capatlas.corpus.lazy_scan import unknown_category

    settings = m.ManifestSettings(seed=0, docs_per_bin=2, min_tokens=0)
    texts = {f"text {i}": hashlib.sha256(f"text {i}".encode()).hexdigest() for i in range(6)}
    by_key = sorted((m.sampling_key(0, sha), sha, text) for text, sha in texts.items())
    # The two smallest keys were classified (bins 0 and 1); the rest were not (stream: topic 0).
    truth_bins = [0, 1, 0, 2, 0, 1]
    docs = [m.Doc(f"d{i}", 0, truth_bins[i], 10, sha, "f", i) for i, (_, sha, _) in enumerate(by_key)]
    keys = np.array([k for k, _, _ in by_key], dtype=np.uint64)
    cats = np.array([2 * d.bin_id + 1 for d in docs[:2]] + [unknown_category(0, True)] * 4, dtype=np.uint16)
    scan = m.FileScan(
        source_file="f",
        n_records=6,
        population=np.bincount([d.bin_id for d in docs[:2]], minlength=576).astype(np.int64),
        pair_keys=keys,
        pair_cats=cats,
        id_hashes=np.sort(np.array([m.doc_id_hash(d.doc_id) for d in docs], dtype=np.uint64)),
        candidates=[m.candidate(settings, d) for d in docs[:2]],
    )
    partial = m.group_partial([scan], settings)
    partial.classified = {"0": {"records": 6, "classified": 2, "threshold": int(keys[1])}}
    asked = []

    def rescan(requests):
        wanted = {int(k) for keys_, _ in requests.values() for k in keys_}
        asked.append(sorted(wanted))
        return [d for d in docs if m.doc_key(settings, d) in wanted]

    result = m.Merge(settings, [partial]).finish(rescan)
    # Every bin of topic 0 is short of the quota, so every unclassified record could enter: all classified late.
    assert asked == [sorted(int(k) for k in keys[2:])]
    expected = m.build_manifest_from_docs({"f": docs}, settings)
    assert [(c.doc_id, c.bin_id) for c in result.docs] == [(c.doc_id, c.bin_id) for c in expected.docs]
    np.testing.assert_array_equal(result.after_dedup, expected.after_dedup)
    np.testing.assert_array_equal(result.sampled, expected.sampled)

"""The manifest: dedup, min-token filter, order-independent stratified sampling, outputs."""

from __future__ import annotations

import csv
import hashlib
import json
import random
from collections import defaultdict
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
from capatlas.corpus.readers import iter_records
from capatlas.errors import CapatlasError
from capatlas.fileio import file_sha256
from capatlas.corpus.manifest import (
    BinCandidates,
    Candidate,
    Doc,
    ManifestSettings,
    build_manifest,
    build_manifest_from_docs,
    decision_counts,
    _head,
    token_counter,
    normalise_text,
    sampling_key,
    select,
    text_sha256,
)
from capatlas.taxonomy import N_BINS, TOPIC, FORMAT

# --------------------------------------------------------------------------- pure core


def test_normalise_and_hash():
    assert normalise_text("  Caf\u0065\u0301 \t\n  au  lait \u00a0 ") == "Caf\u00e9 au lait"
    assert text_sha256("a  b\n") == text_sha256("a b") == hashlib.sha256(b"a b").hexdigest()
    assert text_sha256("a b") != text_sha256("a  c")


def test_sampling_key_definition():
    sha = text_sha256("hello world")
    expected = int.from_bytes(hashlib.sha256(f"42:{sha}".encode()).digest()[:8], "big")
    assert sampling_key(42, sha) == expected
    assert sampling_key(43, sha) != expected


def _cand(key, sha, doc_id, bin_id, n_tokens=10, source="f", row=0):
    return Candidate(key, sha, doc_id, bin_id, n_tokens, source, row)


def test_select_quota_and_proportional():
    cands = [_cand(k, f"s{k}", f"d{k}", k % 3) for k in (50, 10, 40, 20, 30, 60, 70)]
    chosen = select(cands, "quota", docs_per_bin=2)
    # bin 0: keys 30, 60 -> both; bin 1: 10, 40, 70 -> 10, 40; bin 2: 20, 50 -> both
    assert sorted(c.key for c in chosen) == [10, 20, 30, 40, 50, 60]
    assert [c.bin_id for c in chosen] == sorted(c.bin_id for c in chosen)
    big = [_cand(int(f * 2**64), f"s{f}", f"d{f}", 0) for f in (0.1, 0.3, 0.5, 0.7)]
    assert {c.doc_id for c in select(big, "proportional", fraction=0.4)} == {"d0.1", "d0.3"}
    assert len(select(big, "proportional", fraction=1.0)) == 4


def test_bin_candidates_are_order_independent():
    rng = random.Random(1)
    items = [_cand(rng.randrange(1000), f"s{i % 40}", f"d{rng.randrange(10**6):07d}", 0, row=i) for i in range(300)]
    # Copies of one text share a key.
    keys = {}
    items = [c._replace(key=keys.setdefault(c.text_sha256, c.key)) for c in items]
    results = []
    for trial in range(5):
        rng.shuffle(items)
        holder = BinCandidates(cap=7, dedup=True)
        for c in items:
            holder.offer(c)
        results.append(holder.values())
    assert all(r == results[0] for r in results)
    assert len(results[0]) == 7
    best = {}
    for c in items:
        if c.text_sha256 not in best or c.doc_id < best[c.text_sha256].doc_id:
            best[c.text_sha256] = c
    assert results[0] == sorted(best.values(), key=lambda c: (c.key, c.text_sha256))[:7]


def reference_manifest(docs_by_file, settings):
    """Brute force: every copy in memory, the rule applied literally."""
    copies = [d._replace(source_file=d.source_file or name) for name, docs in docs_by_file.items() for d in docs]
    population = np.zeros(N_BINS, np.int64)
    owners = {}
    for d in copies:
        population[d.bin_id] += 1
        ident = d.text_sha256 if settings.dedup else d.doc_id
        if ident not in owners or (d.doc_id, d.source_file, d.row) < (
            owners[ident].doc_id,
            owners[ident].source_file,
            owners[ident].row,
        ):
            owners[ident] = d
    after_dedup = np.zeros(N_BINS, np.int64)
    after_filter = np.zeros(N_BINS, np.int64)
    kept = []
    for ident, d in owners.items():
        after_dedup[d.bin_id] += 1
        if d.n_tokens >= settings.min_tokens:
            after_filter[d.bin_id] += 1
            kept.append((sampling_key(settings.seed, ident), d))
    if settings.allocation == "quota":
        per_bin = defaultdict(list)
        for key, d in kept:
            per_bin[d.bin_id].append((key, d.text_sha256, d.doc_id, d))
        chosen = [t[3] for group in per_bin.values() for t in sorted(group)[: settings.docs_per_bin]]
    else:
        chosen = [d for key, d in kept if key < settings.fraction * 2**64]
    chosen.sort(key=lambda d: (d.bin_id, d.doc_id))
    return chosen, population, after_dedup, after_filter


def random_corpus(rng, n_texts=120, n_files=4, bins=((0, 0), (0, 1), (5, 3)), conflict=0.15):
    """Texts with copies across files; some copies disagree on bin or token count."""
    files = {f"f{i}": [] for i in range(n_files)}
    next_id = 0
    for t in range(n_texts):
        sha = hashlib.sha256(f"text{t}".encode()).hexdigest()
        topic, format_ = rng.choice(bins)
        n_tokens = rng.randint(1, 30)
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            tp, fm, nt = topic, format_, n_tokens
            if rng.random() < conflict:
                tp, fm = rng.choice(bins)
            if rng.random() < conflict:
                nt = max(0, n_tokens + rng.randint(-8, 8))
            name = rng.choice(list(files))
            files[name].append(Doc(f"id{rng.randrange(10**6):06d}-{next_id}", tp, fm, nt, sha, name, len(files[name])))
            next_id += 1
    return files


@pytest.mark.parametrize("allocation", ["quota", "proportional"])
@pytest.mark.parametrize("dedup", [True, False])
def test_merge_matches_brute_force_and_ignores_file_split(allocation, dedup):
    rng = random.Random(f"{allocation}-{dedup}")
    rescans = 0
    for trial in range(6):
        settings = ManifestSettings(
            seed=trial, allocation=allocation, docs_per_bin=rng.randint(1, 25), fraction=0.5, min_tokens=10, dedup=dedup
        )
        files = random_corpus(rng)
        result = build_manifest_from_docs(files, settings)
        chosen, population, after_dedup, after_filter = reference_manifest(files, settings)
        assert [(c.doc_id, c.bin_id, c.n_tokens) for c in result.docs] == [
            (d.doc_id, d.bin_id, d.n_tokens) for d in chosen
        ]
        np.testing.assert_array_equal(result.population, population)
        np.testing.assert_array_equal(result.after_dedup, after_dedup)
        np.testing.assert_array_equal(result.after_filter, after_filter)
        # Same documents regrouped into other 'files', in another order.
        everything = [d for docs in files.values() for d in docs]
        rng.shuffle(everything)
        regrouped = {f"g{i}": everything[i::3] for i in range(3)}
        again = build_manifest_from_docs(regrouped, settings)
        assert [(c.doc_id, c.n_tokens, c.text_sha256) for c in again.docs] == [
            (c.doc_id, c.n_tokens, c.text_sha256) for c in result.docs
        ]
        np.testing.assert_array_equal(again.after_filter, result.after_filter)
        # Map-reduce: files grouped into scan partials, the merge streaming over tiny key ranges.
        names = list(regrouped)
        for groups, chunk in (([names[:1], names[1:]], 7), ([[n] for n in names], 1), ([names], 1000)):
            mapped = build_manifest_from_docs(regrouped, settings, groups=groups, chunk_records=chunk)
            assert [(c.doc_id, c.n_tokens, c.text_sha256) for c in mapped.docs] == [
                (c.doc_id, c.n_tokens, c.text_sha256) for c in result.docs
            ]
            for name in ("population", "after_dedup", "after_filter", "sampled"):
                np.testing.assert_array_equal(getattr(mapped, name), getattr(result, name))
            assert mapped.rescanned_files == again.rescanned_files
        rescans += result.rescanned_files
    # Copies disagreeing on bin or filter were present and resolved by the second pass.
    assert rescans > 0 or not dedup


def test_consistent_duplicates_need_no_second_pass():
    sha = hashlib.sha256(b"t").hexdigest()
    files = {
        "a": [Doc("z9", 1, 2, 50, sha, "a", 0), Doc("m1", 1, 2, 50, hashlib.sha256(b"u").hexdigest(), "a", 1)],
        "b": [Doc("b2", 1, 2, 50, sha, "b", 0)],
    }
    result = build_manifest_from_docs(files, ManifestSettings(seed=1, docs_per_bin=5))
    assert result.rescanned_files == 0
    assert sorted(c.doc_id for c in result.docs) == ["b2", "m1"]  # smallest doc_id of the copies
    assert result.counts["duplicates"] == 1


def test_duplicate_doc_id_with_different_text_is_an_error():
    files = {
        "a": [Doc("same", 0, 0, 5, "1" * 64, "a.jsonl", 3)],
        "b": [Doc("same", 0, 0, 5, "2" * 64, "b.jsonl", 7)],
    }
    with pytest.raises(CapatlasError, match="doc_id 'same' names two different texts") as info:
        build_manifest_from_docs(files, ManifestSettings(seed=1))
    assert "a.jsonl, row 3" in str(info.value) and "b.jsonl, row 7" in str(info.value)
    same_text = {"a": [Doc("x", 0, 0, 5, "1" * 64, "a", 0)], "b": [Doc("x", 0, 0, 5, "1" * 64, "b", 0)]}
    assert len(build_manifest_from_docs(same_text, ManifestSettings(seed=1)).docs) == 1
    with pytest.raises(CapatlasError, match="appears twice"):
        build_manifest_from_docs(same_text, ManifestSettings(seed=1, dedup=False))


def test_empty_corpus_is_an_error():
    with pytest.raises(CapatlasError, match="corpus is empty"):
        build_manifest_from_docs({"a": [], "b": []}, ManifestSettings())


# --------------------------------------------------------------------------- files


def read_manifest(out):
    return pq.read_table(Path(out) / "manifest.parquet").to_pylist()


def read_summary(out):
    with open(Path(out) / "bin_summary.csv") as handle:
        return {int(r["bin_id"]): r for r in csv.DictReader(handle)}


def run_manifest(tmp_path, config, files, out, *extra):
    config_path = write_config(tmp_path / f"config-{out.name}.yaml", config)
    return cli.main(["manifest", "--config", str(config_path), "--out", str(out), "--files", *map(str, files), *extra])


def corpus_records(n=240, seed=0):
    # Few bins so quotas bind; a handful of exact duplicates (other id, extra whitespace).
    records = make_records(n, seed=seed, topics=3, formats=2, min_words=2, max_words=30)
    for i in range(0, n, 20):
        dup = dict(records[i + 1])
        dup["id"] = f"copy-{i:05d}"
        dup["text"] = "  " + records[i + 1]["text"].replace(" ", "\n ", 1) + " "
        records[i] = dup
    return records


def test_byte_identical_manifest_when_files_are_permuted_and_resplit(tmp_path, tokenizer_dir, capsys):
    records = corpus_records()
    first = [
        write_records(tmp_path / "three" / name, part)
        for name, part in zip(
            ["a.jsonl.zst", "b.parquet", "c.jsonl.gz"], split_records(records, [100, 90, 50]), strict=True
        )
    ]
    shuffled = list(records)
    random.Random(5).shuffle(shuffled)
    second = [
        write_records(tmp_path / "five" / name, part)
        for name, part in zip(
            ["v.jsonl", "w.jsonl.zst", "x.parquet", "y.jsonl.gz", "z.json"],
            split_records(shuffled, [10, 70, 60, 40, 60]),
            strict=True,
        )
    ]
    config = make_config(tokenizer_dir, manifest={"docs_per_bin": 15, "min_tokens": 8, "threads": 1})
    assert run_manifest(tmp_path, config, first, tmp_path / "out1") == 0, capsys.readouterr().err
    config2 = make_config(tokenizer_dir, manifest={"docs_per_bin": 15, "min_tokens": 8, "threads": 2})
    assert run_manifest(tmp_path, config2, reversed(second), tmp_path / "out2") == 0, capsys.readouterr().err
    a = (tmp_path / "out1" / "manifest.parquet").read_bytes()
    b = (tmp_path / "out2" / "manifest.parquet").read_bytes()
    assert a == b
    assert (tmp_path / "out1" / "bin_summary.csv").read_text() == (tmp_path / "out2" / "bin_summary.csv").read_text()

    # Locations point at the right rows, whatever the split.
    for out in ("out1", "out2"):
        locations = pq.read_table(tmp_path / out / "locations.parquet").to_pylist()
        assert [r["doc_id"] for r in locations] == sorted(r["doc_id"] for r in locations)
        rows = {r["doc_id"]: r for r in read_manifest(tmp_path / out)}
        by_file = defaultdict(dict)
        for loc in locations:
            by_file[loc["source_file"]][loc["row"]] = loc["doc_id"]
        for path, wanted in by_file.items():
            for rec in iter_records(path):
                if rec.row in wanted:
                    assert rec.doc_id == wanted[rec.row]
                    assert text_sha256(rec.text) == rows[rec.doc_id]["text_sha256"]


def _scan_groups(tmp_path, config_path, groups, tag):
    scans = []
    for g, group in enumerate(groups):
        out = tmp_path / f"scan-{tag}" / f"{g:05d}"
        argv = ["manifest-scan", "--config", str(config_path), "--group", f"{g:05d}", "--out", str(out)]
        assert cli.main([*argv, "--files", *map(str, group)]) == 0
        scans.append(str(out))
    return scans


def test_map_reduce_manifest_is_byte_identical_for_any_grouping(tmp_path, tokenizer_dir, capsys):
    """Scan jobs over any grouping of the files, merged, give the single job's manifest, summary and contract."""
    records = corpus_records(n=300, seed=3)
    names = ["a.jsonl.zst", "b.parquet", "c.jsonl.gz", "d.jsonl", "e.jsonl.zst"]
    files = [
        write_records(tmp_path / "corpus" / name, part)
        for name, part in zip(names, split_records(records, [80, 40, 90, 30, 60]), strict=True)
    ]
    config = make_config(tokenizer_dir, manifest={"docs_per_bin": 12, "min_tokens": 8, "threads": 1})
    config_path = write_config(tmp_path / "config.yaml", config)
    assert run_manifest(tmp_path, config, files, tmp_path / "single") == 0, capsys.readouterr().err
    outputs = ("manifest.parquet", "locations.parquet", "bin_summary.csv", "contract.json")
    reference = {name: (tmp_path / "single" / name).read_bytes() for name in outputs}
    for tag, groups in (("two", [files[:2], files[2:]]), ("each", [[f] for f in reversed(files)]), ("odd", [files[::2], files[1::2]])):
        scans = _scan_groups(tmp_path, config_path, groups, tag)
        out = tmp_path / f"merged-{tag}"
        argv = ["manifest", "--config", str(config_path), "--out", str(out), "--files", *map(str, files)]
        assert cli.main([*argv, "--scans", *scans]) == 0, capsys.readouterr().err
        for name in outputs:
            assert (out / name).read_bytes() == reference[name], (tag, name)
    contract = json.loads(reference["contract.json"])
    assert {i["path"] for i in contract["inputs"]} == set(map(str, files))
    assert all(i["sha256_of"] == "whole file" and i["mtime_ns"] > 0 for i in contract["inputs"])
    assert "files_per_scan" not in contract["manifest"] and "threads" not in contract["manifest"]


def test_merge_refuses_corrupt_foreign_or_incomplete_scans(tmp_path, tokenizer_dir, capsys):
    records = corpus_records(n=80, seed=4)
    files = [write_records(tmp_path / "corpus" / f"{n}.jsonl", part) for n, part in zip("ab", split_records(records, [40, 40]), strict=True)]
    config = make_config(tokenizer_dir, manifest={"docs_per_bin": 5, "min_tokens": 4})
    config_path = write_config(tmp_path / "config.yaml", config)
    scans = _scan_groups(tmp_path, config_path, [[files[0]], [files[1]]], "ok")
    out = tmp_path / "merged"
    merge = ["manifest", "--config", str(config_path), "--out", str(out), "--files", *map(str, files), "--scans"]

    assert cli.main([*merge, scans[0]]) == 2
    assert "1 not scanned" in capsys.readouterr().err and not out.exists()

    keys = Path(scans[1]) / "pair_keys.npy"
    data = bytearray(keys.read_bytes())
    data[-1] ^= 1
    keys.write_bytes(bytes(data))
    assert cli.main([*merge, *scans]) == 2
    err = capsys.readouterr().err
    assert str(keys) in err and "sha256" in err and not out.exists()

    other = write_config(tmp_path / "other.yaml", make_config(tokenizer_dir, manifest={"docs_per_bin": 6, "min_tokens": 4}))
    foreign = _scan_groups(tmp_path, other, [[files[1]]], "foreign")
    assert cli.main([*merge, scans[0], *foreign]) == 2
    assert "other sampling settings" in capsys.readouterr().err and not out.exists()


def test_head_counts_never_exceed_the_whole_text(tokenizer_dir):
    """decision_counts relies on a head cut before a space having no more tokens than the whole text."""
    counter = token_counter(str(tokenizer_dir))
    rng = random.Random(0)
    texts = [r["text"] for r in make_records(200, seed=9, min_words=5, max_words=400)]
    texts += ["  spaced   out\n\n text  " * 40, "x" * 5000, "word " * 3000]
    whole = counter.count(texts)
    for text, n in zip(texts, whole, strict=True):
        for _ in range(5):
            size = rng.randint(1, max(1, len(text)))
            assert counter.count([_head(text, size)])[0] <= n
    for min_tokens in (1, 8, 64, 2000):
        decided = decision_counts(counter, texts, min_tokens)
        assert [d >= min_tokens for d in decided] == [n >= min_tokens for n in whole]


def test_quota_dedup_filter_and_summary_counts(tmp_path, tokenizer_dir, capsys):
    religion, health = TOPIC.resolve("religion"), TOPIC.resolve("health")
    faq, news = FORMAT.resolve("faq"), FORMAT.resolve("news_article")

    def rec(i, topic, fmt, words, text=None):
        return {
            "id": f"d{i:03d}",
            "text": text or " ".join(["river"] * words) + f" w{i}",
            "meta": {"t": topic, "f": fmt},
        }

    big = [rec(i, religion, faq, 12) for i in range(10)]  # 10 docs, quota 4
    small = [rec(100 + i, health, news, 12) for i in range(2)]  # smaller than the quota
    short = [rec(200 + i, health, news, 2) for i in range(3)]  # filtered (3 tokens < 5)
    dups = [rec(300, religion, faq, 0, text=big[0]["text"] + "   "), rec(301, religion, faq, 0, text=big[0]["text"])]
    files = [
        write_records(tmp_path / "in" / "a.jsonl", big + short),
        write_records(tmp_path / "in" / "b.jsonl", small + dups),
    ]
    config = make_config(
        tokenizer_dir,
        corpus={
            "labels": {
                "topic": {"source": "field", "field": "meta.t"},
                "format": {"source": "field", "field": "meta.f"},
            }
        },
        manifest={"docs_per_bin": 4, "min_tokens": 5},
    )
    out = tmp_path / "out"
    assert run_manifest(tmp_path, config, files, out) == 0, capsys.readouterr().err
    rows = read_manifest(out)
    summary = read_summary(out)
    b_big, b_small = religion * 24 + faq, health * 24 + news
    assert len(summary) == N_BINS
    assert summary[b_big] == {
        "bin_id": str(b_big), "topic_id": str(religion), "topic": "religion", "format_id": str(faq),
        "format": "faq", "population": "12", "after_dedup": "10", "after_filter": "10", "sampled": "4",
    }  # fmt: skip
    assert (summary[b_small]["population"], summary[b_small]["after_dedup"]) == ("5", "5")
    assert (summary[b_small]["after_filter"], summary[b_small]["sampled"]) == ("2", "2")
    assert summary[0]["sampled"] == "0" and summary[0]["topic"] == "adult_content"
    assert {r["doc_id"] for r in rows if r["bin_id"] == b_small} == {"d100", "d101"}
    assert all(r["n_tokens"] >= 5 for r in rows)
    assert [r["n_tokens"] for r in rows if r["doc_id"] == "d100"] == [13]
    # The three copies of big[0] are one text; if sampled it is as d000, the smallest id.
    assert not {"d300", "d301"} & {r["doc_id"] for r in rows}
    # Quota: the 4 smallest keys among the 10 distinct texts.
    keys = sorted((sampling_key(7, text_sha256(r["text"])), r["id"]) for r in big)
    assert {r["doc_id"] for r in rows if r["bin_id"] == b_big} == {i for _, i in keys[:4]}
    assert [(r["bin_id"], r["doc_id"]) for r in rows] == sorted((r["bin_id"], r["doc_id"]) for r in rows)

    contract = json.loads((out / "contract.json").read_text())
    assert contract["counts"] == {
        "records": 17, "duplicates": 2, "distinct": 15, "filtered": 3, "after_filter": 12,
        "sampled": 6, "bins_nonempty": 2, "bins_empty": N_BINS - 2,
    }  # fmt: skip
    assert contract["seed"] == 7 and contract["allocation"] == "quota"
    assert contract["manifest"]["min_tokens"] == 5
    assert {i["path"]: i["sha256"] for i in contract["inputs"]} == {str(f): file_sha256(f) for f in files}
    assert contract["tokenizer"] == str(tokenizer_dir)
    assert len(contract["empty_bins"]) == N_BINS - 2
    assert contract["outputs"]["manifest.parquet"] == file_sha256(out / "manifest.parquet")
    schema = pq.read_schema(out / "manifest.parquet")
    assert schema.names == ["doc_id", "topic_id", "format_id", "bin_id", "n_tokens", "text_sha256"]
    assert schema.metadata is None or b"pandas" not in schema.metadata


def test_proportional_allocation(tmp_path, tokenizer_dir, capsys):
    records = make_records(300, seed=4, topics=2, formats=2)
    files = [write_records(tmp_path / "in" / "a.jsonl.zst", records)]
    config = make_config(tokenizer_dir, manifest={"allocation": "proportional", "fraction": 0.25})
    out = tmp_path / "out"
    assert run_manifest(tmp_path, config, files, out) == 0, capsys.readouterr().err
    rows = read_manifest(out)
    expected = {r["id"] for r in records if sampling_key(7, text_sha256(r["text"])) < 0.25 * 2**64}
    assert {r["doc_id"] for r in rows} == expected
    assert 40 < len(rows) < 110


def test_dedup_off_keeps_copies(tmp_path, tokenizer_dir, capsys):
    records = make_records(5)
    records.append({**records[0], "id": "again"})
    files = [write_records(tmp_path / "a.jsonl", records)]
    config = make_config(tokenizer_dir, manifest={"dedup": False, "docs_per_bin": 100})
    out = tmp_path / "out"
    assert run_manifest(tmp_path, config, files, out) == 0, capsys.readouterr().err
    assert len(read_manifest(out)) == 6
    assert json.loads((out / "contract.json").read_text())["counts"]["duplicates"] == 0


def test_classifier_labels_through_labels_dir(tmp_path, tokenizer_dir, capsys):
    import pyarrow as pa

    from capatlas.corpus.readers import file_key

    corpus = write_records(tmp_path / "data" / "common_crawl-games-0001" / "p.jsonl.zst", make_records(6))
    labels_dir = tmp_path / "labels"
    labels_dir.mkdir()
    pq.write_table(
        pa.table(
            {"row": list(range(6)), "doc_id": [f"doc-{i:05d}" for i in range(6)], "format_id": [3, 3, 4, 4, 5, 5]}
        ),
        labels_dir / f"{file_key(corpus)}.parquet",
    )
    config = make_config(
        tokenizer_dir,
        corpus={"labels": {"topic": {"source": "path"}, "format": {"source": "classifier", "model": "/models/format"}}},
        manifest={"docs_per_bin": 1},
    )
    out = tmp_path / "out"
    assert run_manifest(tmp_path, config, [corpus], out, "--labels-dir", str(labels_dir)) == 0, capsys.readouterr().err
    games = TOPIC.resolve("games")
    assert sorted(r["bin_id"] for r in read_manifest(out)) == [games * 24 + 3, games * 24 + 4, games * 24 + 5]
    # Without precomputed labels the scan classifies (lazily): the missing model is named.
    assert run_manifest(tmp_path, config, [corpus], tmp_path / "out2") == 2
    assert "classifier model directory '/models/format' does not exist" in capsys.readouterr().err


def _assert_no_output(out: Path):
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]


@pytest.mark.parametrize(
    "case, message",
    [
        ("malformed", "line 3: malformed JSON"),
        ("no_text", "line 2: record has no text field 'text'"),
        ("unknown_label", "unknown topic label 'astrology'"),
        ("duplicate_id", "names two different texts"),
        ("empty", "the corpus is empty"),
        ("glob", "matches no file"),
    ],
)
def test_bad_input_names_the_culprit_and_writes_nothing(tmp_path, tokenizer_dir, capsys, case, message):
    good = make_records(4)
    path = tmp_path / "in" / "bad.jsonl"
    files = [write_records(tmp_path / "in" / "good.jsonl.zst", good)]
    if case == "malformed":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(good[0]) + "\n" + json.dumps(good[1]) + "\n{oops\n")
    elif case == "no_text":
        bad = make_records(2, prefix="x")
        del bad[1]["text"]
        write_records(path, bad)
    elif case == "unknown_label":
        bad = make_records(1, prefix="other")
        bad[0]["metadata"]["weborganizer"]["topic"] = "astrology"
        write_records(path, bad)
    elif case == "duplicate_id":
        write_records(path, [{**good[0], "text": "a completely different text"}])
    elif case == "empty":
        files = []
        write_records(path, [])
    if case == "glob":
        files.append(tmp_path / "nowhere" / "*.jsonl")
    else:
        files.append(path)
    out = tmp_path / "results" / "manifest"
    (tmp_path / "results").mkdir()
    config = make_config(tokenizer_dir)
    code = run_manifest(tmp_path, config, files, out, "--threads", "2")
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err
    if case in ("malformed", "no_text", "unknown_label", "empty"):
        assert str(path) in err
    if case == "duplicate_id":
        assert f"file {path}, row 0" in err and "good.jsonl.zst, row 0" in err
    if case == "glob":
        assert str(tmp_path / "nowhere" / "*.jsonl") in err
    _assert_no_output(out)


def test_failed_rerun_keeps_previous_output(tmp_path, tokenizer_dir, capsys):
    files = [write_records(tmp_path / "a.jsonl", make_records(10))]
    config = make_config(tokenizer_dir)
    out = tmp_path / "out"
    assert run_manifest(tmp_path, config, files, out) == 0
    before = (out / "manifest.parquet").read_bytes()
    with open(files[0], "a") as handle:
        handle.write("{broken\n")
    assert run_manifest(tmp_path, config, files, out) == 2
    assert (out / "manifest.parquet").read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == [
        "bin_summary.csv",
        "contract.json",
        "locations.parquet",
        "manifest.parquet",
    ]


def test_min_token_counts_match_the_tokenizer(tmp_path, tokenizer_dir):
    from transformers import AutoTokenizer

    records = make_records(40, seed=9)
    files = [write_records(tmp_path / "a.jsonl.gz", records)]
    config = make_config(tokenizer_dir, manifest={"docs_per_bin": 1000, "min_tokens": 20})
    result = build_manifest([str(f) for f in files], config, tokenizer=str(tokenizer_dir), threads=1)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    n_tokens = {r["id"]: len(tok(r["text"], add_special_tokens=False)["input_ids"]) for r in records}
    assert {c.doc_id: c.n_tokens for c in result.docs} == {k: v for k, v in n_tokens.items() if v >= 20}
    assert result.counts["filtered"] == sum(v < 20 for v in n_tokens.values())


def test_missing_tokenizer_is_named(tmp_path, tokenizer_dir, capsys):
    files = [write_records(tmp_path / "a.jsonl", make_records(3))]
    config = make_config(tokenizer_dir)
    code = run_manifest(tmp_path, config, files, tmp_path / "out", "--tokenizer", str(tmp_path / "no-tok"))
    assert code == 2 and str(tmp_path / "no-tok") in capsys.readouterr().err


def test_a_huge_text_is_counted_in_pieces_to_the_same_count(tokenizer_dir, monkeypatch):
    # One 50 MB document once took the manifest to 11.8 GB; pieces cut at spaces bound the memory and keep
    # the count: the word-level tokenizer never merges across a space.
    import random

    from capatlas.corpus import manifest as manifest_module
    from helpers_corpus import text_of

    counter = manifest_module.TokenCounter(str(tokenizer_dir))
    texts = [text_of(3000, random.Random(1)), "short text here", text_of(50, random.Random(2))]
    whole = counter.count(texts)
    monkeypatch.setattr(manifest_module, "LONG_TEXT_CHARS", 1000)
    pieces = list(manifest_module._pieces(texts[0], 1000))
    assert len(pieces) > 10 and "".join(pieces) == texts[0] and max(map(len, pieces)) <= 1000
    assert counter.count(texts) == whole


def _sigterm_disposition(_task) -> str:
    import signal

    return repr(signal.getsignal(signal.SIGTERM))


def test_pool_workers_start_fresh_so_a_failing_stage_can_end_them():
    """Workers are not forks of the stage: they ignore its SIGTERM handler and its threads' locks.

    capatlas.cli turns SIGTERM into SystemExit in the stage's process. A forked
    worker inherited that handler, and a SIGTERM arriving while it started was
    lost (CPython clears pending signals after fork): when a bad input made the
    stage terminate its pool, such a worker waited on the task queue forever
    (seen in the suite as a hang in test_bad_input_names_the_culprit_and_writes_nothing).
    """
    import signal

    from capatlas.cli import sigterm_unwinds
    from capatlas.corpus.pool import pool_map, start_method

    assert start_method() != "fork"
    with sigterm_unwinds():
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
        seen = set(pool_map(_sigterm_disposition, [0, 1, 2, 3], 2, "test"))
    assert seen == {repr(signal.SIG_DFL)}

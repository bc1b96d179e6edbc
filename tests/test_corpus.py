"""Corpus readers, path expansion, file keys and every label source."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers_corpus import make_records, write_records

from capatlas.corpus.readers import (
    LabelResolver,
    corpus_stem,
    expand_paths,
    file_key,
    get_field,
    iter_records,
    sidecar_path,
    topic_from_dolma_path,
)
from capatlas.errors import CapatlasError
from capatlas.fileio import file_sha256
from capatlas.taxonomy import FORMAT, TOPIC

FORMATS = [".jsonl", ".json", ".jsonl.gz", ".jsonl.zst", ".parquet"]


# --------------------------------------------------------------------------- paths


def test_expand_paths_sorts_dedups_and_recurses(tmp_path):
    for rel in ("b/x.jsonl", "a/y.jsonl.zst", "a/deep/z.parquet", "a/deep/skip.txt"):
        write_records(tmp_path / rel, []) if not rel.endswith(".txt") else (tmp_path / rel).write_text("")
    files = expand_paths(
        [str(tmp_path / "**" / "*.jsonl*"), str(tmp_path / "a" / "**" / "*.parquet"), str(tmp_path / "b" / "x.jsonl")]
    )
    assert files == sorted(files)
    assert [os.path.relpath(f, tmp_path) for f in files] == ["a/deep/z.parquet", "a/y.jsonl.zst", "b/x.jsonl"]


def test_expand_paths_names_the_glob_that_matches_nothing(tmp_path):
    write_records(tmp_path / "a.jsonl", [])
    glob = str(tmp_path / "nowhere" / "*.jsonl.zst")
    with pytest.raises(CapatlasError, match="matches no file") as info:
        expand_paths([str(tmp_path / "*.jsonl"), glob])
    assert glob in str(info.value)
    with pytest.raises(CapatlasError, match="does not exist") as info:
        expand_paths([str(tmp_path / "missing.jsonl")])
    assert str(tmp_path / "missing.jsonl") in str(info.value)


def test_expand_paths_rejects_unreadable_unsupported_and_directories(tmp_path, monkeypatch):
    path = write_records(tmp_path / "locked.jsonl", [])
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(path) else real_access(p, mode))
    with pytest.raises(CapatlasError, match="not readable") as info:
        expand_paths([str(path)])
    assert str(path) in str(info.value)
    monkeypatch.undo()
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(CapatlasError, match="unsupported format"):
        expand_paths([str(tmp_path / "*.txt")])
    (tmp_path / "dir").mkdir()
    with pytest.raises(CapatlasError, match="only directories"):
        expand_paths([str(tmp_path / "dir")])


def test_unreadable_file_is_named_when_opened(tmp_path, monkeypatch):
    import builtins

    path = write_records(tmp_path / "x.jsonl", make_records(2))
    real_open = builtins.open

    def fake_open(file, *args, **kwargs):
        if str(file) == str(path):
            raise PermissionError(13, "Permission denied")
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    with pytest.raises(CapatlasError, match="not readable") as info:
        list(iter_records(path))
    assert str(path) in str(info.value)


def test_file_key_is_stable_safe_and_distinct(tmp_path, monkeypatch):
    a = tmp_path / "data" / "common_crawl-religion-0016" / "shard 01.jsonl.zst"
    b = tmp_path / "data" / "common_crawl-games-0002" / "shard 01.jsonl.zst"
    key = file_key(a)
    assert key == file_key(str(a))
    assert key.startswith("common_crawl-religion-0016__shard_01.jsonl.zst-")
    assert all(ch.isalnum() or ch in "._-" for ch in key)
    assert key != file_key(b)
    monkeypatch.chdir(tmp_path)
    assert file_key(os.path.relpath(a)) == key  # relative and absolute spellings agree


def test_corpus_stem():
    assert corpus_stem("/x/CC-MAIN-1.jsonl.zst") == "CC-MAIN-1"
    assert corpus_stem("y.parquet") == "y"
    assert corpus_stem("z.jsonl.gz") == "z"


# --------------------------------------------------------------------------- readers


@pytest.mark.parametrize("suffix", FORMATS)
def test_every_format_reads_the_same_records(tmp_path, suffix):
    records = make_records(25, seed=3)
    path = write_records(tmp_path / f"part{suffix}", records, frames=3)
    hasher = hashlib.sha256()
    read = list(iter_records(path, hasher=hasher))
    assert [r.doc_id for r in read] == [r["id"] for r in records]
    assert [r.text for r in read] == [r["text"] for r in records]
    assert [r.row for r in read] == list(range(25))
    assert read[4].record["metadata"]["weborganizer"] == records[4]["metadata"]["weborganizer"]
    assert hasher.hexdigest() == file_sha256(path)  # checksummed in the same pass
    if suffix == ".parquet":
        assert read[0].line is None and "row 0" in read[0].where
    else:
        assert read[0].line == 1 and "line 1" in read[0].where


def test_zstd_with_many_frames_and_blank_lines(tmp_path):
    import zstandard

    records = make_records(6)
    chunks = [(f'{{"id": "{r["id"]}", "text": "{r["text"]}"}}\n\n').encode() for r in records]
    data = b"".join(zstandard.ZstdCompressor().compress(c) for c in chunks)
    path = tmp_path / "multi.jsonl.zst"
    path.write_bytes(data)
    read = list(iter_records(path))
    assert [r.doc_id for r in read] == [r["id"] for r in records]
    assert [r.line for r in read] == [1, 3, 5, 7, 9, 11]  # lines count blank ones, rows do not
    assert [r.row for r in read] == list(range(6))


def test_parquet_column_selection_and_numeric_ids(tmp_path):
    table = pa.table({"id": [10, 11], "text": ["a b", "c d"], "big": ["x" * 10, "y" * 10]})
    path = tmp_path / "t.parquet"
    pq.write_table(table, path)
    read = list(iter_records(path, columns=["id", "text"]))
    assert [r.doc_id for r in read] == ["10", "11"]
    assert "big" not in read[0].record


def test_dotted_fields():
    record = {"metadata": {"wo": {"topic": 3}}, "a.b": 1}
    assert get_field(record, "metadata.wo.topic") == 3
    assert get_field(record, "metadata.missing.x") is None
    assert get_field(record, "a.b") == 1
    assert get_field(record, "metadata.wo.topic.deeper", "d") == "d"


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".jsonl.zst"])
def test_malformed_json_line_names_file_and_line(tmp_path, suffix):
    good = make_records(3)
    path = tmp_path / f"bad{suffix}"
    write_records(path, good)
    import gzip

    import zstandard

    lines = b"".join((__import__("json").dumps(r) + "\n").encode() for r in good[:2]) + b'{"id": "x", "text": \n'
    if suffix == ".jsonl":
        path.write_bytes(lines)
    elif suffix == ".jsonl.gz":
        path.write_bytes(gzip.compress(lines))
    else:
        path.write_bytes(zstandard.ZstdCompressor().compress(lines))
    with pytest.raises(CapatlasError, match=r"line 3: malformed JSON") as info:
        list(iter_records(path))
    assert f"file {path}" in str(info.value)


@pytest.mark.parametrize(
    "record, message",
    [
        ({"id": "a"}, "no text field 'text'"),
        ({"id": "a", "text": None}, "no text field 'text'"),
        ({"id": "a", "text": 5}, "text field 'text' is a int"),
        ({"text": "hello"}, "no id field 'id'"),
        ({"id": "", "text": "hello"}, "is empty"),
        (["not", "an", "object"], "expected a JSON object"),
    ],
)
def test_bad_records_name_file_line_and_field(tmp_path, record, message):
    path = write_records(tmp_path / "x.jsonl", [{"id": "ok", "text": "fine"}, record])
    with pytest.raises(CapatlasError, match=message) as info:
        list(iter_records(path))
    assert f"file {path}, line 2" in str(info.value)


def test_parquet_record_without_text_names_row(tmp_path):
    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "text": ["t", None]}), path)
    with pytest.raises(CapatlasError, match=r"row 1: record has no text field"):
        list(iter_records(path))
    with pytest.raises(CapatlasError, match="no text field 'body'"):
        list(iter_records(path, text_field="body"))


def test_truncated_zstd_is_a_clear_error(tmp_path):
    path = write_records(tmp_path / "x.jsonl.zst", make_records(200))
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(CapatlasError, match="cannot decompress|malformed JSON") as info:
        list(iter_records(path))
    assert str(path) in str(info.value)


def test_custom_dotted_id_and_text_fields(tmp_path):
    path = write_records(tmp_path / "x.jsonl", [{"meta": {"uid": 7}, "body": {"content": "hi there"}}])
    (rec,) = iter_records(path, id_field="meta.uid", text_field="body.content")
    assert (rec.doc_id, rec.text) == ("7", "hi there")


# --------------------------------------------------------------------------- labels


def _resolver(topic, format_, **kwargs):
    return LabelResolver({"topic": topic, "format": format_}, **kwargs)


def test_field_labels_accept_ids_names_and_slugs(tmp_path):
    rows = [
        {"id": "1", "text": "x", "t": 18, "f": "7"},
        {"id": "2", "text": "x", "t": "Religion", "f": "Knowledge Article"},
        {"id": "3", "text": "x", "t": "religion", "f": "knowledge_article"},
        {"id": "4", "text": "x", "t": "Science, Math & Technology", "f": "documentation"},
        {"id": "5", "text": "x", "t": 18.0, "f": 7.0},  # integer ids stored as floats (a column with gaps)
    ]
    path = write_records(tmp_path / "x.jsonl", rows)
    labels = _resolver({"source": "field", "field": "t"}, {"source": "field", "field": "f"}).for_file(path)
    got = [labels(rec) for rec in iter_records(path)]
    assert got == [(18, 7), (18, 7), (18, 7), (19, FORMAT.resolve("Technical Writing")), (18, 7)]
    with pytest.raises(CapatlasError, match="ids are whole numbers"):
        FORMAT.resolve(7.5)


def test_unknown_label_names_file_line_and_value(tmp_path):
    path = write_records(tmp_path / "x.jsonl", [{"id": "1", "text": "x", "t": "religion", "f": "poetry_slam"}])
    labels = _resolver({"source": "field", "field": "t"}, {"source": "field", "field": "f"}).for_file(path)
    with pytest.raises(CapatlasError, match="poetry_slam") as info:
        [labels(rec) for rec in iter_records(path)]
    assert f"file {path}, line 1" in str(info.value)
    assert "format" in str(info.value)
    path2 = write_records(tmp_path / "y.jsonl", [{"id": "1", "text": "x", "t": 24, "f": 1}])
    labels = _resolver({"source": "field", "field": "t"}, {"source": "field", "field": "f"}).for_file(path2)
    with pytest.raises(CapatlasError, match="ids run from 0 to 23"):
        [labels(rec) for rec in iter_records(path2)]
    path3 = write_records(tmp_path / "z.jsonl", [{"id": "1", "text": "x", "f": 1}])
    labels = _resolver({"source": "field", "field": "t"}, {"source": "field", "field": "f"}).for_file(path3)
    with pytest.raises(CapatlasError, match="no topic label field 't'"):
        [labels(rec) for rec in iter_records(path3)]


@pytest.mark.parametrize(
    "directory, topic",
    [
        ("common_crawl-religion-0016", "religion"),
        ("olmocr_science_pdfs-science_math_and_technology-0003", "science_math_and_technology"),
        ("stack-edu-software_development-0001", "software_development"),
        ("wiki-software-0042", "software"),
        ("common_crawl-art_and_design-0000", "art_and_design"),
    ],
)
def test_dolma_path_topics(tmp_path, directory, topic):
    path = tmp_path / "data" / directory / "shard_00000000.jsonl.zst"
    assert topic_from_dolma_path(path) == TOPIC.resolve(topic)


def test_dolma_path_without_topic_is_an_error(tmp_path):
    with pytest.raises(CapatlasError, match="cannot read a topic"):
        topic_from_dolma_path(tmp_path / "data" / "common_crawl-0016" / "x.jsonl.zst")
    with pytest.raises(CapatlasError, match="cannot read a topic"):
        topic_from_dolma_path(tmp_path / "data" / "common_crawl-poetry-0016" / "x.jsonl.zst")


def test_sidecar_labels_align_by_row(tmp_path):
    docs = tmp_path / "corpus" / "documents"
    path = write_records(docs / "CC_shard_0001.jsonl.zst", make_records(5))
    (tmp_path / "corpus" / "domains_topics").mkdir()
    (tmp_path / "corpus" / "domains_formats").mkdir()
    np.save(tmp_path / "corpus" / "domains_topics" / "CC_shard_0001__choice.npy", np.array([0, 5, 18, 23, 1]))
    scores = np.zeros((5, 24), dtype=np.float32)
    scores[np.arange(5), [3, 4, 5, 6, 7]] = 1.0  # per-class scores: the argmax is the label
    np.save(tmp_path / "corpus" / "domains_formats" / "CC_shard_0001__choice.npy", scores)
    resolver = _resolver(
        {"source": "sidecar", "sidecar": "{dir}/../domains_topics/{stem}__choice.npy"},
        {"source": "sidecar", "sidecar": "{dir}/../domains_formats/{stem}__choice.npy"},
    )
    labels = resolver.for_file(path)
    got = [labels(rec) for rec in iter_records(path)]
    labels.finish(5)
    assert got == [(0, 3), (5, 4), (18, 5), (23, 6), (1, 7)]
    assert sidecar_path("{dir}/{name}.npy", "/a/b.jsonl") == "/a/b.jsonl.npy"


def test_sidecar_length_mismatch_names_both_files(tmp_path):
    path = write_records(tmp_path / "docs" / "s.jsonl", make_records(4))
    sidecar = tmp_path / "docs" / "s.topic.npy"
    np.save(sidecar, np.array([1, 2, 3]))
    resolver = _resolver(
        {"source": "sidecar", "sidecar": "{dir}/{stem}.topic.npy"},
        {"source": "field", "field": "metadata.weborganizer.format"},
    )
    labels = resolver.for_file(path)
    with pytest.raises(CapatlasError, match="has 3 rows") as info:
        [labels(rec) for rec in iter_records(path)]
    assert str(sidecar) in str(info.value) and str(path) in str(info.value)
    np.save(sidecar, np.array([1, 2, 3, 4, 5]))
    labels = resolver.for_file(path)
    [labels(rec) for rec in iter_records(path)]
    with pytest.raises(CapatlasError, match="has 5 rows but corpus file .* has 4 records"):
        labels.finish(4)
    with pytest.raises(CapatlasError, match="does not exist"):
        _resolver({"source": "sidecar", "sidecar": "{dir}/nope.npy"}, {"source": "field", "field": "f"}).for_file(path)


def _labels_parquet(path, rows, doc_ids, format_ids):
    table = pa.table(
        {
            "row": pa.array(rows, pa.int64()),
            "doc_id": pa.array(doc_ids, pa.string()),
            "format_id": pa.array(format_ids, pa.int32()),
            "format_prob": pa.array([0.5] * len(rows), pa.float32()),
        }
    )
    pq.write_table(table, path)
    return path


def test_classifier_labels_and_mixed_sources(tmp_path):
    corpus = write_records(tmp_path / "data" / "common_crawl-health-0007" / "part.jsonl", make_records(4))
    ids = [f"doc-{i:05d}" for i in range(4)]
    labels_dir = tmp_path / "labels"
    labels_dir.mkdir()
    # Rows stored out of order: the resolver aligns by the row column.
    _labels_parquet(
        labels_dir / f"{file_key(corpus)}.parquet", [2, 0, 3, 1], [ids[2], ids[0], ids[3], ids[1]], [9, 1, 23, 4]
    )
    resolver = _resolver({"source": "path"}, {"source": "classifier", "model": "m"}, labels_dir=labels_dir)
    assert resolver.classifier_facets == ["format"]
    labels = resolver.for_file(corpus)
    got = [labels(rec) for rec in iter_records(corpus)]
    labels.finish(4)
    health = TOPIC.resolve("health")
    assert got == [(health, 1), (health, 4), (health, 9), (health, 23)]


def test_classifier_labels_errors(tmp_path):
    corpus = write_records(tmp_path / "c.jsonl", make_records(3))
    resolver = _resolver(
        {"source": "field", "field": "metadata.weborganizer.topic"}, {"source": "classifier", "model": "m"}
    )
    with pytest.raises(CapatlasError, match="no classifier labels for corpus file"):
        resolver.for_file(corpus)
    missing = tmp_path / "missing.parquet"
    resolver = _resolver(
        {"source": "field", "field": "metadata.weborganizer.topic"},
        {"source": "classifier", "model": "m"},
        labels_files={str(corpus): str(missing)},
    )
    with pytest.raises(CapatlasError, match="run `capatlas labels`") as info:
        resolver.for_file(corpus)
    assert str(missing) in str(info.value)
    stale = _labels_parquet(tmp_path / "stale.parquet", [0, 1, 2], ["doc-00000", "other", "doc-00002"], [1, 2, 3])
    resolver = _resolver(
        {"source": "field", "field": "metadata.weborganizer.topic"},
        {"source": "classifier", "model": "m"},
        labels_files={str(corpus): str(stale)},
    )
    labels = resolver.for_file(corpus)
    with pytest.raises(CapatlasError, match="corpus file changed"):
        [labels(rec) for rec in iter_records(corpus)]
    short = _labels_parquet(tmp_path / "short.parquet", [0, 1], ["doc-00000", "doc-00001"], [1, 2])
    resolver = _resolver(
        {"source": "field", "field": "metadata.weborganizer.topic"},
        {"source": "classifier", "model": "m"},
        labels_files={str(corpus): str(short)},
    )
    labels = resolver.for_file(corpus)
    with pytest.raises(CapatlasError, match="has 2 rows") as info:
        [labels(rec) for rec in iter_records(corpus)]
    assert str(short) in str(info.value) and str(corpus) in str(info.value)


def test_a_lone_surrogate_is_replaced_and_named(tmp_path, caplog):
    # "\ud800" is valid JSON but not valid Unicode: tokenizers, hashes and parquet all refuse it.
    path = tmp_path / "part-0.jsonl"
    path.write_text('{"id": "a", "text": "fine"}\n{"id": "b", "text": "bad \\ud800 text"}\n')
    with caplog.at_level("WARNING"):
        records = list(iter_records(path))
    assert [r.text for r in records] == ["fine", "bad \ufffd text"]
    assert "line 2" in caplog.text and "surrogate" in caplog.text
    records[1].text.encode("utf-8")  # strict: now encodable

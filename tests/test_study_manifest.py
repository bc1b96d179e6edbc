"""`capatlas import-study-manifest`: the study's working-set manifest, in its own layout, as our manifest.

The study files here are written by the tests in the layout of the study's code
(HCAI-Lab-GT/capabilibara: src/dolma/constants.py orders, src/dolma/manifest_fields.py
bin id ``t * 24 + f + 1``, the working sample's doc_id / bin_topic / bin_format /
bin_id / shard_path columns); the corpus is small Dolma-style JSON lines files.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers_corpus import make_config, text_of, tokenizer_dir, write_config, write_records  # noqa: F401

from capatlas import cli
from capatlas.artifacts.bin_summary import read_bin_counts
from capatlas.corpus import study_manifest as sm
from capatlas.corpus.manifest import text_sha256, token_counter
from capatlas.corpus.shard import write_shards
from capatlas.errors import CapatlasError
from capatlas.fileio import file_sha256
from capatlas.taxonomy import FORMAT, FORMAT_NAMES, FORMAT_SLUGS, N_FORMATS, TOPIC, TOPIC_NAMES, TOPIC_SLUGS

# The study's lists exactly as its code writes them (src/dolma/constants.py), kept apart from the module's copy.
STUDY_TOPICS = (
    "software software_development electronics_and_hardware science_math_and_technology "
    "entertainment games literature art_and_design "
    "fashion_and_beauty food_and_dining home_and_hobbies sports_and_fitness "
    "social_life education_and_jobs religion politics "
    "finance_and_business industrial transportation "
    "health travel_and_tourism history_and_geography "
    "crime_and_law adult_content"
).split()
STUDY_FORMATS = (
    "academic_writing nonfiction_writing creative_writing personal_blog "
    "news_article news_org audio_transcript "
    "knowledge_article faq q_a_forum tutorial documentation "
    "structured_data content_listing listicle "
    "product_page user_review customer_support spam_ads "
    "about_org about_pers legal_notices "
    "comment_section truncated"
).split()

# Dolma-style directories (the study's shard_path names the file the document came from).
SHARD_DIRS = ("common_crawl-software-0010", "common_crawl-health-0011", "wiki-0000")


# --------------------------------------------------------------------------- the mapping tables


def test_study_orders_are_the_studys():
    assert sm.STUDY_TOPICS == tuple(STUDY_TOPICS) and sm.STUDY_FORMATS == tuple(STUDY_FORMATS)
    # Grouped orders, not WebOrganizer's label-id order.
    assert sm.STUDY_TOPICS != TOPIC_SLUGS and sm.STUDY_FORMATS != FORMAT_SLUGS


@pytest.mark.parametrize(
    ("names", "table", "slugs", "facet"),
    [
        (STUDY_TOPICS, sm.TOPIC_TO_WEBORGANIZER, TOPIC_SLUGS, TOPIC),
        (STUDY_FORMATS, sm.FORMAT_TO_WEBORGANIZER, FORMAT_SLUGS, FORMAT),
    ],
)
def test_mapping_tables_are_a_bijection_checked_by_name(names, table, slugs, facet):
    assert len(table) == 24 and sorted(table) == list(range(24))  # every study name a distinct WebOrganizer id
    for position, name in enumerate(names):
        assert slugs[table[position]] == name
        assert facet.resolve(name) == table[position]


def test_study_bin_ids_convert_to_ours_by_name():
    for t, topic in enumerate(STUDY_TOPICS):
        for f, fmt in enumerate(STUDY_FORMATS):
            study_bin = t * 24 + f + 1
            ours = sm.bin_from_study_bin(study_bin)
            assert TOPIC_SLUGS[ours // N_FORMATS] == topic and FORMAT_SLUGS[ours % N_FORMATS] == fmt
            assert sm.row_bin(topic, fmt, study_bin, has_names=True, has_bin=True) == ours
            assert sm.row_bin(None, None, str(study_bin), has_names=False, has_bin=True) == ours
    # Two anchors by hand: study bin 1 is software x academic_writing, 576 adult_content x truncated.
    assert sm.bin_from_study_bin(1) == TOPIC.resolve("Software") * 24 + FORMAT.resolve("Academic Writing")
    assert sm.bin_from_study_bin(576) == TOPIC.resolve("Adult Content") * 24 + FORMAT.resolve("Incomplete Content")
    for bad in (0, 577, -3, 2.5, "x", None, True):
        with pytest.raises(CapatlasError, match="study bin_id"):
            sm.split_study_bin(bad)


def test_study_labels_as_the_studys_reader_normalises_them():
    assert sm.study_topic_index("__label__electronics_and_hardare") == STUDY_TOPICS.index("electronics_and_hardware")
    assert sm.study_topic_index("science_tech") == STUDY_TOPICS.index("science_math_and_technology")
    assert sm.study_format_index(" Q_A_Forum ") == STUDY_FORMATS.index("q_a_forum")
    # WebOrganizer display names are not the study's names.
    with pytest.raises(CapatlasError, match="unknown study topic"):
        sm.study_topic_index("Science, Math & Technology")
    with pytest.raises(CapatlasError, match="unknown study format"):
        sm.study_format_index("news")


def test_a_name_that_does_not_resolve_is_refused_by_name():
    with pytest.raises(CapatlasError, match="'sciences'.*position 3"):
        sm._map_names(STUDY_TOPICS[:3] + ["sciences"] + STUDY_TOPICS[4:], TOPIC)
    with pytest.raises(CapatlasError, match="'faq' more than once"):
        sm._map_names(["faq"] + STUDY_FORMATS[1:], FORMAT)
    with pytest.raises(CapatlasError, match="23 names"):
        sm._map_names(STUDY_FORMATS[1:], FORMAT)


# --------------------------------------------------------------------------- a study file and its corpus


def study_rows(seed=0):
    """Every one of the 576 study bins once, plus a few more, in the study's names and 1-based bin ids."""
    rng = random.Random(seed)
    pairs = [(t, f) for t in range(24) for f in range(24)] + [(rng.randrange(24), rng.randrange(24)) for _ in range(24)]
    rng.shuffle(pairs)
    rows = []
    for i, (t, f) in enumerate(pairs):
        rows.append(
            {
                "doc_id": f"dolma-{i:04d}",
                "shard_path": f"{SHARD_DIRS[i % 3]}/shard_{i % 2:08d}.jsonl.zst",
                "token_count": 100 + i,
                "bin_topic": STUDY_TOPICS[t],
                "bin_format": STUDY_FORMATS[f],
                "bin_id": t * 24 + f + 1,
            }
        )
    return rows


def write_corpus(root: Path, rows, seed=0) -> dict[str, tuple[str, str]]:
    """Dolma files holding the study's documents (where shard_path says) among others: doc_id -> (file, text)."""
    rng = random.Random(seed)
    files: dict[str, list[dict]] = {}
    texts = {}
    for row in rows:
        text = text_of(rng.randint(3, 30), rng)
        files.setdefault(row["shard_path"], []).append({"id": row["doc_id"], "text": text, "metadata": {}})
        texts[row["doc_id"]] = (row["shard_path"], text)
    for i, (shard, records) in enumerate(sorted(files.items())):
        records.insert(i % 3, {"id": f"other-{i}", "text": text_of(5, rng), "metadata": {}})
        write_records(root / shard, records, frames=2)
    return texts


def write_study(path: Path, rows, columns=None) -> Path:
    rows = [{k: v for k, v in r.items() if columns is None or k in columns} for r in rows]
    if path.name.endswith(".parquet"):
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), path)
        return path
    return write_records(path, rows)


def run_import(tmp_path, tokenizer, study, out, *extra, corpus_root=None):
    config = write_config(tmp_path / "config.yaml", make_config(tokenizer))
    argv = ["import-study-manifest", "--config", str(config), "--study", str(study), "--out", str(out)]
    argv += ["--corpus-root", str(corpus_root or tmp_path / "dolma"), *extra]
    return cli.main(argv)


def check_against_names(out: Path, rows, texts, tokenizer):
    """Every study row's document is in our manifest, in the bin whose names are the row's names."""
    manifest = {r["doc_id"]: r for r in pq.read_table(out / "manifest.parquet").to_pylist()}
    locations = {r["doc_id"]: r for r in pq.read_table(out / "locations.parquet").to_pylist()}
    assert set(manifest) == set(locations) == {r["doc_id"] for r in rows}
    counter = token_counter(str(tokenizer))
    for row in rows:
        ours = manifest[row["doc_id"]]
        assert ours["bin_id"] == ours["topic_id"] * 24 + ours["format_id"]
        assert TOPIC_SLUGS[ours["topic_id"]] == row["bin_topic"], row
        assert FORMAT_SLUGS[ours["format_id"]] == row["bin_format"], row
        # ... and the display names are the ones of the study's names.
        assert TOPIC_NAMES[ours["topic_id"]] == TOPIC.display(TOPIC.resolve(row["bin_topic"]))
        assert FORMAT_NAMES[ours["format_id"]] == FORMAT.display(FORMAT.resolve(row["bin_format"]))
        shard, text = texts[row["doc_id"]]
        assert ours["text_sha256"] == text_sha256(text)
        assert ours["n_tokens"] == counter.count([text])[0]
        assert locations[row["doc_id"]]["source_file"].endswith(shard)
    return manifest


# --------------------------------------------------------------------------- importing


@pytest.mark.parametrize(
    ("name", "columns"),
    [
        ("working_sample_manifest.parquet", None),  # names and bin id: both checked
        ("names_only.parquet", ("doc_id", "shard_path", "bin_topic", "bin_format")),
        ("bin_id_only.jsonl", ("doc_id", "shard_path", "bin_id")),
        ("no_shard_path.jsonl.zst", ("doc_id", "bin_topic", "bin_format", "bin_id")),
    ],
)
def test_import_gives_every_row_its_bin_by_name(tmp_path, tokenizer_dir, name, columns):
    rows = study_rows()
    texts = write_corpus(tmp_path / "dolma", rows)
    study = write_study(tmp_path / "study" / name, rows, columns)
    out = tmp_path / "manifest"
    assert run_import(tmp_path, tokenizer_dir, study, out) == 0

    manifest = check_against_names(out, rows, texts, tokenizer_dir)
    table = pq.read_table(out / "manifest.parquet").to_pylist()
    assert [(r["bin_id"], r["doc_id"]) for r in table] == sorted((r["bin_id"], r["doc_id"]) for r in table)
    counts = read_bin_counts(out / "bin_summary.csv")
    assert (counts["sampled"] > 0).all() and counts["sampled"].sum() == len(manifest)
    contract = json.loads((out / "contract.json").read_text())
    assert contract["source"]["kind"] == "study manifest"
    assert contract["source"]["files"] == [{"path": str(study), "size": study.stat().st_size, "sha256": file_sha256(study)}]
    assert contract["source"]["documents"] == len(rows) and contract["source"]["population"] is None
    assert contract["counts"]["sampled"] == len(rows) and contract["allocation"] == "study manifest"
    assert contract["outputs"]["manifest.parquet"] == file_sha256(out / "manifest.parquet")
    # Our shard stage reads the documents back through locations.parquet, hashes checked.
    summary = write_shards(out, tmp_path / "shards", count=3)
    assert summary["total_docs"] == len(rows)
    assert summary["total_tokens"] == sum(r["n_tokens"] for r in manifest.values())


def test_import_from_a_directory_with_the_config_corpus_and_population(tmp_path, tokenizer_dir):
    rows = study_rows(seed=1)
    texts = write_corpus(tmp_path / "dolma", rows, seed=1)
    # The study's dataset directory: data/*.parquet, split in two files, one row repeated.
    write_study(tmp_path / "hf" / "data" / "part-0.parquet", rows[:300])
    write_study(tmp_path / "hf" / "data" / "part-1.parquet", rows[300:] + rows[:1])
    population = tmp_path / "bin_stats.csv"
    lines = ["bin_id,topic,format,doc_count"]
    lines += [f"{t * 24 + f + 1},{tp},{fm},{10000 + t}" for t, tp in enumerate(STUDY_TOPICS) for f, fm in enumerate(STUDY_FORMATS)]
    population.write_text("\n".join(lines) + "\n")
    config = make_config(tokenizer_dir, paths=[str(tmp_path / "dolma" / "**" / "*.jsonl.zst")])
    config_path = write_config(tmp_path / "config.yaml", config)
    out = tmp_path / "manifest"
    argv = ["import-study-manifest", "--config", str(config_path), "--study", str(tmp_path / "hf"), "--out", str(out)]
    assert cli.main([*argv, "--population", str(population), "--threads", "2"]) == 0

    check_against_names(out, rows, texts, tokenizer_dir)
    counts = read_bin_counts(out / "bin_summary.csv")
    for b in range(576):
        study_topic = STUDY_TOPICS.index(TOPIC_SLUGS[b // 24])
        assert counts["after_filter"][b] == counts["population"][b] == 10000 + study_topic
    contract = json.loads((out / "contract.json").read_text())
    assert contract["source"]["rows"] == len(rows) + 1 and contract["source"]["repeated_rows"] == 1
    assert contract["source"]["population"]["sha256"] == file_sha256(population)


# --------------------------------------------------------------------------- refusals


def _refused(tmp_path, tokenizer, rows, capsys, *extra, name="study.parquet", corpus_rows=None):
    write_corpus(tmp_path / "dolma", corpus_rows or study_rows())
    study = write_study(tmp_path / name, rows)
    out = tmp_path / "manifest"
    out.mkdir(exist_ok=True)
    (out / "keep.txt").write_text("previous run")
    assert run_import(tmp_path, tokenizer, study, out, *extra) == 2
    # Nothing partial: the previous directory as it was, no temporary sibling left.
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".manifest")) == []
    return capsys.readouterr().err


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"bin_topic": "sciences"}, "unknown study topic 'sciences'"),
        ({"bin_format": "Academic Writing!"}, "unknown study format"),
        ({"bin_id": 0}, "study bin_id 0 is not a whole number from 1 to 576"),
        ({"bin_topic": None}, "its topic or format is missing"),
        ({"doc_id": None}, "'doc_id' is missing"),
    ],
)
def test_bad_rows_are_refused_naming_the_row(tmp_path, tokenizer_dir, capsys, change, message):
    rows = study_rows()
    rows[7] = {**rows[7], **change}
    err = _refused(tmp_path, tokenizer_dir, rows, capsys)
    assert message in err and "row 7" in err, err
    if change.get("doc_id", 1) is not None:
        assert rows[7]["doc_id"] in err


def test_an_inconsistent_bin_id_is_refused_naming_the_row(tmp_path, tokenizer_dir, capsys):
    rows = study_rows()
    t, f = STUDY_TOPICS.index(rows[11]["bin_topic"]), STUDY_FORMATS.index(rows[11]["bin_format"])
    # The row's bin in WebOrganizer's order instead of the study's: the mistake the check is for.
    rows[11]["bin_id"] = TOPIC.resolve(rows[11]["bin_topic"]) * 24 + FORMAT.resolve(rows[11]["bin_format"]) + 1
    assert rows[11]["bin_id"] != t * 24 + f + 1
    err = _refused(tmp_path, tokenizer_dir, rows, capsys, name="study.jsonl")
    assert "line 12" in err and rows[11]["doc_id"] in err and "but its names say" in err, err


def test_a_doc_id_with_two_bins_or_absent_from_the_corpus_is_refused(tmp_path, tokenizer_dir, capsys):
    rows = study_rows()
    t, f = STUDY_TOPICS.index(rows[3]["bin_topic"]), (STUDY_FORMATS.index(rows[3]["bin_format"]) + 1) % 24
    twice = rows + [{**rows[3], "bin_format": STUDY_FORMATS[f], "bin_id": t * 24 + f + 1}]
    err = _refused(tmp_path, tokenizer_dir, twice, capsys)
    assert f"row {len(rows)}" in err and rows[3]["doc_id"] in err and "another bin than at" in err, err

    ghost = rows + [{**rows[0], "doc_id": "not-in-dolma"}]
    err = _refused(tmp_path, tokenizer_dir, ghost, capsys, corpus_rows=rows)
    assert "1 of the study's" in err and "'not-in-dolma'" in err and f"row {len(rows)}" in err, err


def test_a_failure_while_writing_leaves_nothing_behind(tmp_path, tokenizer_dir, monkeypatch):
    import capatlas.corpus.manifest as manifest

    rows = study_rows()
    write_corpus(tmp_path / "dolma", rows)
    study = write_study(tmp_path / "study.parquet", rows)
    out = tmp_path / "manifest"

    def broken(*args, **kwargs):
        raise CapatlasError("disk full")

    monkeypatch.setattr(manifest, "write_json", broken)
    assert run_import(tmp_path, tokenizer_dir, study, out) == 2
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".manifest")]


def test_shard_paths_locate_one_local_file_by_their_longest_unambiguous_suffix(tmp_path):
    files = [
        str(tmp_path / "dolma" / "cc-0010" / "shard_00000001.jsonl.zst"),
        str(tmp_path / "dolma" / "cc-0011" / "shard_00000001.jsonl.zst"),
        str(tmp_path / "dolma" / "cc-0011" / "shard_00000002.jsonl.zst"),
    ]
    located = sm.locate_shards(
        [
            "cc-0010/shard_00000001.jsonl.zst",  # relative, as the study writes it
            "s3://bucket/pool/cc-0011/shard_00000001.jsonl.zst",  # another mount: the suffix decides
            "shard_00000002.jsonl.zst",  # a bare name, unique here
            "shard_00000001.jsonl.zst",  # a bare name in two directories: searched everywhere
            "cc-0012/shard_00000009.jsonl.zst",  # not here
        ],
        files,
    )
    assert located == {
        "cc-0010/shard_00000001.jsonl.zst": files[0],
        "s3://bucket/pool/cc-0011/shard_00000001.jsonl.zst": files[1],
        "shard_00000002.jsonl.zst": files[2],
        "shard_00000001.jsonl.zst": None,
        "cc-0012/shard_00000009.jsonl.zst": None,
    }


def test_documents_are_read_only_from_the_file_their_shard_path_names(tmp_path, tokenizer_dir, monkeypatch):
    rows = study_rows()
    write_corpus(tmp_path / "dolma", rows)
    read = []
    real = sm.find_texts
    monkeypatch.setattr(sm, "find_texts", lambda task: read.append((task[0], len(task[1]))) or real(task))
    study = sm.read_study(write_study(tmp_path / "study.parquet", rows))[0]
    files = sm.corpus_files(str(tmp_path / "dolma"), {})
    docs, used = sm.match_documents(study, files, id_field="id", text_field="text", tokenizer=str(tokenizer_dir))
    assert len(docs) == len(rows) and used == files
    # Each file is asked only for the documents whose shard_path names it.
    per_file = {}
    for r in rows:
        per_file[r["shard_path"]] = per_file.get(r["shard_path"], 0) + 1
    assert sorted(n for _, n in read) == sorted(per_file.values())

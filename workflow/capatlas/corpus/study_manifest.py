"""`capatlas import-study-manifest`: the study's working set as our manifest.

The study (Capability Provenance in Language Models, HCAI-Lab-GT/capabilibara)
published its working set as ``working_sample_manifest.parquet`` in the Hugging
Face dataset ``HCAI-Lab-GT/dolma3-6t-sample-10000-docs``. This stage reads a
local copy of it and writes our four manifest outputs (manifest.parquet,
locations.parquet, bin_summary.csv, contract.json; see capatlas.corpus.manifest),
so attribution runs on exactly the study's documents.

The study's layout, as its code defines it (src/dolma/constants.py,
src/dolma/manifest_fields.py, src/dolma/pool_sample/, the trackstar bin
aggregation that reads the working sample):

- one row per document, keyed by ``doc_id`` (the Dolma record's ``id``);
- its bin as names: ``bin_topic``/``bin_format`` in the working sample (the
  columns the study's bin aggregation reads), ``weborganizer_topic``/
  ``weborganizer_format`` in its corpus-manifest rows, ``topic``/``format`` in
  its sampling frames; names are the WebOrganizer slugs, possibly with a
  ``__label__`` prefix;
- ``bin_id``, 1-based, in the study's own grouped orders of topics and formats
  (not WebOrganizer's label-id order): ``t * 24 + f + 1``;
- ``shard_path``: the Dolma file the document came from (no row or offset),
  and token estimates (``token_count``); no text.

Our manifest needs each document's normalised-text sha256 and its token count
with the configured tokenizer, and locations (file, row) that `capatlas shard`
re-reads, so the text is read from the local Dolma files (``--corpus-root``,
else the config's ``corpus.paths``; records read with ``corpus.id_field`` and
``corpus.text_field``). A document's ``shard_path`` narrows the search to the
one local file whose path ends with it (the longest unambiguous suffix); where
it names no local file, or the layout has no ``shard_path``, every local file
is searched.

Every row's bin is checked: names resolve through the study's order to
WebOrganizer ids (the tables below are checked against capatlas.taxonomy's
names when this module is imported), a 1-based study bin id converts through the
same tables, and where a row has both they must agree. Unknown names,
out-of-range or inconsistent bin ids, missing doc ids, one doc id with two
bins, and a document absent from the local corpus are errors naming the file,
row and doc id; the output directory is replaced only when all four outputs
are written.

No sampling, deduplication or min-token filter is applied: the study's set is
taken as it is. bin_summary.csv's population, after_dedup and after_filter are
the study's per-bin population counts when ``--population`` gives them (a CSV
of topic, format and doc_count per bin, such as the study's bin statistics),
else the sampled counts, with a warning: the influence stage's
finite-population correction then treats every bin as fully sampled.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import logging
import os
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

import numpy as np

from capatlas.command import Command
from capatlas.corpus.manifest import (
    TOKENIZE_BATCH,
    Candidate,
    ManifestResult,
    file_identity,
    resolve_tokenizer,
    text_sha256,
    token_counter,
    write_manifest,
)
from capatlas.corpus.pool import pool_map
from capatlas.corpus.readers import SUFFIXES, corpus_suffix, expand_paths, iter_records, record_location
from capatlas.errors import CapatlasError
from capatlas.fileio import file_sha256
from capatlas.taxonomy import FORMAT, N_BINS, N_FORMATS, TOPIC, Facet

log = logging.getLogger(__name__)

COMMAND = Command()

STUDY_DATASET = "HCAI-Lab-GT/dolma3-6t-sample-10000-docs"
STUDY_MANIFEST_NAME = "working_sample_manifest.parquet"

# --------------------------------------------------------------------------- the study's orders

# The study's topic and format lists, in its own grouped order (src/dolma/constants.py of
# HCAI-Lab-GT/capabilibara); its bin id is index(topic) * 24 + index(format) + 1 in these orders.
STUDY_TOPICS: tuple[str, ...] = (
    # Digital & Tech
    "software",
    "software_development",
    "electronics_and_hardware",
    "science_math_and_technology",
    # Media & Culture
    "entertainment",
    "games",
    "literature",
    "art_and_design",
    # Lifestyle
    "fashion_and_beauty",
    "food_and_dining",
    "home_and_hobbies",
    "sports_and_fitness",
    # People & Society
    "social_life",
    "education_and_jobs",
    "religion",
    "politics",
    # Money & Industry
    "finance_and_business",
    "industrial",
    "transportation",
    # Body & Place
    "health",
    "travel_and_tourism",
    "history_and_geography",
    # Sensitive
    "crime_and_law",
    "adult_content",
)

STUDY_FORMATS: tuple[str, ...] = (
    # Long-form writing
    "academic_writing",
    "nonfiction_writing",
    "creative_writing",
    "personal_blog",
    # News & journalism
    "news_article",
    "news_org",
    "audio_transcript",
    # Reference & knowledge
    "knowledge_article",
    "faq",
    "q_a_forum",
    "tutorial",
    "documentation",
    # Structured / data
    "structured_data",
    "content_listing",
    "listicle",
    # Commercial
    "product_page",
    "user_review",
    "customer_support",
    "spam_ads",
    # Organizational
    "about_org",
    "about_pers",
    "legal_notices",
    # Social
    "comment_section",
    "truncated",
)

# Short topic names the study's own reader maps to its canonical ones (src/dolma/manifest_fields.py).
STUDY_TOPIC_ALIASES: dict[str, str] = {
    "adult": "adult_content",
    "art_design": "art_and_design",
    "crime_law": "crime_and_law",
    "education_jobs": "education_and_jobs",
    "hardware": "electronics_and_hardware",
    "fashion_beauty": "fashion_and_beauty",
    "finance_business": "finance_and_business",
    "food_dining": "food_and_dining",
    "history": "history_and_geography",
    "home_hobbies": "home_and_hobbies",
    "science_tech": "science_math_and_technology",
    "software_dev": "software_development",
    "sports_fitness": "sports_and_fitness",
    "travel": "travel_and_tourism",
}
# A misspelt classifier label the study's sampling loader repairs (src/dolma/distribution_report/sampling_loader.py).
STUDY_TOPIC_TYPOS: dict[str, str] = {"electronics_and_hardare": "electronics_and_hardware"}
LABEL_PREFIX = "__label__"

# Column names, in order of preference (the working sample's first).
DOC_ID_COLUMN = "doc_id"
TOPIC_COLUMNS = ("bin_topic", "weborganizer_topic", "topic")
FORMAT_COLUMNS = ("bin_format", "weborganizer_format", "format")
BIN_ID_COLUMN = "bin_id"
SHARD_PATH_COLUMN = "shard_path"
STUDY_SUFFIXES = (".parquet", ".jsonl", ".jsonl.gz", ".jsonl.zst")


def _map_names(names: Sequence[str], facet: Facet) -> tuple[int, ...]:
    """WebOrganizer id per study name, each checked by name; a bijection over the facet's ids."""
    if len(names) != facet.size:
        raise CapatlasError(f"the study's {facet.name} list has {len(names)} names, WebOrganizer has {facet.size}")
    ids: list[int] = []
    for position, name in enumerate(names):
        try:
            idx = facet.resolve(name)
        except CapatlasError:
            raise CapatlasError(
                f"the study's {facet.name} {name!r} (position {position} of its order) does not resolve to a "
                f"WebOrganizer {facet.name} (capatlas.taxonomy)"
            ) from None
        if facet.slug(idx) != name:
            raise CapatlasError(
                f"the study's {facet.name} {name!r} (position {position}) resolves to WebOrganizer {facet.name} "
                f"{idx} named {facet.slug(idx)!r}, not to a {facet.name} of the same name"
            )
        ids.append(idx)
    repeated = sorted({facet.slug(i) for i in ids if ids.count(i) > 1})
    if repeated:
        raise CapatlasError(f"the study's {facet.name} list names {', '.join(map(repr, repeated))} more than once")
    return tuple(ids)


# Study position -> WebOrganizer id, and back.
TOPIC_TO_WEBORGANIZER: tuple[int, ...] = _map_names(STUDY_TOPICS, TOPIC)
FORMAT_TO_WEBORGANIZER: tuple[int, ...] = _map_names(STUDY_FORMATS, FORMAT)
STUDY_TOPIC_INDEX: dict[str, int] = {name: i for i, name in enumerate(STUDY_TOPICS)}
STUDY_FORMAT_INDEX: dict[str, int] = {name: i for i, name in enumerate(STUDY_FORMATS)}
N_STUDY_BINS = len(STUDY_TOPICS) * len(STUDY_FORMATS)


# --------------------------------------------------------------------------- pure core


def study_bin_id(study_topic: int, study_format: int) -> int:
    """The study's 1-based bin id of its topic and format positions."""
    return study_topic * len(STUDY_FORMATS) + study_format + 1


def split_study_bin(value: object) -> tuple[int, int]:
    """(study topic position, study format position) of a 1-based study bin id."""
    b = _whole_number(value)
    if b is None or not 1 <= b <= N_STUDY_BINS:
        raise CapatlasError(f"study bin_id {value!r} is not a whole number from 1 to {N_STUDY_BINS}")
    return divmod(b - 1, len(STUDY_FORMATS))


def weborganizer_bin(study_topic: int, study_format: int) -> int:
    """Our bin id (topic_id * 24 + format_id, WebOrganizer ids) of study positions."""
    return TOPIC_TO_WEBORGANIZER[study_topic] * N_FORMATS + FORMAT_TO_WEBORGANIZER[study_format]


def bin_from_study_bin(value: object) -> int:
    """Our bin id of a 1-based study bin id."""
    return weborganizer_bin(*split_study_bin(value))


def _whole_number(value: object) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value.strip()
        return int(text) if text.isdigit() else None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return int(value) if np.isfinite(value) and float(value).is_integer() else None
    return None


def study_label(value: object) -> str | None:
    """A study label as its reader normalises it: stripped, lower case, spaces as '_', no '__label__'."""
    if not isinstance(value, str):
        return None
    label = value.strip().lower().replace(" ", "_")
    if label.startswith(LABEL_PREFIX):
        label = label[len(LABEL_PREFIX) :]
    return label or None


def study_topic_index(value: object) -> int:
    label = study_label(value)
    if label is not None:
        label = STUDY_TOPIC_TYPOS.get(label, label)
        label = STUDY_TOPIC_ALIASES.get(label, label)
        idx = STUDY_TOPIC_INDEX.get(label)
        if idx is not None:
            return idx
    raise CapatlasError(f"unknown study topic {value!r}: expected one of the study's 24 topic names, such as 'software'")


def study_format_index(value: object) -> int:
    label = study_label(value)
    idx = STUDY_FORMAT_INDEX.get(label) if label is not None else None
    if idx is None:
        raise CapatlasError(
            f"unknown study format {value!r}: expected one of the study's 24 format names, such as 'academic_writing'"
        )
    return idx


def _missing(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and not np.isfinite(value):
        return True
    return isinstance(value, str) and not value.strip()


def row_bin(topic: object, format_: object, bin_id: object, *, has_names: bool, has_bin: bool) -> int:
    """Our bin id of one study row, from its names and/or its 1-based bin id, which must agree."""
    from_names = None
    if has_names:
        if _missing(topic) or _missing(format_):
            raise CapatlasError("its topic or format is missing")
        t, f = study_topic_index(topic), study_format_index(format_)
        from_names = (t, f)
    if has_bin:
        if _missing(bin_id):
            raise CapatlasError("its bin_id is missing")
        t_b, f_b = split_study_bin(bin_id)
        if from_names is not None and from_names != (t_b, f_b):
            t, f = from_names
            raise CapatlasError(
                f"its bin_id {bin_id!r} is bin {STUDY_TOPICS[t_b]} x {STUDY_FORMATS[f_b]} in the study's order, "
                f"but its names say {STUDY_TOPICS[t]} x {STUDY_FORMATS[f]} (study bin_id {study_bin_id(t, f)})"
            )
        return weborganizer_bin(t_b, f_b)
    assert from_names is not None
    return weborganizer_bin(*from_names)


class StudyRow(NamedTuple):
    doc_id: str
    bin_id: int  # ours: topic_id * 24 + format_id in WebOrganizer ids
    shard_path: str | None
    where: str  # file and row of the study manifest


class StudyLayout(NamedTuple):
    """Which of the study's columns a file has."""

    topic: str | None
    format: str | None
    bin_id: str | None
    shard_path: str | None

    @classmethod
    def of(cls, names: Iterable[str], source: str) -> StudyLayout:
        names = list(names)
        if DOC_ID_COLUMN not in names:
            raise CapatlasError(f"{source} has no {DOC_ID_COLUMN!r} column (columns: {', '.join(names) or 'none'})")
        topic = next((c for c in TOPIC_COLUMNS if c in names), None)
        format_ = next((c for c in FORMAT_COLUMNS if c in names), None)
        if (topic is None) != (format_ is None):
            have, lack = (topic, FORMAT_COLUMNS) if topic else (format_, TOPIC_COLUMNS)
            raise CapatlasError(f"{source} has a {have!r} column but none of {', '.join(lack)}")
        bin_id = BIN_ID_COLUMN if BIN_ID_COLUMN in names else None
        if topic is None and bin_id is None:
            raise CapatlasError(
                f"{source} has neither topic/format name columns ({'/'.join(TOPIC_COLUMNS)} and "
                f"{'/'.join(FORMAT_COLUMNS)}) nor a {BIN_ID_COLUMN!r} column"
            )
        return cls(topic, format_, bin_id, SHARD_PATH_COLUMN if SHARD_PATH_COLUMN in names else None)

    @property
    def columns(self) -> list[str]:
        return [DOC_ID_COLUMN, *(c for c in self if c is not None)]


def _coerce_doc_id(value: object) -> str | None:
    if isinstance(value, bool) or _missing(value):
        return None
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return value if isinstance(value, str) else None


def convert_rows(records: Iterable[tuple[str, Mapping[str, Any]]], layout: StudyLayout) -> Iterator[StudyRow]:
    """(where, record) -> StudyRow, every row's bin checked; errors name the row and its doc_id."""
    has_names, has_bin = layout.topic is not None, layout.bin_id is not None
    for where, record in records:
        doc_id = _coerce_doc_id(record.get(DOC_ID_COLUMN))
        if doc_id is None:
            raise CapatlasError(f"{where}: {DOC_ID_COLUMN!r} is missing or not a string: {record.get(DOC_ID_COLUMN)!r}")
        try:
            bin_ = row_bin(
                record.get(layout.topic) if has_names else None,
                record.get(layout.format) if has_names else None,
                record.get(layout.bin_id) if has_bin else None,
                has_names=has_names,
                has_bin=has_bin,
            )
        except CapatlasError as exc:
            raise CapatlasError(f"{where} (doc_id {doc_id!r}): {exc}") from None
        shard = record.get(layout.shard_path) if layout.shard_path else None
        yield StudyRow(doc_id, bin_, shard if isinstance(shard, str) and shard.strip() else None, where)


def unique_rows(rows: Iterable[StudyRow]) -> tuple[dict[str, StudyRow], int]:
    """doc_id -> its row; a doc id listed again with the same bin is counted, with another bin refused."""
    by_id: dict[str, StudyRow] = {}
    repeats = 0
    for row in rows:
        first = by_id.get(row.doc_id)
        if first is None:
            by_id[row.doc_id] = row
            continue
        if first.bin_id != row.bin_id:
            raise CapatlasError(
                f"{row.where}: doc_id {row.doc_id!r} is listed again with another bin than at {first.where}"
            )
        repeats += 1
    return by_id, repeats


# --------------------------------------------------------------------------- reading the study's file


def study_files(path: str | os.PathLike) -> list[str]:
    """The study manifest's files: a file, or a directory's data/*.parquet, *.parquet, else its JSON lines files."""
    path = Path(path)
    if path.is_file():
        if not any(path.name.lower().endswith(s) for s in STUDY_SUFFIXES):
            raise CapatlasError(f"study manifest {path} is not one of {', '.join(STUDY_SUFFIXES)}")
        return [str(path)]
    if not path.is_dir():
        raise CapatlasError(f"study manifest {path} does not exist")
    for pattern_dir, suffixes in ((path / "data", (".parquet",)), (path, (".parquet",)), (path, STUDY_SUFFIXES[1:])):
        if pattern_dir.is_dir():
            found = sorted(
                str(p) for p in pattern_dir.iterdir() if p.is_file() and any(p.name.lower().endswith(s) for s in suffixes)
            )
            if found:
                return found
    raise CapatlasError(
        f"study manifest directory {path} holds no {STUDY_MANIFEST_NAME} or other parquet / JSON lines files"
    )


def _json_lines(path: str) -> Iterator[tuple[int, bytes]]:
    name = path.lower()
    with open(path, "rb") as raw:
        if name.endswith(".gz"):
            stream: Any = gzip.GzipFile(fileobj=raw, mode="rb")
        elif name.endswith(".zst"):
            import zstandard

            stream = io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True))
        else:
            stream = raw
        try:
            yield from enumerate(stream, start=1)
        except Exception as exc:  # gzip: OSError/EOFError; zstandard.ZstdError is neither
            if isinstance(exc, (EOFError, OSError, ValueError)) or type(exc).__module__.startswith("zstandard"):
                raise CapatlasError(f"file {path}: cannot decompress: {exc}") from None
            raise


def _read_study_file(path: str) -> tuple[StudyLayout, Iterator[tuple[str, Mapping[str, Any]]]]:
    if path.lower().endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            handle = pq.ParquetFile(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise CapatlasError(f"study manifest {path} is not a readable parquet file: {exc}") from None
        layout = StudyLayout.of(handle.schema_arrow.names, f"study manifest {path}")

        def parquet_rows() -> Iterator[tuple[str, Mapping[str, Any]]]:
            row = 0
            try:
                for batch in handle.iter_batches(batch_size=1 << 16, columns=layout.columns):
                    for record in batch.to_pylist():
                        yield record_location(path, row), record
                        row += 1
            except (pa.ArrowInvalid, OSError) as exc:
                raise CapatlasError(f"file {path}, row {row}: cannot read parquet: {exc}") from None

        return layout, parquet_rows()

    lines = _json_lines(path)
    first: tuple[str, dict] | None = None
    row = 0

    def parse(line_no: int, raw: bytes) -> tuple[str, dict]:
        where = record_location(path, row, line_no)
        try:
            obj = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CapatlasError(f"{where}: malformed JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise CapatlasError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        return where, obj

    for line_no, raw in lines:
        if raw.strip():
            first = parse(line_no, raw)
            break
    if first is None:
        raise CapatlasError(f"study manifest {path} is empty")
    layout = StudyLayout.of(first[1].keys(), f"study manifest {path} (first record)")

    def json_rows() -> Iterator[tuple[str, Mapping[str, Any]]]:
        nonlocal row
        yield first
        row += 1
        for line_no, raw in lines:
            if raw.strip():
                yield parse(line_no, raw)
                row += 1

    return layout, json_rows()


def read_study(path: str | os.PathLike) -> tuple[dict[str, StudyRow], dict]:
    """The study's documents (doc_id -> row, file order) and a description of what was read."""
    files = study_files(path)
    rows: list[StudyRow] = []
    layouts: dict[str, dict] = {}
    n_rows = 0
    for file in files:
        layout, records = _read_study_file(file)
        layouts[file] = {k: v for k, v in layout._asdict().items() if v is not None}
        before = len(rows)
        rows.extend(convert_rows(records, layout))
        n_rows += len(rows) - before
    if not rows:
        raise CapatlasError(f"study manifest {path} lists no documents")
    by_id, repeats = unique_rows(rows)
    source = {
        "kind": "study manifest",
        "dataset": STUDY_DATASET,
        "files": [{"path": f, "size": os.path.getsize(f), "sha256": file_sha256(f)} for f in files],
        "columns": layouts,
        "rows": n_rows,
        "documents": len(by_id),
        "repeated_rows": repeats,
        "bin_id": (
            "study: topic * 24 + format + 1 in its own topic and format orders (1-based); "
            "ours: topic_id * 24 + format_id in WebOrganizer ids, mapped by name"
        ),
        "study_topics": list(STUDY_TOPICS),
        "study_formats": list(STUDY_FORMATS),
    }
    return by_id, source


# --------------------------------------------------------------------------- the local corpus


def corpus_files(corpus_root: str | None, config: Mapping[str, Any]) -> list[str]:
    """Local corpus files: every supported file under `corpus_root`, else the config's corpus.paths."""
    if corpus_root:
        root = Path(corpus_root)
        if not root.is_dir():
            raise CapatlasError(f"--corpus-root {corpus_root} is not a directory")
        files = sorted(
            os.path.normpath(os.path.join(d, name))
            for d, _, names in os.walk(root)
            for name in names
            if corpus_suffix(name) is not None
        )
        if not files:
            raise CapatlasError(f"--corpus-root {corpus_root} holds no corpus file ({', '.join(SUFFIXES)})")
        return files
    globs = config["corpus"]["paths"]
    if not globs:
        raise CapatlasError("the study manifest carries no text: pass --corpus-root or set config key 'corpus.paths'")
    return expand_paths(globs)


def _parts(path: str) -> tuple[str, ...]:
    return tuple(p for p in PurePosixPath(path.replace("\\", "/")).parts if p not in ("/", ".", ""))


def locate_shards(shard_paths: Iterable[str], files: Sequence[str]) -> dict[str, str | None]:
    """shard_path -> the one local file whose path ends with its longest unambiguous suffix, else None."""
    by_name: dict[str, list[tuple[str, tuple[str, ...]]]] = defaultdict(list)
    for f in files:
        parts = _parts(os.path.abspath(f))
        by_name[parts[-1]].append((f, parts))
    located: dict[str, str | None] = {}
    for shard in set(shard_paths):
        wanted = _parts(shard)
        same_name = by_name.get(wanted[-1], []) if wanted else []
        located[shard] = None
        for k in range(len(wanted), 0, -1):
            matches = [f for f, parts in same_name if parts[-k:] == wanted[-k:]]
            if len(matches) == 1:
                located[shard] = matches[0]
                break
            if len(matches) > 1:
                break  # a shorter suffix matches at least as many
    return located


class Found(NamedTuple):
    doc_id: str
    source_file: str
    row: int
    text_sha256: str
    n_tokens: int


def find_texts(task: tuple[str, frozenset[str], str, str, str]) -> list[Found]:
    """Worker: hash and count the tokens of the wanted documents of one corpus file."""
    path, wanted, id_field, text_field, tokenizer = task
    counter = token_counter(tokenizer)
    found: list[Found] = []
    batch: list[tuple[str, int, str]] = []

    def flush() -> None:
        counts = counter.count([text for _, _, text in batch])
        found.extend(
            Found(doc_id, path, row, text_sha256(text), n) for (doc_id, row, text), n in zip(batch, counts, strict=True)
        )
        batch.clear()

    for rec in iter_records(path, id_field=id_field, text_field=text_field, columns=[id_field, text_field]):
        if rec.doc_id in wanted:
            batch.append((rec.doc_id, rec.row, rec.text))
            if len(batch) >= TOKENIZE_BATCH:
                flush()
    if batch:
        flush()
    return found


def match_documents(
    study: Mapping[str, StudyRow],
    files: Sequence[str],
    *,
    id_field: str,
    text_field: str,
    tokenizer: str,
    threads: int = 1,
) -> tuple[list[Candidate], list[str]]:
    """Every study document's text found in the local corpus: (candidates sorted by (bin_id, doc_id), files used)."""
    located = locate_shards({r.shard_path for r in study.values() if r.shard_path}, files)
    per_file: dict[str, set[str]] = defaultdict(set)
    anywhere: set[str] = set()
    for row in study.values():
        target = located.get(row.shard_path) if row.shard_path else None
        if target is None:
            anywhere.add(row.doc_id)
        else:
            per_file[target].add(row.doc_id)
    if anywhere:
        log.info("%d study documents name no single local file: searching all %d corpus files", len(anywhere), len(files))
    tasks = [
        (path, frozenset(per_file.get(path, set()) | anywhere), id_field, text_field, tokenizer)
        for path in files
        if per_file.get(path) or anywhere
    ]
    token_counter(tokenizer)  # fail early, before any worker starts
    best: dict[str, Found] = {}
    for found in pool_map(find_texts, tasks, threads, "study documents"):
        for doc in found:
            current = best.get(doc.doc_id)
            if current is None:
                best[doc.doc_id] = doc
                continue
            if current.text_sha256 != doc.text_sha256:
                first, second = sorted((current, doc), key=lambda d: (d.source_file, d.row))
                raise CapatlasError(
                    f"doc_id {doc.doc_id!r} ({study[doc.doc_id].where} of the study manifest) is in the corpus twice "
                    f"with different texts: {record_location(first.source_file, first.row)} and "
                    f"{record_location(second.source_file, second.row)}"
                )
            if (doc.source_file, doc.row) < (current.source_file, current.row):
                best[doc.doc_id] = doc
    missing = [row for row in study.values() if row.doc_id not in best]
    if missing:
        row = missing[0]
        looked = (
            f"in {located[row.shard_path]} (its shard_path {row.shard_path!r})"
            if row.shard_path and located.get(row.shard_path)
            else f"in any of the {len(files)} corpus files"
        )
        raise CapatlasError(
            f"{len(missing)} of the study's {len(study)} documents are not in the local corpus: e.g. doc_id "
            f"{row.doc_id!r} ({row.where}) is not {looked}; point --corpus-root (or corpus.paths) at the local "
            f"copy of the Dolma files the study sampled, and check corpus.id_field"
        )
    docs = [
        Candidate(
            key=0,
            text_sha256=best[r.doc_id].text_sha256,
            doc_id=r.doc_id,
            bin_id=r.bin_id,
            n_tokens=best[r.doc_id].n_tokens,
            source_file=best[r.doc_id].source_file,
            row=best[r.doc_id].row,
        )
        for r in study.values()
    ]
    used = sorted({d.source_file for d in docs})
    return sorted(docs, key=lambda c: (c.bin_id, c.doc_id)), used


# --------------------------------------------------------------------------- population counts

POPULATION_TOPIC = ("topic", "topic_label", "bin_topic", "weborganizer_topic")
POPULATION_FORMAT = ("format", "format_label", "bin_format", "weborganizer_format")
POPULATION_COUNT = ("doc_count", "population")


def read_population(path: str | os.PathLike) -> np.ndarray:
    """Per-bin population (our bin order) from a CSV with the study's topic, format and doc_count per bin."""
    path = str(path)
    try:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            header = list(reader.fieldnames or [])
            rows = list(reader)
    except OSError as exc:
        raise CapatlasError(f"cannot read --population {path} ({exc.strerror})") from None
    topic = next((c for c in POPULATION_TOPIC if c in header), None)
    format_ = next((c for c in POPULATION_FORMAT if c in header), None)
    count = next((c for c in POPULATION_COUNT if c in header), None)
    if topic is None or format_ is None or count is None:
        raise CapatlasError(
            f"--population {path} needs a topic ({'/'.join(POPULATION_TOPIC)}), a format "
            f"({'/'.join(POPULATION_FORMAT)}) and a count ({'/'.join(POPULATION_COUNT)}) column; it has {', '.join(header)}"
        )
    population = np.zeros(N_BINS, dtype=np.int64)
    seen: dict[int, int] = {}
    for i, row in enumerate(rows, start=2):
        where = f"{path}, line {i}"
        try:
            bin_ = row_bin(
                row.get(topic), row.get(format_), row.get(BIN_ID_COLUMN), has_names=True, has_bin=BIN_ID_COLUMN in header
            )
            n = _whole_number(row.get(count))
            if n is None or n < 0:
                raise CapatlasError(f"{count} {row.get(count)!r} is not a whole number >= 0")
        except CapatlasError as exc:
            raise CapatlasError(f"{where}: {exc}") from None
        if bin_ in seen:
            raise CapatlasError(f"{where}: bin {row.get(topic)} x {row.get(format_)} again (first at line {seen[bin_]})")
        seen[bin_] = i
        population[bin_] = n
    return population


# --------------------------------------------------------------------------- the stage


def import_study_manifest(
    study_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    config: Mapping[str, Any],
    tokenizer: str,
    corpus_root: str | None = None,
    population_csv: str | None = None,
    threads: int = 1,
) -> ManifestResult:
    """Read the study's manifest and the local corpus; write our four manifest outputs into `out_dir` (atomically)."""
    study, source = read_study(study_path)
    log.info("study manifest %s: %d documents in %d rows", study_path, len(study), source["rows"])
    files = corpus_files(corpus_root, config)
    docs, used = match_documents(
        study,
        files,
        id_field=config["corpus"]["id_field"],
        text_field=config["corpus"]["text_field"],
        tokenizer=tokenizer,
        threads=threads,
    )
    sampled = np.bincount(np.array([c.bin_id for c in docs], dtype=np.int64), minlength=N_BINS).astype(np.int64)
    if population_csv:
        population = read_population(population_csv)
        short = np.flatnonzero(population < sampled)
        if len(short):
            b = int(short[0])
            raise CapatlasError(
                f"--population {population_csv}: bin {b} ({TOPIC.slug(b // N_FORMATS)} x {FORMAT.slug(b % N_FORMATS)}) "
                f"has a population of {int(population[b])} but the study sampled {int(sampled[b])} documents from it"
            )
        source["population"] = {"path": str(population_csv), "sha256": file_sha256(population_csv)}
    else:
        population = sampled.copy()
        source["population"] = None
        log.warning(
            "no --population: bin_summary.csv counts only the study's sample, so the influence stage's "
            "finite-population correction treats every bin as fully sampled"
        )
    result = ManifestResult(
        docs=docs,
        population=population,
        after_dedup=population.copy(),
        after_filter=population.copy(),
        sampled=sampled,
        inputs=[{"path": path, **file_identity(path)} for path in used],
    )
    write_manifest(
        result,
        out_dir,
        config=config,
        tokenizer=tokenizer,
        extra={
            "source": source,
            "allocation": "study manifest",
            "manifest": {"source": "study manifest", "dedup": False, "min_tokens": None},
            "sampling_key": None,
            "corpus_files_searched": len(files),
        },
    )
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--study",
        required=True,
        help=f"local copy of the study's manifest: {STUDY_MANIFEST_NAME} (or a parquet / JSON lines file in its "
        "layout), or a directory holding such files",
    )
    parser.add_argument("--out", required=True, help="output directory (replaced atomically)")
    parser.add_argument(
        "--tokenizer", default=None, help="tokenizer directory (default: models.tokenizer, else models.document.path)"
    )
    parser.add_argument(
        "--corpus-root",
        default=None,
        help="directory of the local Dolma files the study sampled, searched recursively (default: corpus.paths)",
    )
    parser.add_argument(
        "--population",
        default=None,
        help="CSV of the study's per-bin population (topic, format, doc_count) for bin_summary.csv; "
        "without it the population is the sample",
    )
    parser.add_argument("--threads", type=int, default=None, help="processes (default: manifest.threads)")


def run(args: argparse.Namespace, config: dict | None) -> None:
    assert config is not None
    tokenizer = resolve_tokenizer(config, args.tokenizer)
    threads = int(config["manifest"]["threads"] if args.threads is None else args.threads)
    result = import_study_manifest(
        args.study,
        args.out,
        config=config,
        tokenizer=tokenizer,
        corpus_root=args.corpus_root,
        population_csv=args.population,
        threads=threads,
    )
    log.info(
        "%d study documents in %d bins (%d empty) -> %s",
        len(result.docs),
        int((result.sampled > 0).sum()),
        int((result.sampled == 0).sum()),
        args.out,
    )

"""Corpus readers and label resolution, shared by the labels, manifest and shard stages.

A corpus is a set of files (.jsonl/.json lines, .jsonl.gz, .jsonl.zst,
.parquet) holding one document per record. `iter_records` streams any of
them in bounded memory and names the file and line (or row) of every bad
record. `LabelResolver` turns a record into WebOrganizer topic and format
ids from whichever source the config names per facet:

- ``field``: a (dotted) record field holding an id, a display name or a slug;
- ``path``: the Dolma 3 directory ``data/<source>-<topic_slug>-<NNNN>/``
  (topic only);
- ``sidecar``: a numpy array aligned row by row with the file (WebOrganizer
  Corpus-200B's ``domains_topics/<shard>__choice.npy``);
- ``classifier``: the parquet the `labels` stage wrote for that file.

This module is imported by the Snakefile at parse time (`expand_paths`,
`file_key`), so it keeps heavy imports (pyarrow, zstandard) inside functions.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import io
import json
import os
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capatlas.errors import CapatlasError
from capatlas.taxonomy import FACETS, TOPIC_SLUGS, Facet

# Longest first, so ".jsonl.zst" wins over a bare ".zst" style match.
SUFFIXES: tuple[str, ...] = (".jsonl.zst", ".jsonl.gz", ".jsonl", ".json", ".parquet")

_MISSING = object()


# --------------------------------------------------------------------------- paths


def corpus_suffix(path: str | os.PathLike) -> str | None:
    name = os.path.basename(os.fspath(path)).lower()
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return None


def corpus_stem(path: str | os.PathLike) -> str:
    """File name without its corpus suffix (``shard_0001.jsonl.zst`` -> ``shard_0001``)."""
    name = os.path.basename(os.fspath(path))
    suffix = corpus_suffix(name)
    return name[: -len(suffix)] if suffix else name


def expand_paths(globs: Sequence[str]) -> list[str]:
    """Expand corpus globs (``**`` recurses) into a sorted, duplicate-free file list.

    A glob matching nothing, a matched file that cannot be read, or a file
    of an unsupported format is an error naming it: a silently empty glob
    would otherwise shrink the corpus without anyone noticing.
    """
    if isinstance(globs, (str, os.PathLike)):
        globs = [os.fspath(globs)]
    found: set[str] = set()
    for pattern in globs:
        pattern = os.path.expanduser(os.fspath(pattern))
        if os.path.exists(pattern):
            # A literal name wins even if it contains glob characters such as '['.
            matches = [pattern]
        else:
            matches = glob.glob(pattern, recursive=True)
        files = [m for m in matches if not os.path.isdir(m)]
        if not files:
            if matches:
                raise CapatlasError(
                    f"corpus path {pattern!r} matches only directories; "
                    f"use a glob such as {os.path.join(pattern, '**', '*.jsonl.zst')!r}"
                )
            if glob.has_magic(pattern):
                raise CapatlasError(f"corpus glob {pattern!r} (corpus.paths) matches no file")
            raise CapatlasError(f"corpus file {pattern!r} (corpus.paths) does not exist")
        for match in files:
            found.add(os.path.normpath(match))
    for path in sorted(found):
        if corpus_suffix(path) is None:
            raise CapatlasError(f"corpus file {path} has an unsupported format; expected one of {', '.join(SUFFIXES)}")
        if not os.access(path, os.R_OK):
            raise CapatlasError(f"corpus file {path} exists but is not readable")
    return sorted(found)


def file_key(path: str | os.PathLike) -> str:
    """A stable, filesystem-safe key naming per-file outputs (``labels/<key>.parquet``).

    Computed from the path alone (the Snakefile needs it at parse time): the
    parent directory and file name keep it readable (Dolma's parent names
    the topic partition), and a hash of the absolute path keeps files with
    equal names in different directories apart.
    """
    path = os.fspath(path)
    absolute = os.path.abspath(path)
    parent = os.path.basename(os.path.dirname(absolute))
    readable = f"{parent}__{os.path.basename(absolute)}" if parent else os.path.basename(absolute)
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", readable).strip("._") or "file"
    digest = hashlib.sha256(absolute.encode("utf-8", "surrogateescape")).hexdigest()[:10]
    return f"{readable[:120]}-{digest}"


def _short_name(path: str | os.PathLike) -> str:
    """'<parent>/<name>': what a file is called wherever the corpus is mounted."""
    absolute = os.path.abspath(os.fspath(path))
    return f"{os.path.basename(os.path.dirname(absolute))}/{os.path.basename(absolute)}"


def scan_group_key(first_file: str | os.PathLike) -> str:
    """A manifest scan group's name, from its first file: readable, and the same wherever the corpus lives."""
    short = _short_name(first_file)
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", short.replace("/", "__")).strip("._") or "file"
    return f"{readable[:120]}-{hashlib.sha256(short.encode('utf-8', 'surrogateescape')).hexdigest()[:10]}"


def scan_groups(files: Sequence[str], files_per_scan: int) -> dict[str, list[str]]:
    """Split the corpus files into manifest scan groups of about `files_per_scan`, in path order.

    A group ends before a file whose name hashes to 0 modulo `files_per_scan`
    (content-defined boundaries, at most 4 x `files_per_scan` files), so
    adding or removing a file changes its own group only, and reruns one
    scan job rather than every group after it.
    """
    groups: dict[str, list[str]] = {}
    current: list[str] = []

    def close() -> None:
        key = scan_group_key(current[0])
        if key in groups:
            raise CapatlasError(
                f"corpus files {groups[key][0]} and {current[0]} have the same parent directory name and file "
                "name; manifest scan groups are named after them: rename one"
            )
        groups[key] = list(current)

    for path in sorted(files):
        digest = int(hashlib.sha256(_short_name(path).encode("utf-8", "surrogateescape")).hexdigest()[:8], 16)
        if current and (digest % files_per_scan == 0 or len(current) >= 4 * files_per_scan):
            close()
            current = []
        current.append(path)
    if current:
        close()
    return groups


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class CorpusRecord:
    """One document of a corpus file."""

    path: str
    row: int  # 0-based index among the file's records
    line: int | None  # 1-based line for JSON lines files, None for parquet
    doc_id: str
    text: str
    record: dict

    @property
    def where(self) -> str:
        return record_location(self.path, self.row, self.line)


def record_location(path: str, row: int, line: int | None = None) -> str:
    if line is not None:
        return f"file {path}, line {line}"
    return f"file {path}, row {row}"


def get_field(record: Mapping[str, Any], dotted_path: str, default: Any = None) -> Any:
    """Read ``a.b.c`` from nested mappings; `default` when any step is missing.

    A key that itself contains dots (``{"metadata.url": ...}``) is found too.
    """
    if dotted_path in record:
        return record[dotted_path]
    node: Any = record
    for part in dotted_path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


class _HashingReader(io.RawIOBase):
    """Pass-through reader that feeds every byte read to a hash.

    Lets the manifest checksum compressed inputs in the same pass that
    decompresses them instead of reading terabytes twice.
    """

    def __init__(self, raw: io.BufferedIOBase, hasher: Any) -> None:
        self._raw = raw
        self._hasher = hasher

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        n = self._raw.readinto(buffer)
        if n:
            self._hasher.update(memoryview(buffer)[:n])
        return n or 0

    def close(self) -> None:
        self._raw.close()
        super().close()


def _drain(reader: _HashingReader) -> None:
    buffer = bytearray(1 << 20)
    while reader.readinto(buffer):
        pass


def _zstd_chunks(path: str, source: Any, chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """Decompress a stream of one or more zstd frames.

    zstandard's stream_reader ends quietly on a truncated frame (dropping
    its records), so frames are decoded one by one and an unfinished frame
    at end of file is an error.
    """
    import zstandard

    dctx = zstandard.ZstdDecompressor()
    obj = None
    pending = b""
    while True:
        data = pending or source.read(chunk_size)
        pending = b""
        if not data:
            break
        if obj is None:
            obj = dctx.decompressobj()
        out = obj.decompress(data)
        if out:
            yield out
        if obj.eof:
            pending = obj.unused_data
            obj = None
    if obj is not None:
        raise EOFError(f"file {path} ends inside a zstd frame (truncated?)")


def _zstd_lines(path: str, source: Any) -> Iterator[bytes]:
    parts: list[bytes] = []  # pieces of a line spanning chunks, joined once
    for chunk in _zstd_chunks(path, source):
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            parts.append(chunk[start : end + 1])
            yield b"".join(parts)
            parts = []
            start = end + 1
        if start < len(chunk):
            parts.append(chunk[start:])
    if parts:
        yield b"".join(parts)


def _open_binary(path: str) -> io.BufferedReader:
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise CapatlasError(f"corpus file {path} does not exist") from None
    except PermissionError:
        raise CapatlasError(f"corpus file {path} exists but is not readable") from None
    except IsADirectoryError:
        raise CapatlasError(f"corpus file {path} is a directory") from None
    except OSError as exc:
        raise CapatlasError(f"cannot open corpus file {path}: {exc}") from None


def _coerce_id(value: Any, where: str, id_field: str) -> str:
    if value is None or value is _MISSING:
        raise CapatlasError(f"{where}: record has no id field {id_field!r}")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        if hasattr(value, "__index__") and not isinstance(value, bool):
            value = int(value)  # numpy integers from parquet
        else:
            raise CapatlasError(
                f"{where}: id field {id_field!r} must be a string or an integer, not {type(value).__name__}"
            )
    doc_id = str(value)
    if not doc_id:
        raise CapatlasError(f"{where}: id field {id_field!r} is empty")
    return doc_id


log = logging.getLogger(__name__)
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _make_record(path: str, row: int, line: int | None, obj: Any, id_field: str, text_field: str) -> CorpusRecord:
    where = record_location(path, row, line)
    if not isinstance(obj, dict):
        raise CapatlasError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    text = get_field(obj, text_field, _MISSING)
    if text is _MISSING or text is None:
        raise CapatlasError(f"{where}: record has no text field {text_field!r}")
    if not isinstance(text, str):
        raise CapatlasError(f"{where}: text field {text_field!r} is a {type(text).__name__}, not a string")
    if not text.isascii() and _LONE_SURROGATE.search(text):
        # Valid JSON ("\\ud800"), not valid Unicode: no tokenizer, hash or parquet takes it.
        log.warning("%s: lone UTF-16 surrogate(s) in the text, replaced with U+FFFD", where)
        text = _LONE_SURROGATE.sub("\ufffd", text)
    doc_id = _coerce_id(get_field(obj, id_field, _MISSING), where, id_field)
    return CorpusRecord(path=path, row=row, line=line, doc_id=doc_id, text=text, record=obj)


def _iter_json_lines(path: str, stream: Any, id_field: str, text_field: str) -> Iterator[CorpusRecord]:
    row = 0
    line_no = 0
    try:
        for line_no, raw in enumerate(stream, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except UnicodeDecodeError as exc:
                raise CapatlasError(f"file {path}, line {line_no}: not valid UTF-8 ({exc.reason})") from None
            except json.JSONDecodeError as exc:
                hint = ""
                if line_no == 1 and raw.lstrip()[:1] == b"[":
                    hint = "; expected JSON lines (one object per line), not a JSON array"
                raise CapatlasError(
                    f"file {path}, line {line_no}: malformed JSON: {exc.msg} (column {exc.colno}){hint}"
                ) from None
            yield _make_record(path, row, line_no, obj, id_field, text_field)
            row += 1
    except CapatlasError:
        raise
    except (EOFError, OSError, ValueError) as exc:
        # gzip/zstd report truncated or corrupt streams this way.
        raise CapatlasError(f"file {path}: cannot decompress after line {line_no}: {exc}") from None
    except Exception as exc:  # zstandard.ZstdError is not an OSError
        if type(exc).__module__.startswith("zstandard"):
            raise CapatlasError(f"file {path}: cannot decompress after line {line_no}: {exc}") from None
        raise


def _parquet_columns(schema_names: Sequence[str], columns: Sequence[str] | None) -> list[str] | None:
    if columns is None:
        return None
    wanted = {c.split(".")[0] for c in columns} | set(columns)
    # Only columns the file has: a missing one surfaces as a missing field, with its row.
    return [name for name in schema_names if name in wanted]


def _iter_parquet(
    path: str, id_field: str, text_field: str, columns: Sequence[str] | None, batch_size: int = 1024
) -> Iterator[CorpusRecord]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        handle = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise CapatlasError(f"file {path}: not a readable parquet file: {exc}") from None
    selected = _parquet_columns(handle.schema_arrow.names, columns)
    row = 0
    try:
        for batch in handle.iter_batches(batch_size=batch_size, columns=selected):
            for obj in batch.to_pylist():
                yield _make_record(path, row, None, obj, id_field, text_field)
                row += 1
    except (pa.ArrowInvalid, OSError) as exc:
        raise CapatlasError(f"file {path}, row {row}: cannot read parquet: {exc}") from None


def iter_records(
    path: str | os.PathLike,
    *,
    id_field: str = "id",
    text_field: str = "text",
    columns: Sequence[str] | None = None,
    hasher: Any = None,
) -> Iterator[CorpusRecord]:
    """Stream the records of one corpus file in bounded memory.

    `columns` (top-level names or dotted paths) narrows what a parquet file
    reads; JSON lines are always parsed whole. With `hasher` (a hashlib
    object) every byte of the file is fed to it by the time iteration ends.
    """
    path = os.fspath(path)
    suffix = corpus_suffix(path)
    if suffix is None:
        raise CapatlasError(f"corpus file {path} has an unsupported format; expected one of {', '.join(SUFFIXES)}")
    if suffix == ".parquet":
        if not os.path.exists(path):
            raise CapatlasError(f"corpus file {path} does not exist")
        yield from _iter_parquet(path, id_field, text_field, columns)
        if hasher is not None:
            with _open_binary(path) as handle:
                while chunk := handle.read(1 << 20):
                    hasher.update(chunk)
        return

    raw = _open_binary(path)
    with raw:
        source: Any = raw
        reader: _HashingReader | None = None
        if hasher is not None:
            reader = _HashingReader(raw, hasher)
            source = reader
        if suffix == ".jsonl.gz":
            stream: Any = gzip.GzipFile(fileobj=source, mode="rb")
        elif suffix == ".jsonl.zst":
            stream = _zstd_lines(path, source)
        else:
            stream = io.BufferedReader(source) if reader is not None else raw
        yield from _iter_json_lines(path, stream, id_field, text_field)
        if reader is not None:
            _drain(reader)


def count_records(path: str | os.PathLike, **kwargs: Any) -> int:
    return sum(1 for _ in iter_records(path, **kwargs))


# --------------------------------------------------------------------------- labels

_DOLMA_DIR = re.compile(r"^(?P<head>.+)-(?P<number>\d+)$")


def topic_from_dolma_path(path: str | os.PathLike) -> int:
    """Topic id from a Dolma 3 path ``.../<source>-<topic_slug>-<NNNN>/<file>``.

    Source names contain hyphens and underscores themselves
    (``olmocr_science_pdfs``), so the slug is found by matching the known
    topic slugs at the end of the directory name, longest first.
    """
    path = os.fspath(path)
    parts = Path(os.path.abspath(path)).parts[:-1]
    for directory in reversed(parts):
        match = _DOLMA_DIR.match(directory)
        if not match:
            continue
        head = match.group("head")
        for slug in _SLUGS_LONGEST_FIRST:
            if head.endswith("-" + slug) and len(head) > len(slug) + 1:
                return TOPIC_SLUGS.index(slug)
    raise CapatlasError(
        f"cannot read a topic from the path of {path}: expected a Dolma 3 directory "
        "'<source>-<topic_slug>-<NNNN>' (e.g. common_crawl-religion-0016) with a WebOrganizer topic slug"
    )


_SLUGS_LONGEST_FIRST = tuple(sorted(TOPIC_SLUGS, key=len, reverse=True))


def check_path_topics(files: Sequence[str]) -> None:
    """Every file must carry its topic in its path, checked when the DAG is planned.

    Dolma 3 also holds sources without a WebOrganizer topic (code, math,
    papers: ``data/<source>-<NNNN>/``); a glob over ``data/*/`` takes them
    in, and without this check the manifest failed on them only after every
    labels job had run.
    """
    without = []
    for path in files:
        try:
            topic_from_dolma_path(path)
        except CapatlasError:
            without.append(path)
    if without:
        directories = sorted({os.path.basename(os.path.dirname(p)) for p in without})
        raise CapatlasError(
            f"{len(without)} of {len(files)} corpus files have no topic in their path (corpus.labels.topic.source "
            f"is 'path'), in {len(directories)} directories such as {', '.join(directories[:3])}; e.g. {without[0]}. "
            "Narrow corpus.paths to directories named '<source>-<topic_slug>-<NNNN>' "
            "(e.g. data/common_crawl-*/*.jsonl.zst), or label topics another way"
        )


def sidecar_path(template: str, corpus_path: str | os.PathLike, *, key: str = "sidecar") -> str:
    corpus_path = os.fspath(corpus_path)
    values = {
        "dir": os.path.dirname(corpus_path) or ".",
        "name": os.path.basename(corpus_path),
        "stem": corpus_stem(corpus_path),
    }
    try:
        return os.path.normpath(template.format_map(values))
    except (KeyError, IndexError, ValueError) as exc:
        raise CapatlasError(
            f"config key '{key}': bad sidecar template {template!r} ({exc}); use {{dir}}, {{name}} and {{stem}}"
        ) from None


class _FacetLabels:
    """Labels of one facet for the records of one file."""

    def __init__(self, facet: Facet, spec: Mapping[str, Any], corpus_path: str, labels_file: str | None, key: str):
        self.facet = facet
        self.source = spec["source"]
        self.corpus_path = corpus_path
        self.key = key
        self.field = spec.get("field", "")
        self._cache: dict[Any, int] = {}
        self._fixed: int | None = None
        self._values: Any = None  # array indexed by row
        self._values_file: str | None = None
        self._doc_ids: list[str] | None = None
        if self.source == "path":
            self._fixed = topic_from_dolma_path(corpus_path)
        elif self.source == "sidecar":
            self._load_sidecar(sidecar_path(spec["sidecar"], corpus_path, key=f"{key}.sidecar"))
        elif self.source == "classifier":
            self._load_labels_parquet(labels_file)
        elif self.source != "field":
            raise CapatlasError(f"config key '{key}.source': unknown label source {self.source!r}")

    def _load_sidecar(self, path: str) -> None:
        import numpy as np

        if not os.path.exists(path):
            raise CapatlasError(
                f"sidecar {path} for {self.facet.name} labels of corpus file {self.corpus_path} does not exist"
            )
        try:
            values = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise CapatlasError(f"sidecar {path} is not a readable .npy array: {exc}") from None
        if values.ndim == 2 and values.shape[1] == self.facet.size:
            # Per-class scores rather than choices: the choice is the argmax.
            values = np.asarray(values).argmax(axis=1)
        elif values.ndim != 1:
            raise CapatlasError(
                f"sidecar {path} has shape {values.shape}; expected one {self.facet.name} id per record"
            )
        self._values = values
        self._values_file = path

    def _load_labels_parquet(self, path: str | None) -> None:
        import numpy as np
        import pyarrow.parquet as pq

        if path is None:
            raise CapatlasError(
                f"no classifier labels for corpus file {self.corpus_path} ({self.facet.name} source is "
                "'classifier'): run `capatlas labels` on it and pass --labels-dir"
            )
        if not os.path.exists(path):
            raise CapatlasError(
                f"classifier labels {path} for corpus file {self.corpus_path} do not exist: "
                "run `capatlas labels` on that file first"
            )
        column = f"{self.facet.name}_id"
        try:
            schema = pq.read_schema(path)
            if column not in schema.names or "row" not in schema.names:
                raise CapatlasError(
                    f"classifier labels {path} lack a 'row' or '{column}' column "
                    f"(was it written with {self.facet.name} source 'classifier'?)"
                )
            wanted = ["row", column] + (["doc_id"] if "doc_id" in schema.names else [])
            table = pq.read_table(path, columns=wanted)
        except CapatlasError:
            raise
        except Exception as exc:
            raise CapatlasError(f"classifier labels {path} are not a readable parquet file: {exc}") from None
        rows = table.column("row").to_numpy()
        order = np.argsort(rows, kind="stable")
        rows = rows[order]
        if len(rows) and not np.array_equal(rows, np.arange(len(rows))):
            raise CapatlasError(f"classifier labels {path}: rows are not 0..{len(rows) - 1} exactly once")
        self._values = table.column(column).to_numpy()[order]
        if "doc_id" in table.column_names:
            ids = table.column("doc_id").to_pylist()
            self._doc_ids = [ids[i] for i in order]
        self._values_file = path

    def label(self, rec: CorpusRecord) -> int:
        if self._fixed is not None:
            return self._fixed
        if self.source == "field":
            value = get_field(rec.record, self.field, _MISSING)
            if value is _MISSING or value is None:
                raise CapatlasError(f"{rec.where}: record has no {self.facet.name} label field {self.field!r}")
            try:
                hashable = value if isinstance(value, (str, int)) else None
                if hashable is not None and (hashable, type(hashable)) in self._cache:
                    return self._cache[(hashable, type(hashable))]
                resolved = self.facet.resolve(value)
                if hashable is not None:
                    self._cache[(hashable, type(hashable))] = resolved
                return resolved
            except CapatlasError as exc:
                raise CapatlasError(f"{rec.where}: field {self.field!r}: {exc}") from None
        values = self._values
        if rec.row >= len(values):
            raise CapatlasError(
                f"{self._kind()} {self._values_file} has {len(values)} rows but corpus file "
                f"{self.corpus_path} has more records (row {rec.row}); they must align row by row"
            )
        if self._doc_ids is not None and self._doc_ids[rec.row] != rec.doc_id:
            raise CapatlasError(
                f"classifier labels {self._values_file} row {rec.row} is for doc_id {self._doc_ids[rec.row]!r} "
                f"but {rec.where} has doc_id {rec.doc_id!r}: the corpus file changed, rerun `capatlas labels`"
            )
        try:
            return self.facet.resolve(values[rec.row])
        except CapatlasError as exc:
            raise CapatlasError(f"{self._kind()} {self._values_file}, row {rec.row}: {exc}") from None

    def _kind(self) -> str:
        return "sidecar" if self.source == "sidecar" else "classifier labels"

    def finish(self, n_records: int) -> None:
        if self._values is not None and len(self._values) != n_records:
            raise CapatlasError(
                f"{self._kind()} {self._values_file} has {len(self._values)} rows but corpus file "
                f"{self.corpus_path} has {n_records} records; they must align row by row"
            )


class FileLabels:
    """Topic and format ids for the records of one corpus file."""

    def __init__(self, facets: dict[str, _FacetLabels]):
        self._facets = facets

    def __call__(self, rec: CorpusRecord) -> tuple[int, int]:
        return self._facets["topic"].label(rec), self._facets["format"].label(rec)

    def facet(self, name: str, rec: CorpusRecord) -> int:
        return self._facets[name].label(rec)

    def finish(self, n_records: int) -> None:
        """Check that row-aligned sources had exactly one label per record."""
        for facet in self._facets.values():
            facet.finish(n_records)


class LabelResolver:
    """Per-facet label sources from ``config["corpus"]["labels"]``.

    Classifier labels are found through `labels_files` (corpus file ->
    labels parquet) or, failing that, `labels_dir`/<file_key>.parquet.
    """

    def __init__(
        self,
        labels: Mapping[str, Mapping[str, Any]],
        *,
        labels_files: Mapping[str, str | os.PathLike] | None = None,
        labels_dir: str | os.PathLike | None = None,
    ) -> None:
        self.specs: dict[str, dict[str, Any]] = {}
        for name in ("topic", "format"):
            if name not in labels:
                raise CapatlasError(f"config key 'corpus.labels.{name}' is missing")
            spec = {"source": "field", "field": "", "sidecar": "", "model": "", **labels[name]}
            key = f"corpus.labels.{name}"
            if spec["source"] == "field" and not spec["field"]:
                raise CapatlasError(f"config key '{key}.field' is required when source is 'field'")
            if spec["source"] == "sidecar" and not spec["sidecar"]:
                raise CapatlasError(f"config key '{key}.sidecar' is required when source is 'sidecar'")
            if spec["source"] == "path" and name != "topic":
                raise CapatlasError(f"config key '{key}.source' is 'path', but Dolma 3 paths carry only the topic")
            self.specs[name] = spec
        self.labels_files = {os.path.abspath(os.fspath(k)): os.fspath(v) for k, v in (labels_files or {}).items()}
        self.labels_dir = os.fspath(labels_dir) if labels_dir is not None else None

    @classmethod
    def from_config(
        cls,
        config: Mapping[str, Any],
        *,
        labels_files: Mapping[str, str | os.PathLike] | None = None,
        labels_dir: str | os.PathLike | None = None,
    ) -> LabelResolver:
        return cls(config["corpus"]["labels"], labels_files=labels_files, labels_dir=labels_dir)

    @property
    def classifier_facets(self) -> list[str]:
        return [name for name, spec in self.specs.items() if spec["source"] == "classifier"]

    @property
    def record_fields(self) -> list[str]:
        """Record fields the label sources read (to narrow parquet reads)."""
        return [spec["field"] for spec in self.specs.values() if spec["source"] == "field"]

    def labels_file_for(self, corpus_path: str | os.PathLike) -> str | None:
        found = self.labels_files.get(os.path.abspath(os.fspath(corpus_path)))
        if found is None and self.labels_dir is not None:
            found = os.path.join(self.labels_dir, f"{file_key(corpus_path)}.parquet")
        return found

    def for_file(self, corpus_path: str | os.PathLike, *, skip: Sequence[str] = ()) -> FileLabels:
        """The file's label sources; facets in `skip` (classified on the fly by the manifest scan) have none."""
        corpus_path = os.fspath(corpus_path)
        labels_file = self.labels_file_for(corpus_path) if set(self.classifier_facets) - set(skip) else None
        return FileLabels(
            {
                name: _FacetLabels(FACETS[name], spec, corpus_path, labels_file, f"corpus.labels.{name}")
                for name, spec in self.specs.items()
                if name not in skip
            }
        )

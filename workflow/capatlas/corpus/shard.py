"""`capatlas shard`: the manifest's documents, with text, in token-balanced shards.

Reads ``manifest.parquet`` and ``locations.parquet``, re-reads only the
source files that hold sampled documents (each file once, stopping at its
last needed row) and writes ``shard-{k:05d}.parquet`` for every k below
``shards.count`` with columns doc_id, bin_id, n_tokens, text, plus
``shards.json`` (docs and tokens per shard).

Assignment is a deterministic greedy balance: documents sorted by
n_tokens descending, then doc_id, each goes to the shard with the fewest
tokens so far (ties to the lowest k); rows within a shard are sorted by
doc_id. Every text read back must still hash to the manifest's
text_sha256, so a corpus changed since the manifest is caught, naming the
file and row. Texts are spilled per shard to disk while files are read, so
memory stays at about one shard.

The workflow declares only ``shards.json`` as the rule's output (one
output instead of N keeps Snakemake's planning linear in the shard
count); the shard files are written in the same atomic directory swap, so
they exist exactly when it does.
"""

from __future__ import annotations

import argparse
import heapq
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from capatlas.command import Command
from capatlas.corpus.pool import pool_map
from capatlas.corpus.readers import iter_records
from capatlas.errors import CapatlasError
from capatlas.fileio import atomic_path, file_sha256, write_json, write_parquet
from capatlas.plan import shard_count, shard_file
from capatlas.corpus.manifest import text_sha256

log = logging.getLogger(__name__)

COMMAND = Command()

SHARD_SCHEMA = pa.schema(
    [
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("bin_id", pa.int32(), nullable=False),
        pa.field("n_tokens", pa.int64(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
    ]
)
SPILL_ROWS = 2048


def assign_shards(n_tokens: Sequence[int], doc_ids: Sequence[str], count: int) -> np.ndarray:
    """Shard index per document: greedy longest-first onto the lightest shard (ties -> lowest k)."""
    if count < 1:
        raise CapatlasError(f"config key 'shards.count' must be at least 1, not {count}")
    n = len(doc_ids)
    order = sorted(range(n), key=lambda i: (-int(n_tokens[i]), doc_ids[i]))
    heap = [(0, k) for k in range(count)]
    assignment = np.zeros(n, dtype=np.int64)
    for i in order:
        tokens, k = heapq.heappop(heap)
        assignment[i] = k
        heapq.heappush(heap, (tokens + int(n_tokens[i]), k))
    return assignment


def read_manifest(manifest_dir: str | os.PathLike) -> pa.Table:
    """Manifest joined with locations, sorted by doc_id: doc_id, bin_id, n_tokens, text_sha256, source_file, row."""
    manifest_dir = Path(manifest_dir)
    paths = {name: manifest_dir / f"{name}.parquet" for name in ("manifest", "locations")}
    tables = {}
    for name, path in paths.items():
        if not path.is_file():
            raise CapatlasError(f"{path} does not exist: run `capatlas manifest` first")
        try:
            tables[name] = pq.read_table(path)
        except Exception as exc:
            raise CapatlasError(f"{path} is not a readable parquet file: {exc}") from None
    needed = {
        "manifest": ("doc_id", "bin_id", "n_tokens", "text_sha256"),
        "locations": ("doc_id", "source_file", "row"),
    }
    for name, columns in needed.items():
        missing = [c for c in columns if c not in tables[name].column_names]
        if missing:
            raise CapatlasError(f"{paths[name]} lacks column(s) {', '.join(missing)}")
    manifest = tables["manifest"].select(list(needed["manifest"])).sort_by("doc_id")
    locations = tables["locations"].select(list(needed["locations"])).sort_by("doc_id")
    if not manifest.column("doc_id").equals(locations.column("doc_id")):
        m_ids = set(manifest.column("doc_id").to_pylist())
        l_ids = set(locations.column("doc_id").to_pylist())
        odd = sorted(m_ids ^ l_ids)[:1] or ["(repeated ids)"]
        raise CapatlasError(
            f"{paths['manifest']} and {paths['locations']} list different documents (e.g. {odd[0]!r}): "
            "rerun `capatlas manifest`"
        )
    return pa.table(
        {
            "doc_id": manifest.column("doc_id"),
            "bin_id": manifest.column("bin_id"),
            "n_tokens": manifest.column("n_tokens"),
            "text_sha256": manifest.column("text_sha256"),
            "source_file": locations.column("source_file"),
            "row": locations.column("row"),
        }
    )


def read_texts(task: tuple[str, list[int], list[str], list[str], str, str]) -> tuple[str, list[str]]:
    """Texts of the given rows of one file, checked against their doc ids and hashes."""
    path, rows, doc_ids, hashes, id_field, text_field = task
    wanted = {row: i for i, row in enumerate(rows)}
    texts: list[str | None] = [None] * len(rows)
    found = 0
    last = max(rows) if rows else -1
    for rec in iter_records(path, id_field=id_field, text_field=text_field, columns=[id_field, text_field]):
        i = wanted.get(rec.row)
        if i is not None:
            if rec.doc_id != doc_ids[i]:
                raise CapatlasError(
                    f"{rec.where}: has doc_id {rec.doc_id!r} but the manifest expects {doc_ids[i]!r} there: "
                    "the corpus changed since the manifest was built; rerun `capatlas manifest`"
                )
            if text_sha256(rec.text) != hashes[i]:
                raise CapatlasError(
                    f"{rec.where}: the text of {rec.doc_id!r} no longer matches the manifest's text_sha256: "
                    "the corpus changed since the manifest was built; rerun `capatlas manifest`"
                )
            texts[i] = rec.text
            found += 1
        if rec.row >= last:
            break
    if found != len(rows):
        missing = min(row for row, i in wanted.items() if texts[i] is None)
        raise CapatlasError(
            f"file {path} has no row {missing} (doc_id {doc_ids[wanted[missing]]!r}): "
            "the corpus changed since the manifest was built; rerun `capatlas manifest`"
        )
    return path, texts  # type: ignore[return-value]


class _Spill:
    """Per-shard parquet spill files, so only one shard is ever sorted in memory."""

    def __init__(self, directory: Path, count: int) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.buffers: list[list[tuple[str, int, int, str]]] = [[] for _ in range(count)]
        self.writers: dict[int, pq.ParquetWriter] = {}

    def add(self, k: int, row: tuple[str, int, int, str]) -> None:
        buffer = self.buffers[k]
        buffer.append(row)
        if len(buffer) >= SPILL_ROWS:
            self._flush(k)

    def _flush(self, k: int) -> None:
        buffer = self.buffers[k]
        if not buffer:
            return
        columns = list(zip(*buffer, strict=True))
        table = pa.table([pa.array(col, f.type) for col, f in zip(columns, SHARD_SCHEMA)], schema=SHARD_SCHEMA)
        writer = self.writers.get(k)
        if writer is None:
            writer = self.writers[k] = pq.ParquetWriter(
                self.directory / f"{k}.parquet", SHARD_SCHEMA, compression="lz4"
            )
        writer.write_table(table)
        buffer.clear()

    def table(self, k: int) -> pa.Table:
        self._flush(k)
        writer = self.writers.pop(k, None)
        if writer is None:
            return SHARD_SCHEMA.empty_table()
        writer.close()
        path = self.directory / f"{k}.parquet"
        table = pq.read_table(path, schema=SHARD_SCHEMA)
        path.unlink()
        return table

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()
        self.writers.clear()


def write_shards(
    manifest_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    count: int,
    id_field: str = "id",
    text_field: str = "text",
    threads: int = 1,
) -> dict:
    """Write all `count` shards and shards.json into `out_dir` (replaced as a whole). Returns the summary."""
    table = read_manifest(manifest_dir)
    doc_ids = table.column("doc_id").to_pylist()
    n_tokens = table.column("n_tokens").to_numpy()
    bin_ids = table.column("bin_id").to_numpy()
    if len(doc_ids) < count:
        log.warning(
            "%d shards requested but the manifest holds only %d documents: %d shards will be empty",
            count,
            len(doc_ids),
            count - len(doc_ids),
        )
    assignment = assign_shards(n_tokens, doc_ids, count)

    files = table.column("source_file").to_pylist()
    rows = table.column("row").to_numpy()
    hashes = table.column("text_sha256").to_pylist()
    by_file: dict[str, list[int]] = {}
    for i in sorted(range(len(doc_ids)), key=lambda i: (files[i], rows[i])):
        by_file.setdefault(files[i], []).append(int(i))
    tasks = [
        (path, [int(rows[i]) for i in idx], [doc_ids[i] for i in idx], [hashes[i] for i in idx], id_field, text_field)
        for path, idx in sorted(by_file.items())
    ]
    index_of = {path: idx for path, idx in by_file.items()}

    tokens = np.zeros(count, dtype=np.int64)
    docs = np.zeros(count, dtype=np.int64)
    np.add.at(tokens, assignment, n_tokens.astype(np.int64))
    np.add.at(docs, assignment, 1)

    with atomic_path(out_dir, directory=True) as tmp:
        spill = _Spill(tmp / ".spill", count)
        try:
            for path, texts in pool_map(read_texts, tasks, threads, "shard read"):
                for i, text in zip(index_of[path], texts, strict=True):
                    spill.add(int(assignment[i]), (doc_ids[i], int(bin_ids[i]), int(n_tokens[i]), text))
            for k in range(count):
                shard = spill.table(k).sort_by("doc_id").combine_chunks()
                write_parquet(shard, tmp / shard_file(k))
        finally:
            spill.close()
            shutil.rmtree(tmp / ".spill", ignore_errors=True)
        summary = {
            "count": count,
            "total_docs": int(docs.sum()),
            "total_tokens": int(tokens.sum()),
            "manifest_sha256": file_sha256(Path(manifest_dir) / "manifest.parquet"),
            "balance": "greedy: n_tokens desc then doc_id, onto the shard with fewest tokens (ties -> lowest k)",
            "shards": [
                {"shard": k, "file": shard_file(k), "docs": int(docs[k]), "tokens": int(tokens[k])}
                for k in range(count)
            ],
        }
        write_json(summary, tmp / "shards.json")
    nonempty = tokens[tokens > 0]
    if len(nonempty):
        log.info(
            "%d docs, %d tokens in %d shards (tokens per shard %d..%d)",
            summary["total_docs"],
            summary["total_tokens"],
            count,
            int(tokens.min()),
            int(tokens.max()),
        )
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", required=True, help="manifest directory (manifest.parquet, locations.parquet)")
    parser.add_argument("--out", required=True, help="shards directory (replaced atomically)")
    parser.add_argument("--threads", type=int, default=None, help="processes reading files (default: manifest.threads)")


def run(args: argparse.Namespace, config: dict | None) -> None:
    threads = args.threads if args.threads is not None else config["manifest"]["threads"]
    write_shards(
        args.manifest,
        args.out,
        count=shard_count(config),
        id_field=config["corpus"]["id_field"],
        text_field=config["corpus"]["text_field"],
        threads=int(threads),
    )

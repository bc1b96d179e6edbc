"""Atomic outputs and small I/O helpers shared by every stage.

Every output is written under a temporary sibling name and renamed into
place only when complete, so a killed job never leaves a file or directory
that looks finished (Snakemake's --rerun-incomplete then redoes it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def _temp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path that is renamed to `path` if the block succeeds.

    With ``directory=True`` the temporary path is created as an empty
    directory and replaces any existing directory at `path` as a whole.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(final)
    if directory:
        tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise
    if directory:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    else:
        os.replace(tmp, final)


def write_parquet(table: pa.Table, path: str | os.PathLike) -> None:
    """Write a parquet file atomically with settings that make bytes reproducible."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", write_statistics=True)


def write_json(obj: object, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def write_text(text: str, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _json_default(value: object) -> object:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__} to JSON")


def file_sha256(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


# The files that define a Hugging Face tokenizer (whichever of them a directory has).
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "vocab.txt", "merges.txt", "tokenizer.model", "tiktoken.model",
)  # fmt: skip


def tokenizer_sha256(directory: str | os.PathLike) -> str | None:
    """One sha256 over a local tokenizer's files (name and content); None for a hub id or a directory without them."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    return tokenizer_sha256_of(
        {name: file_sha256(directory / name) for name in TOKENIZER_FILES if (directory / name).is_file()}
    )


def tokenizer_sha256_of(file_sha256s: dict[str, str]) -> str | None:
    """`tokenizer_sha256` from a directory's files already hashed (file name -> sha256 of its content)."""
    found = [name for name in TOKENIZER_FILES if name in file_sha256s]
    if not found:
        return None
    digest = hashlib.sha256()
    for name in found:
        digest.update(f"{name}:{file_sha256s[name]}\n".encode())
    return digest.hexdigest()

"""Scan partials: what one manifest scan job hands to the manifest merge.

Written by `capatlas manifest-scan` (one directory per group of corpus
files, `results/<run>/manifest_scan/<group>/`), read by
`capatlas manifest-merge`, bench/ and tests/ through this module only.

Per directory:

``pair_keys.npy`` (uint64), ``pair_cats.npy`` (uint16), ``pair_files.npy`` (uint32)
    one row per distinct (sampling key, category, file) of the group,
    sorted by (key, category, file); category = 2 * bin_id + passed (the
    min-token filter); file indexes ``scan.json``'s ``files``.
``id_hashes.npy`` (uint64), ``id_files.npy`` (uint32)
    a 64-bit hash of every record's doc id with its file, sorted by hash.
``candidates.parquet``
    the documents of the group that may be sampled: per bin at most the
    quota's smallest keys (or the proportional sample), deduplicated.
``scan.json``
    ``format``; ``group``; ``settings_sha256`` (the sampling settings and
    label sources, so a merge refuses a partial made under others);
    ``files`` (path, size, mtime_ns, sha256 and which bytes it covers,
    records); ``population`` (records per bin); ``classified`` (records
    the classifier labelled, per known topic); and the sha256 of every
    other file. A reader checks every digest before it uses a byte.

The arrays are what the merge needs for exact counts, cross-group dedup and
duplicate-id checks (14 + 12 bytes per record, on disk). The merge reads
them a key range at a time (`DiskArray`), so its memory does not grow with
the corpus.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from capatlas.artifacts.provenance import canonical_json
from capatlas.errors import CapatlasError
from capatlas.fileio import atomic_path, file_sha256, write_json, write_parquet

FORMAT = "capatlas.manifest_scan/1"
SCAN_JSON = "scan.json"
CANDIDATES = "candidates.parquet"
ARRAYS = {
    "pair_keys": np.uint64,
    "pair_cats": np.uint16,
    "pair_files": np.uint32,
    "id_hashes": np.uint64,
    "id_files": np.uint32,
}
CANDIDATE_SCHEMA = pa.schema(
    [
        pa.field("key", pa.uint64(), nullable=False),
        pa.field("text_sha256", pa.string(), nullable=False),
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("bin_id", pa.int32(), nullable=False),
        pa.field("n_tokens", pa.int64(), nullable=False),
        pa.field("source_file", pa.string(), nullable=False),
        pa.field("row", pa.int64(), nullable=False),
    ]
)


# Every INDEX_STRIDE-th value of a sorted array on disk is kept in memory to search it.
INDEX_STRIDE = 4096


@dataclass
class DiskArray:
    """A sorted-or-not 1-D array in a .npy file, read by slices (never memory-mapped).

    A memory map looked right for the merge's binary searches, but page
    faults map whole neighbourhoods of the file in: a merge over 100 scans
    ended with most of their bytes resident. Reads with a sparse in-memory
    index (every INDEX_STRIDE-th value, taken while the digest is checked)
    keep the merge's memory to one slice."""

    path: Path
    offset: int
    dtype: np.dtype
    length: int
    index: np.ndarray  # values at 0, INDEX_STRIDE, 2 * INDEX_STRIDE, ...

    def __len__(self) -> int:
        return self.length

    def read(self, start: int, stop: int) -> np.ndarray:
        stop = min(stop, self.length)
        values = np.empty(max(0, stop - start), dtype=self.dtype)
        self.read_into(start, stop, values)
        return values

    def read_into(self, start: int, stop: int, target: np.ndarray) -> None:
        """Rows [start, stop) into `target` (a contiguous array of that length)."""
        if stop <= start:
            return
        with open(self.path, "rb") as handle:
            handle.seek(self.offset + start * self.dtype.itemsize)
            got = handle.readinto(memoryview(target).cast("B"))
        if got != (stop - start) * self.dtype.itemsize:
            raise CapatlasError(f"manifest scan file {self.path} is shorter than its header says")

    def searchsorted(self, value: np.generic) -> int:
        """np.searchsorted(array, value, 'left') for a sorted array: the index narrows it to one stride."""
        block = int(np.searchsorted(self.index, value, side="left"))
        if block == 0:
            return 0
        start = (block - 1) * INDEX_STRIDE
        values = self.read(start, start + INDEX_STRIDE)
        return start + int(np.searchsorted(values, value, side="left"))


def _open_checked(path: Path, expected: str | None, dtype) -> DiskArray:
    """Open a .npy file, checking its sha256 and taking its sparse index in the same read."""
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, found = read_header(handle)
        offset = handle.tell()
    if found != np.dtype(dtype) or len(shape) != 1 or fortran:
        raise CapatlasError(f"manifest scan file {path} holds {found}{list(shape)}")
    digest = hashlib.sha256()
    itemsize = np.dtype(dtype).itemsize
    index: list[np.ndarray] = []
    position = 0  # element index of the next byte after the header
    with open(path, "rb") as handle:
        header = handle.read(offset)
        digest.update(header)
        chunk_elems = INDEX_STRIDE * 256
        while True:
            data = handle.read(chunk_elems * itemsize)
            if not data:
                break
            digest.update(data)
            values = np.frombuffer(data[: len(data) - len(data) % itemsize], dtype=dtype)
            first = (-position) % INDEX_STRIDE
            index.append(values[first::INDEX_STRIDE].copy())
            position += len(values)
    if digest.hexdigest() != expected:
        raise CapatlasError(f"manifest scan file {path} does not match the sha256 in its {SCAN_JSON} (corrupted?)")
    if position != shape[0]:
        raise CapatlasError(f"manifest scan file {path} is shorter than its header says")
    return DiskArray(path, offset, np.dtype(dtype), int(shape[0]), np.concatenate(index) if index else np.zeros(0, dtype))


def settings_sha256(settings: Any) -> str:
    """Digest of what decides a partial's content (sampling settings, label sources, tokenizer identity)."""
    return hashlib.sha256(canonical_json(settings).encode()).hexdigest()


@dataclass
class ScanPartial:
    """One group's scan. Arrays are numpy arrays (written) or read-only memory maps (read)."""

    group: str
    files: list[dict]
    population: np.ndarray  # int64[576]
    arrays: dict[str, Any]  # numpy arrays (built in memory) or DiskArrays (read from a scan directory)
    candidates: pa.Table | None  # None when read from disk: `candidate_table()` loads it on demand
    settings_sha256: str = ""
    classified: dict = field(default_factory=dict)
    source: str = ""  # the directory it was read from
    digests: dict = field(default_factory=dict)  # file name -> sha256, from scan.json

    @property
    def n_records(self) -> int:
        return sum(int(f.get("records", 0)) for f in self.files)

    def candidate_table(self) -> pa.Table:
        """The candidates; from disk read (and digest-checked) when asked, so a merge holds one group's at a time."""
        if self.candidates is not None:
            return self.candidates
        path = Path(self.source) / CANDIDATES
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != self.digests.get(CANDIDATES):
            raise CapatlasError(f"manifest scan file {path} does not match the sha256 in its {SCAN_JSON} (corrupted?)")
        table = pq.read_table(pa.BufferReader(data))
        if not table.schema.equals(CANDIDATE_SCHEMA, check_metadata=False):
            raise CapatlasError(f"manifest scan file {path} has columns {table.schema.names}")
        return table

    def read_slice(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of one array, as a fresh array."""
        array = self.arrays[name]
        if isinstance(array, DiskArray):
            return array.read(start, stop)
        return np.array(array[start:stop])

    def read_slice_into(self, name: str, start: int, stop: int, target: np.ndarray) -> None:
        """Rows [start, stop) of one array into `target`."""
        array = self.arrays[name]
        if isinstance(array, DiskArray):
            array.read_into(start, stop, target)
        else:
            target[:] = array[start:stop]

    def search(self, name: str, value: np.generic) -> int:
        """Where `value` would go in the sorted array `name` (side 'left')."""
        array = self.arrays[name]
        if isinstance(array, DiskArray):
            return array.searchsorted(value)
        return int(np.searchsorted(array, value, side="left"))


def write_partial(partial: ScanPartial, out_dir: str | os.PathLike) -> None:
    """Write `partial` into `out_dir`, replaced as a whole only when every file is written."""
    with atomic_path(out_dir, directory=True) as tmp:
        digests = {}
        for name, dtype in ARRAYS.items():
            array = np.ascontiguousarray(partial.arrays[name], dtype=dtype)
            np.save(tmp / f"{name}.npy", array, allow_pickle=False)
            digests[f"{name}.npy"] = file_sha256(tmp / f"{name}.npy")
        write_parquet(partial.candidates.cast(CANDIDATE_SCHEMA), tmp / CANDIDATES)
        digests[CANDIDATES] = file_sha256(tmp / CANDIDATES)
        write_json(
            {
                "format": FORMAT,
                "group": partial.group,
                "settings_sha256": partial.settings_sha256,
                "files": partial.files,
                "population": [int(x) for x in partial.population],
                "classified": partial.classified,
                "sha256": digests,
            },
            tmp / SCAN_JSON,
        )


def read_partial(directory: str | os.PathLike, *, settings_sha256: str | None = None) -> ScanPartial:
    """Open a partial, checking its format, settings and every file's digest; arrays are memory-mapped."""
    directory = Path(directory)
    meta_path = directory / SCAN_JSON
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise CapatlasError(f"manifest scan {directory} has no {SCAN_JSON}: rerun its manifest_scan job") from None
    except (OSError, ValueError) as exc:
        raise CapatlasError(f"manifest scan {meta_path} is not readable JSON: {exc}") from None
    if meta.get("format") != FORMAT:
        raise CapatlasError(f"manifest scan {directory} has format {meta.get('format')!r}, expected {FORMAT!r}")
    if settings_sha256 is not None and meta.get("settings_sha256") != settings_sha256:
        raise CapatlasError(
            f"manifest scan {directory} was made under other sampling settings or label sources "
            "(settings_sha256 differs): rerun its manifest_scan job"
        )
    digests = meta.get("sha256") or {}
    for name in [*(f"{a}.npy" for a in ARRAYS), CANDIDATES]:
        if not (directory / name).exists():
            raise CapatlasError(f"manifest scan {directory} lacks {name}: rerun its manifest_scan job")
    # Digests are checked as the arrays are opened (one read each, which also takes their search index).
    arrays = {name: _open_checked(directory / f"{name}.npy", digests.get(f"{name}.npy"), dtype) for name, dtype in ARRAYS.items()}
    if len(arrays["pair_keys"]) != len(arrays["pair_cats"]) or len(arrays["pair_keys"]) != len(arrays["pair_files"]):
        raise CapatlasError(f"manifest scan {directory}: pair arrays differ in length")
    if len(arrays["id_hashes"]) != len(arrays["id_files"]):
        raise CapatlasError(f"manifest scan {directory}: id arrays differ in length")
    population = np.asarray(meta.get("population", []), dtype=np.int64)
    return ScanPartial(
        group=str(meta.get("group")),
        files=list(meta.get("files") or []),
        population=population,
        arrays=arrays,
        candidates=None,
        settings_sha256=str(meta.get("settings_sha256")),
        classified=dict(meta.get("classified") or {}),
        source=str(directory),
        digests=dict(digests),
    )

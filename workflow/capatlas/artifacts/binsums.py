"""Bin sums: one score-shard job's per-bin sums, the only data `capatlas influence` reads besides the scores' bins.

Written by `capatlas score-shard` (one file per shard), read by
`capatlas influence`, bench/ and tests/ through this module only.

One safetensors file. Per benchmark ``<name>``:

* ``<name>/sum``, ``<name>/sumsq``: float64 [576, n_queries], the sum and
  sum of squares of the scored documents' scores per query and bin;
* ``<name>/count``: int64 [576], scored documents per bin;
* ``<name>/boot_sum``: float64 [B, 576], Poisson weight x document score
  summed per document-bootstrap replicate and bin;
* ``<name>/boot_weight``: uint32 [B, 576], the weights' sums (integers, exact);
* ``<name>/joint_sum``: float64 [B, 576], the combined (documents x queries)
  bootstrap's sums: Poisson document weight x the document's mean over the
  queries under the replicate's query weights (its weight sums are
  ``boot_weight``; `capatlas.artifacts.doc_bootstrap`).

The header's metadata has one key, ``capatlas.binsums``, holding canonical
JSON (one key because safetensors writes a metadata map in no fixed order,
and the same job must give the same bytes): ``format``, ``benchmarks`` (in
column order), ``item_ids`` ({benchmark: [query item ids]}), ``provenance``
(the job's provenance, identical to the scores parquet's) and ``sha256``
({tensor: sha256 of its bytes}). A reader checks the digest of every
tensor it reads, so a flipped bit or a truncated file is refused naming
the file and the tensor.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from capatlas.artifacts.provenance import canonical_json
from capatlas.errors import CapatlasError

# /2 added joint_sum: a /1 file cannot give the combined bootstrap.
FORMAT = "capatlas.binsums/2"
METADATA_KEY = "capatlas.binsums"
# Per-benchmark arrays, in the order they are written.
ARRAYS = ("sum", "sumsq", "count", "boot_sum", "boot_weight", "joint_sum")
_DTYPES = {
    "sum": np.float64,
    "sumsq": np.float64,
    "count": np.int64,
    "boot_sum": np.float64,
    "boot_weight": np.uint32,
    "joint_sum": np.float64,
}


@dataclass
class BenchmarkSums:
    """One benchmark's sums in one shard; arrays not read are None."""

    item_ids: list[str]
    sum: np.ndarray | None = None
    sumsq: np.ndarray | None = None
    count: np.ndarray | None = None
    boot_sum: np.ndarray | None = None
    boot_weight: np.ndarray | None = None
    joint_sum: np.ndarray | None = None


@dataclass
class BinSums:
    provenance: dict
    benchmarks: dict[str, BenchmarkSums] = field(default_factory=dict)

    def __getitem__(self, name: str) -> BenchmarkSums:
        return self.benchmarks[name]


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).view(np.uint8).reshape(-1)).hexdigest()


def write_bin_sums(path: str | os.PathLike, bin_sums: BinSums) -> None:
    """Write `bin_sums` to `path` (the caller makes the write atomic)."""
    from safetensors.numpy import save_file

    tensors: dict[str, np.ndarray] = {}
    for name, sums in bin_sums.benchmarks.items():
        for key in ARRAYS:
            array = getattr(sums, key)
            if array is None:
                raise ValueError(f"bin sums of {name!r} lack {key!r}")
            tensors[f"{name}/{key}"] = np.ascontiguousarray(array, dtype=_DTYPES[key])
    header = {
        "format": FORMAT,
        "benchmarks": list(bin_sums.benchmarks),
        "item_ids": {name: list(s.item_ids) for name, s in bin_sums.benchmarks.items()},
        "provenance": bin_sums.provenance,
        "sha256": {key: _digest(array) for key, array in tensors.items()},
    }
    save_file(tensors, str(path), metadata={METADATA_KEY: canonical_json(header)})


def read_bin_sums(path: str | os.PathLike, arrays: Iterable[str] = ARRAYS) -> BinSums:
    """The bin sums in `path`, with only `arrays` of each benchmark read, each checked against its digest."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    wanted = tuple(arrays)
    unknown = set(wanted) - set(ARRAYS)
    if unknown:
        raise ValueError(f"unknown bin-sums arrays {sorted(unknown)}")
    rerun = "rerun `capatlas score-shard` for this shard"
    try:
        with safe_open(str(path), framework="np") as handle:
            header = json.loads((handle.metadata() or {}).get(METADATA_KEY, "{}"))
            if header.get("format") != FORMAT:
                raise CapatlasError(f"{path} is not a bin-sums file ({FORMAT}): {rerun}")
            names, item_ids, digests = header["benchmarks"], header["item_ids"], header["sha256"]
            out = BinSums(provenance=header["provenance"])
            for name in names:
                sums = BenchmarkSums(item_ids=list(item_ids[name]))
                for key in wanted:
                    tensor = f"{name}/{key}"
                    array = handle.get_tensor(tensor)
                    if _digest(array) != digests.get(tensor):
                        raise CapatlasError(f"{path}: tensor {tensor} does not match its recorded sha256 (corrupted): {rerun}")
                    setattr(sums, key, array)
                out.benchmarks[name] = sums
    except (SafetensorError, OSError, KeyError, ValueError) as exc:
        raise CapatlasError(f"{path} is not a readable bin-sums file ({exc}): {rerun}") from None
    return out

"""Provenance: the record every inter-stage file carries of what made it, and the checks on it.

A stage writes its provenance as canonical JSON (a ``provenance.json`` in
an output directory, or the ``capatlas.provenance`` key of a parquet's
schema metadata); a stage that reads the file compares the recorded
*identity* (model, Bergson version, attribution fingerprint) with its own
and refuses a mismatch naming every differing key. Pure JSON and paths:
no torch, so the analysis wing can verify what attribution wrote.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from capatlas.errors import CapatlasError

PROVENANCE_FILE = "provenance.json"
# Schema-metadata key of the provenance in a stage's parquet output.
PROVENANCE_KEY = b"capatlas.provenance"


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def provenance_sha256(provenance: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(provenance).encode()).hexdigest()


def read_provenance(directory: str | os.PathLike, *, stage: str, produced_by: str) -> dict:
    path = Path(directory) / PROVENANCE_FILE
    if not path.is_file():
        raise CapatlasError(f"{path} does not exist: {directory} is not the output of `capatlas {produced_by}`")
    try:
        provenance = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CapatlasError(f"{path} is not readable JSON ({exc}); rerun `capatlas {produced_by}`") from None
    if not isinstance(provenance, dict) or provenance.get("stage") != stage:
        found = provenance.get("stage") if isinstance(provenance, dict) else None
        raise CapatlasError(
            f"{path} records stage {found!r}, not {stage!r}: pass the output of `capatlas {produced_by}`"
        )
    return provenance


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: obj}


def identity_differences(expected: Mapping[str, Any], found: Mapping[str, Any]) -> list[str]:
    """'key: X there, Y here' for every leaf where `found` (upstream) differs from `expected` (this job)."""
    want, have = _flatten(expected), _flatten(found)
    lines = []
    for key in sorted(set(want) | set(have)):
        if want.get(key, "<missing>") != have.get(key, "<missing>"):
            lines.append(
                f"{key} is {have.get(key, '<missing>')!r} there but {want.get(key, '<missing>')!r} in this job"
            )
    return lines


def check_identity(expected: Mapping[str, Any], provenance: Mapping[str, Any], source: Path, *, rerun: str) -> None:
    """Raise naming `source` if its recorded identity differs from this job's."""
    found = provenance.get("identity")
    if not isinstance(found, Mapping):
        raise CapatlasError(f"{source} records no identity; rerun `capatlas {rerun}`")
    differences = identity_differences(expected, found)
    if differences:
        shown = "; ".join(differences[:6])
        more = f" (and {len(differences) - 6} more)" if len(differences) > 6 else ""
        raise CapatlasError(
            f"{source} was made with different settings than this job: {shown}{more}. "
            f"Rerun `capatlas {rerun}` with this config and model, or run this job with the matching ones"
        )


def parquet_provenance(metadata: Mapping[bytes, bytes] | None, source: Path, *, produced_by: str) -> dict:
    """The provenance a parquet file carries in its schema metadata; raise naming `source` if it has none."""
    if not metadata or PROVENANCE_KEY not in metadata:
        raise CapatlasError(
            f"{source} carries no provenance ({PROVENANCE_KEY.decode()}): rerun `capatlas {produced_by}`"
        )
    try:
        return json.loads(metadata[PROVENANCE_KEY])
    except ValueError as exc:
        raise CapatlasError(f"{source}: its provenance is not JSON ({exc}); rerun `capatlas {produced_by}`") from None


"""Job resources sized from the work, for the rules' `resources:` (workflow/rules/common.smk).

Two rules of thumb a cluster punishes when they are wrong (issue 19):

* A score-shard job's runtime follows its shard's tokens. With
  ``resources.scoring.tokens_per_second`` set (one job's measured
  throughput at ``attribution.precision``), the first attempt asks for
  ``startup_minutes + safety x tokens / tokens_per_second`` (tokens from
  ``shards/shards.json``, written by the shards rule before any score job
  is scheduled); without it, ``resources.gpu.runtime`` as for every GPU
  rule. A retry asks for the attempt number times that.
* Memory grows on a retry only when the failed attempt ran out of memory,
  as its log (the rule's own, and the SLURM job logs the slurm profile
  keeps) says: a job killed for time gets more time, not 2x then 3x the
  memory of a GPU node.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable
from pathlib import Path

from capatlas.errors import CapatlasError

# What a run out of memory leaves in a log: torch's CUDA and CPU allocators,
# Python, the C++ runtime, and SLURM's cgroup OOM killer ("Detected 1 oom_kill event").
OUT_OF_MEMORY = re.compile(
    r"out of memory|OutOfMemoryError|\bMemoryError\b|oom[-_ ]kill|Cannot allocate memory|std::bad_alloc",
    re.IGNORECASE,
)
# Only the end of a log is read: the error is where the job stopped.
TAIL_BYTES = 64 * 1024


def _tail(path: Path) -> str:
    with open(path, "rb") as handle:
        handle.seek(max(0, path.stat().st_size - TAIL_BYTES))
        return handle.read().decode("utf-8", errors="replace")


def failed_for_memory(logs: Iterable[str | os.PathLike]) -> bool:
    """Whether the most recently written of `logs` (those that exist) reports running out of memory."""
    existing = [Path(p) for p in logs if Path(p).is_file()]
    if not existing:
        return False
    latest = max(existing, key=lambda p: p.stat().st_mtime_ns)
    return bool(OUT_OF_MEMORY.search(_tail(latest)))


def memory_mb(base: int, attempt: int, logs: Iterable[str | os.PathLike]) -> int:
    """`base` MB, times the attempt number when the previous attempt's log shows it ran out of memory."""
    if attempt <= 1:
        return base
    return base * attempt if failed_for_memory(logs) else base


def job_logs(rule_log: str, slurm_logdir: str | os.PathLike, rule: str, wildcard_values: Iterable[str]) -> list[Path]:
    """A job's own log and its SLURM job logs (snakemake-executor-plugin-slurm: <logdir>/<rule>/<wildcards
    joined by _>/<job id>.log)."""
    directory = Path(slurm_logdir) / rule / "_".join(str(v) for v in wildcard_values).replace("/", "_")
    slurm = sorted(directory.glob("*.log")) if directory.is_dir() else []
    return [Path(rule_log), *slurm]


def shard_tokens(shards_json: str | os.PathLike, shard: str) -> int | None:
    """The tokens of shard `shard` (its 5-digit id) from the shards rule's summary; None before it exists."""
    path = Path(shards_json)
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text())
        by_id = {f"{int(entry['shard']):05d}": int(entry["tokens"]) for entry in summary["shards"]}
    except (ValueError, KeyError, TypeError) as exc:
        raise CapatlasError(f"{path} is not the shards rule's summary ({exc}): rerun the shards rule") from None
    if shard not in by_id:
        raise CapatlasError(f"{path} lists no shard {shard}: rerun the shards rule")
    return by_id[shard]


def scoring_runtime(tokens: int | None, scoring: dict, fallback: int, attempt: int) -> int:
    """Minutes for a score-shard attempt: start-up plus safety x tokens / throughput (else `fallback`), x attempt."""
    throughput = scoring.get("tokens_per_second")
    if tokens is None or throughput is None:
        minutes = fallback
    else:
        minutes = math.ceil(scoring["startup_minutes"] + scoring["safety"] * tokens / throughput / 60.0)
    return max(1, minutes) * max(1, attempt)

"""Which GPU a stage process runs on.

A SLURM group job (the `labels` batches) or a local run with
`--resources gpu=N` starts several single-GPU processes on one node at
once. Left to `cuda`, every one of them would run on GPU 0 while the others
idle. `claim_gpu` gives each process a GPU no other capatlas process on the
node holds: an exclusive `flock` on one lock file per GPU, held until the
process exits (the kernel releases it then, also after a crash or a kill).
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

# Open lock files of the GPUs this process holds: closing one would release its GPU.
_HELD: list = []


def lock_dir() -> Path:
    """Node-local lock directory: $CAPATLAS_GPU_LOCKS, else one per user (and per SLURM job) in the temp dir.

    Per SLURM job because SLURM's device cgroups renumber each job's GPUs from
    0: two jobs on one node both see "GPU 0", which are different GPUs.
    """
    configured = os.environ.get("CAPATLAS_GPU_LOCKS")
    name = f"capatlas-gpu-locks-{os.getuid()}"
    if os.environ.get("SLURM_JOB_ID"):
        name += f"-slurm{os.environ['SLURM_JOB_ID']}"
    path = Path(configured) if configured else Path(tempfile.gettempdir()) / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def _physical_ids(count: int) -> list[str]:
    """The visible GPUs' node-wide names: CUDA_VISIBLE_DEVICES entries, else their indices."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [d.strip() for d in visible.split(",") if d.strip()] if visible else []
    return ids[:count] if len(ids) >= count else [str(k) for k in range(count)]


def claim_gpu(count: int) -> int:
    """Index (among the `count` visible GPUs) of a GPU no other capatlas process holds; 0 if all are held."""
    if count <= 1:
        return 0
    directory = lock_dir()
    for index, name in enumerate(_physical_ids(count)):
        handle = open(directory / f"gpu-{name}.lock", "a")  # noqa: SIM115 (held for the process's lifetime)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        _HELD.append(handle)
        return index
    log.warning("all %d visible GPUs are held by other capatlas processes on this node; sharing GPU 0", count)
    return 0


def resolve_device(spec: str, *, key: str) -> str:
    """`auto`, `cpu`, `cuda` or `cuda:N` (config key `key`) as a torch device name.

    `auto` and `cuda` claim a free GPU of those visible (claim_gpu); `cuda:N`
    is taken as given.
    """
    import torch

    from capatlas.errors import CapatlasError

    if spec == "cpu":
        return "cpu"
    if spec not in ("auto", "cuda") and not spec.startswith("cuda:"):
        raise CapatlasError(f"config key '{key}' must be auto, cpu, cuda or cuda:N, not {spec!r}")
    if not torch.cuda.is_available():
        if spec == "auto":
            return "cpu"
        raise CapatlasError(f"config key '{key}' is {spec!r} but CUDA is not available")
    if spec.startswith("cuda:"):
        return spec
    return f"cuda:{claim_gpu(torch.cuda.device_count())}"

"""GPU choice for stage processes that share a node (SLURM group jobs, local --resources gpu=N)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from capatlas import devices
from capatlas.errors import CapatlasError


@pytest.fixture
def locks(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPATLAS_GPU_LOCKS", str(tmp_path / "locks"))
    monkeypatch.setattr(devices, "_HELD", [])
    yield tmp_path / "locks"
    for handle in devices._HELD:
        handle.close()


def test_processes_on_one_node_claim_different_gpus(locks, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6,7")
    # Another process on the node already holds the first visible GPU (physical id 4).
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a'); "
         "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)", str(locks / "gpu-4.lock")],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        locks.mkdir(parents=True, exist_ok=True)
        assert holder.stdout.readline().strip() == "held"
        assert devices.claim_gpu(3) == 1  # GPU 4 is taken: the next one, physical id 6
        assert devices.claim_gpu(3) == 2  # and this process's first claim is held too
        assert devices.claim_gpu(3) == 0  # all held: share the first, with a warning
    finally:
        holder.kill()
        holder.wait()
    assert sorted(p.name for p in locks.iterdir()) == ["gpu-4.lock", "gpu-6.lock", "gpu-7.lock"]


def test_a_released_gpu_is_claimed_again(locks):
    assert devices.claim_gpu(2) == 0
    devices._HELD.pop().close()  # the process that held it ended
    assert devices.claim_gpu(2) == 0
    assert devices.claim_gpu(1) == 0  # one GPU: nothing to choose, nothing locked


def test_device_specs_are_checked_and_cpu_stays_cpu(locks):
    assert devices.resolve_device("cpu", key="evaluation.device") == "cpu"
    with pytest.raises(CapatlasError, match="config key 'evaluation.device' must be auto, cpu, cuda or cuda:N"):
        devices.resolve_device("gpu0", key="evaluation.device")
    import torch

    if not torch.cuda.is_available():
        assert devices.resolve_device("auto", key="corpus.classifier.device") == "cpu"
        with pytest.raises(CapatlasError, match="'corpus.classifier.device' is 'cuda' but CUDA is not available"):
            devices.resolve_device("cuda", key="corpus.classifier.device")


def test_slurm_jobs_on_one_node_do_not_share_lock_names(monkeypatch, tmp_path):
    """SLURM renumbers each job's GPUs from 0: the locks are per job, or job B would wait on job A's "GPU 0"."""
    monkeypatch.delenv("CAPATLAS_GPU_LOCKS", raising=False)
    monkeypatch.setattr(devices.tempfile, "gettempdir", lambda: str(tmp_path))
    monkeypatch.setenv("SLURM_JOB_ID", "101")
    first = devices.lock_dir()
    monkeypatch.setenv("SLURM_JOB_ID", "102")
    assert devices.lock_dir() != first and first.parent == tmp_path
    monkeypatch.delenv("SLURM_JOB_ID")
    assert devices.lock_dir().name == f"capatlas-gpu-locks-{os.getuid()}"

"""Shared test fixtures. Nothing here (or anywhere in the suite) may reach a hub."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DIR = REPO_ROOT.parent / "shared"
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED_DIR.is_dir():
        pytest.skip("../shared is not beside this checkout")
    return SHARED_DIR


@pytest.fixture(scope="session")
def venv_bin() -> Path:
    """Directory holding this interpreter's console scripts (capatlas, snakemake)."""
    return VENV_BIN


@pytest.fixture
def demo_config():
    """The demo config, validated, as a fresh dict a test may modify."""
    from capatlas.config import load_config

    return load_config(REPO_ROOT / "config" / "config.yaml")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module's in-process model work (use with pytestmark usefixtures)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_snakemake(repo_root, venv_bin, workdir, *extra, check=True):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run(
        [
            str(venv_bin / "snakemake"),
            "--snakefile",
            str(repo_root / "Snakefile"),
            "--directory",
            str(workdir),
            "--configfile",
            str(repo_root / "config" / "config.yaml"),
            "--cores",
            "2",
            *extra,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,  # the demo takes ~8 minutes on 2 idle cores; a loaded CI machine needs room
    )
    if check:
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result


@pytest.fixture(scope="session")
def demo_run(repo_root, venv_bin, tmp_path_factory):
    """The default demo DAG, run once per session in a scratch directory.

    CAPATLAS_DEMO_WORKDIR=DIR reuses (and brings up to date) the demo run in
    DIR instead: handy when iterating on the end-to-end tests.
    """
    reuse = os.environ.get("CAPATLAS_DEMO_WORKDIR")
    workdir = Path(reuse) if reuse else tmp_path_factory.mktemp("demo")
    run_snakemake(repo_root, venv_bin, workdir)
    return workdir / "results" / "demo"

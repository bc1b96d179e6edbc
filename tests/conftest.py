"""Shared test fixtures. Nothing here (or anywhere in the suite) may reach a hub."""

from __future__ import annotations

import os
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

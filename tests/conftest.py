"""Shared test fixtures. Nothing here (or anywhere in the suite) may reach a hub."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DIR = REPO_ROOT.parent / "shared"
VENV_BIN = Path(sys.executable).parent


# `make test` runs the suite on two pytest-xdist workers, a test module to a
# worker (--dist loadfile). A finished DAG run is shared between modules
# through session fixtures, which each worker builds for itself; so every
# module that uses one of these runs goes to the same worker and the run is
# built once. Groups with long runs are handed out first: the two workers
# start the two longest chains at once and the short modules fill the gaps.
SHARED_RUNS = {
    "demo-run": {"demo_run"},
    "reduced-runs": {"clean_run", "second_clean_run", "slurm_run"},
}
# xdist's own --dist loadgroup loses its groups under pytest 9.2 (it renames
# node ids through an attribute pytest 9 no longer reads), hence a scheduler
# of our own. Workers know each test's fixtures, the controller only node ids: workers
# write the module -> group table here for the controller's scheduler.
GROUPS_FILE = "capatlas_groups_file"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    by_module: dict[str, list] = {}
    for item in items:
        by_module.setdefault(module_of(item.nodeid), []).append(item)
    groups, rank = {}, {}
    for module, module_items in by_module.items():
        used = set().union(*(item.fixturenames for item in module_items))
        group = next((name for name, fixtures in SHARED_RUNS.items() if used & fixtures), module)
        slow = any(item.get_closest_marker("slow") for item in module_items)
        groups[module] = group
        rank[module] = list(SHARED_RUNS).index(group) if group in SHARED_RUNS else len(SHARED_RUNS) + (not slow)
    # A stable sort: each module's tests stay together and in file order.
    items.sort(key=lambda item: rank[module_of(item.nodeid)])
    workerinput = getattr(config, "workerinput", None)
    if workerinput and GROUPS_FILE in workerinput:
        path = Path(workerinput[GROUPS_FILE]) / f"{workerinput['workerid']}.json"
        path.write_text(json.dumps(groups))


def module_of(nodeid: str) -> str:
    return nodeid.split("::")[0]


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    config = node.config
    if not hasattr(config, "_capatlas_groups"):
        config._capatlas_groups = Path(tempfile.mkdtemp(prefix="capatlas-test-groups-"))
    node.workerinput[GROUPS_FILE] = str(config._capatlas_groups)


def pytest_unconfigure(config):
    # The controller's table directory: nothing of the run left in the system's temp.
    if hasattr(config, "_capatlas_groups"):
        shutil.rmtree(config._capatlas_groups, ignore_errors=True)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class SharedRunScheduling(LoadFileScheduling):
        """One test module to a worker at a time, except that modules sharing a run go together."""

        _groups: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self._groups is None:
                # Every worker wrote the same table before reporting its collection.
                self._groups = json.loads(next(config._capatlas_groups.glob("*.json")).read_text())
            module = module_of(nodeid)
            return self._groups.get(module, module)

    return SharedRunScheduling(config, log)


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

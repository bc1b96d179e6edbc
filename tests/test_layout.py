"""The package's layout rules (docs/DESIGN.md, "The package"): which wing may import which."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import capatlas
from capatlas import plan

PACKAGE = Path(capatlas.__file__).parent
WINGS = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists())
# Every wing may import the top-level modules and artifacts/; these edges are the only others.
ALLOWED = {("unlearning", "benchmarks"), ("release", "analysis")}


def imported_wings(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "capatlas" and len(parts) > 1 and parts[1] in WINGS:
                found.add(parts[1])
    return found


def test_wings_are_the_stage_families():
    assert WINGS == ["analysis", "artifacts", "attribution", "benchmarks", "corpus", "demo", "release", "unlearning"]


def test_no_relative_imports_and_no_wing_reaches_into_another():
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        relative = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level]
        assert not relative, f"{path.relative_to(PACKAGE)}: relative import at line(s) {relative}"
        rel = path.relative_to(PACKAGE)
        if len(rel.parts) == 1:
            # Top-level modules are shared by all wings and import none (cli names them as strings).
            assert not imported_wings(path), f"{rel} imports a wing"
            continue
        wing = rel.parts[0]
        for other in imported_wings(path) - {wing, "artifacts"}:
            assert (wing, other) in ALLOWED, f"{rel} imports capatlas.{other}"


def test_no_function_is_longer_than_80_lines():
    # Long functions hid load, compute and write in one body; split ones can be tested and read apart.
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80:
                long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, long


def test_the_plan_is_light():
    # The Snakefile imports capatlas.plan to plan the DAG: no array, table or model library may come with it.
    code = (
        "import sys, capatlas.plan\n"
        "print(','.join(sorted(n for n in ('numpy', 'pandas', 'pyarrow', 'torch') if n in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"imported with capatlas.plan: {out.stdout.strip()}"


def test_unlearning_runs_are_named_once():
    # The rules fill RUN_PATH with wildcards, PlannedRun with values: one spelling of a run's directory.
    run = plan.PlannedRun("arc_challenge", "top1", "random", 2)
    assert run.path == plan.RUN_PATH.format(target="arc_challenge", unit="top1", condition="random", seed=2)
    assert run.path == "arc_challenge/top1/random/seed2"
    assert plan.shard_file(3) == f"shard-{plan.shard_ids({'shards': {'count': 4}})[3]}.parquet" == "shard-00003.parquet"

"""Check that two revisions of capatlas give the demo's outputs byte for byte.

For a behaviour-preserving change (a restructure, a speed-up) the demo's
stage outputs must not move by one byte. This script checks out each
revision with `git worktree` at the *same* path (the outputs' provenance
records absolute paths, so runs in different directories differ in their
metadata by design), runs the default demo DAG there, keeps its results,
and compares the files below byte for byte:

    manifest/*            shards/*.parquet         attribution/scores/*.parquet
    influence/bin_matrix.parquet   contrast/summary.json   unlearning/summary.parquet

Usage:
  python bench/check_demo_identical.py --before REV [--after REV] [--cores 2] [--keep DIR]
``--after`` defaults to the working tree (uncommitted changes included, via a
stash-free copy of tracked and untracked files). One demo run takes ~5 minutes
on 2 idle cores, so the check takes ~10. Exit status 1 if any file differs.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import REPO

COMPARED = (
    "manifest/*",
    "shards/*.parquet",
    "attribution/scores/*.parquet",
    "influence/bin_matrix.parquet",
    "contrast/summary.json",
    "unlearning/summary.parquet",
)


def checkout(rev: str | None, dest: Path) -> None:
    """`rev` (or, for None, the working tree's tracked and untracked files) at `dest`."""
    if dest.exists():
        shutil.rmtree(dest)
    if rev is not None:
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "--force", str(dest), rev], check=True,
                       capture_output=True)  # fmt: skip
        return
    files = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        check=True, capture_output=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, files):
        source = REPO / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


def run_demo(tree: Path, cores: int) -> None:
    snakemake = Path(sys.executable).parent / "snakemake"
    log = tree / "check_demo_identical.log"
    with open(log, "w") as handle:
        code = subprocess.call([str(snakemake), "--cores", str(cores)], cwd=tree, stdout=handle, stderr=subprocess.STDOUT)
    if code != 0:
        raise SystemExit(f"the demo failed in {tree} (exit {code}); see {log}")


def compare(before: Path, after: Path) -> list[str]:
    problems = []
    for pattern in COMPARED:
        names = sorted({p.relative_to(before) for p in before.glob(pattern)} | {p.relative_to(after) for p in after.glob(pattern)})
        if not names:
            problems.append(f"{pattern}: no such output in either run")
        for name in names:
            a, b = before / name, after / name
            if not (a.is_file() and b.is_file()):
                problems.append(f"{name}: only in {'before' if a.is_file() else 'after'}")
            elif not filecmp.cmp(a, b, shallow=False):
                problems.append(f"{name}: differs")
            else:
                print(f"identical  {name}", file=sys.stderr)
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="git revision of the reference")
    parser.add_argument("--after", default=None, help="git revision to check (default: the working tree)")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--keep", default=None, help="keep both runs' results under this directory")
    args = parser.parse_args()

    keep = Path(args.keep or tempfile.mkdtemp(prefix="capatlas-identical-")).resolve()
    tree = Path(tempfile.mkdtemp(prefix="capatlas-identical-tree-")) / "capatlas"
    try:
        for label, rev in (("before", args.before), ("after", args.after)):
            checkout(rev, tree)
            run_demo(tree, args.cores)
            shutil.copytree(tree / "results" / "demo", keep / label, dirs_exist_ok=False)
            if rev is not None:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=True)
            else:
                shutil.rmtree(tree)
        problems = compare(keep / "before", keep / "after")
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "prune"], check=False)
        shutil.rmtree(tree.parent, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(keep, ignore_errors=True)
    for line in problems:
        print(f"DIFFERENT  {line}", file=sys.stderr)
    print(f"check_demo_identical before={args.before} after={args.after or 'worktree'} differing={len(problems)}")
    raise SystemExit(1 if problems else 0)


if __name__ == "__main__":
    main()

"""Demo ground truth across a grid of world seeds x demo-training threads.

The demo is one draw of a synthetic world and of a tiny model trained on it
with one CPU's float path. This bench measures what carries across draws and
float paths: for every cell (world seed, demo-training threads) it runs the
whole default demo DAG with those two keys overridden (world, model,
attribution, unlearning all follow), then reads
``contrast/demo_recovery.json``, ``influence/bin_matrix.parquet`` and
``unlearning/summary.parquet``. Threads 1 and 2 are two float paths on one
machine: a stand-in for another CPU's kernels.

Per cell it prints:

* ``p@k``: precision at k of each benchmark's planted bins;
* ``margin``: z of the benchmark's weakest planted bin minus z of its
  strongest filler bin (z = the bin matrix's ``zscore`` column); > 0 means
  every planted bin outranks every filler bin;
* ``d``: per unlearning target and unlearning seed, gamma(influence) -
  gamma(random) on answer log-probability (nats; > 0: the influence-ranked
  forget set costs the target more than a within-unit random one);
* ``own`` and ``others``: the influence condition's mean damage on the
  target against the mean over the other three benchmarks.

and then the grid's summary (worst and mean per benchmark) and one
parseable last line. ``--markdown`` also prints the table kept in
docs/DESIGN.md.

Usage:
  python bench/bench_demo_recovery.py [--seeds 42 43 44 45 46] [--threads 1 2] [--keep DIR] [--markdown]
  python bench/bench_demo_recovery.py --from-runs DIR ... [--markdown]   (summarise finished cells)
A cell whose demo model comes out byte-identical to the same seed's first
cell (other threads) shares that cell's results: only the model is trained
again, and the line says so. One full cell takes ~4-5 minutes on 2 idle
cores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from _common import REPO, machine

from capatlas.unlearning import summary as unlearning_summary


def snakemake(workdir: Path, cores: int, configs: list[str], *extra: str) -> None:
    command = [
        str(Path(sys.executable).parent / "snakemake"),
        "--snakefile", str(REPO / "Snakefile"),
        "--directory", str(workdir),
        "--cores", str(cores),
        "--configfile", str(REPO / "config" / "config.yaml"), *configs, *extra,
    ]  # fmt: skip
    log = workdir / "bench_demo_recovery.log"
    with open(log, "a") as handle:
        returncode = subprocess.call(command, stdout=handle, stderr=subprocess.STDOUT)
    if returncode != 0:
        raise SystemExit(f"{workdir}: the demo DAG failed (exit {returncode}); see {log}")


def model_digest(results: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted((results / "demo" / "model").glob("*.safetensors")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def run_cell(seed: int, threads: int, workdir: Path, cores: int, extra_configs: list[str], reference: dict | None):
    """Run one cell; returns (results dir, seconds, the reference cell's results if the model came out identical).

    Demo-training threads change only the demo model. When this cell's model is byte-identical to the
    reference cell's (same seed, other threads), every later stage has identical inputs and settings, so
    the reference cell's results are this cell's; the full DAG runs only when the models differ.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    override = workdir / "cell.yaml"
    override.write_text(yaml.safe_dump({"seed": seed, "demo": {"train": {"threads": threads}}}))
    configs = [*extra_configs, str(override)]
    start = time.perf_counter()
    if reference is not None:
        snakemake(workdir, cores, configs, "--until", "demo_model")
        if model_digest(workdir / "results" / "demo") == reference["model_sha256"]:
            return reference["results"], time.perf_counter() - start, True
    snakemake(workdir, cores, configs)
    return workdir / "results" / "demo", time.perf_counter() - start, False


def planted_margins(results: Path, recovery: dict) -> dict[str, float]:
    """Per benchmark: z of the weakest planted bin minus z of the strongest filler bin."""
    matrix = pd.read_parquet(results / "influence" / "bin_matrix.parquet")
    margins = {}
    for name, entry in recovery["benchmarks"].items():
        z = matrix[matrix["benchmark"] == name].set_index("bin_id")["zscore"]
        planted = z.index.isin(entry["planted_bins"])
        margins[name] = float(z[planted].min() - z[~planted].max())
    return margins


def summarise(results: Path, seconds: float | None = None) -> dict:
    """One finished demo run's recovery and unlearning figures."""
    recovery = json.loads((results / "contrast" / "demo_recovery.json").read_text())
    config = yaml.safe_load((results / "config.yaml").read_text())
    cell = {
        "seed": int(config["seed"]),
        "threads": int(config["demo"]["train"]["threads"]),
        "seconds": seconds,
        "precision": {name: e["precision_at_k"] for name, e in recovery["benchmarks"].items()},
        "ranks": {name: sorted(e["planted_ranks"].values()) for name, e in recovery["benchmarks"].items()},
        "margin": planted_margins(results, recovery),
    }
    summary_path = results / "unlearning" / "summary.parquet"
    if summary_path.exists():
        summary = pd.read_parquet(summary_path)
        pairs = unlearning_summary.paired_differences(summary, "logprob", "influence", "random")
        cell["d"] = {
            target: {int(row.seed): round(float(row.d), 3) for row in group.itertuples()}
            for target, group in pairs.groupby("target")
        }
        damage = unlearning_summary.mean_damage(summary, "logprob", "influence")
        cell["own"] = {t: float(row[t]) for t, row in damage.iterrows()}
        cell["others"] = {t: float(row.drop(t).mean()) for t, row in damage.iterrows()}
    return cell


def report(cell: dict) -> None:
    took = f" ({cell['seconds']:.0f} s)" if cell.get("seconds") else ""
    same = cell.get("same_model_as_threads")
    note = f": byte-identical demo model to threads {same}, so its results" if same else ""
    print(f"seed {cell['seed']} threads {cell['threads']}{took}{note}", file=sys.stderr)
    for name, p in cell["precision"].items():
        line = f"  {name:22s} p@k={p:.2f} ranks={cell['ranks'][name]} margin={cell['margin'][name]:+.2f}"
        if "d" in cell:
            line += f" d={cell['d'].get(name)} own={cell['own'][name]:.2f} others={cell['others'][name]:.2f}"
        print(line, file=sys.stderr)


def grid_summary(cells: list[dict]) -> dict[str, dict]:
    """Per benchmark over the cells: worst and mean p@k, worst margin, and whether the unlearning contrast
    held everywhere (every d > 0; own damage above the others' mean in every cell)."""
    out = {}
    for name in cells[0]["precision"]:
        precision = [c["precision"][name] for c in cells]
        entry = {
            "p_min": min(precision),
            "p_mean": round(float(np.mean(precision)), 3),
            "margin_min": round(min(c["margin"][name] for c in cells), 3),
            "margin_median": round(float(np.median([c["margin"][name] for c in cells])), 3),
        }
        if all("d" in c for c in cells):
            d = [v for c in cells for v in c["d"][name].values()]
            entry["d_min"] = min(d)
            entry["d_positive"] = all(v > 0 for v in d)
            entry["own_gap_min"] = round(min(c["own"][name] - c["others"][name] for c in cells), 3)
            entry["own_most"] = entry["own_gap_min"] > 0
        out[name] = entry
    return out


def markdown(cells: list[dict]) -> str:
    names = list(cells[0]["precision"])
    head = "| seed | threads | " + " | ".join(f"{n} p@4 (margin)" for n in names) + " | d min (all targets) | min own - others |"
    lines = [head, "|" + "---|" * (len(names) + 4)]
    for c in cells:
        same = c.get("same_model_as_threads")
        row = [str(c["seed"]), f"{c['threads']} (model identical to {same}'s)" if same else str(c["threads"])]
        row += [f"{c['precision'][n]:.2f} ({c['margin'][n]:+.1f})" for n in names]
        if "d" in c:
            row.append(f"{min(v for n in names for v in c['d'][n].values()):+.2f}")
            row.append(f"{min(c['own'][n] - c['others'][n] for n in names):+.2f}")
        else:
            row += ["-", "-"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44, 45, 46])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="demo.train.threads values")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--configfile", action="append", default=[], help="extra config overrides for every cell")
    parser.add_argument("--keep", default=None, help="keep the runs under this directory (s<seed>t<threads>/)")
    parser.add_argument("--from-runs", nargs="+", default=None, help="summarise these finished run directories")
    parser.add_argument("--markdown", action="store_true", help="also print the grid as a markdown table")
    args = parser.parse_args()

    if args.from_runs:
        cells = [summarise(Path(d) / "results" / "demo") for d in args.from_runs]
    else:
        base = Path(args.keep).resolve() if args.keep else Path(tempfile.mkdtemp(prefix="capatlas-bench-recovery-"))
        extra = [str(Path(c).resolve()) for c in args.configfile]
        cells = []
        try:
            for seed in args.seeds:
                reference = None
                for threads in args.threads:
                    results, seconds, same = run_cell(seed, threads, base / f"s{seed}t{threads}", args.cores, extra, reference)
                    cell = summarise(results, seconds) | {"threads": threads, "same_model_as_threads": reference["threads"] if same else None}
                    if reference is None:
                        reference = {"results": results, "threads": threads, "model_sha256": model_digest(results)}
                    cells.append(cell)
                    report(cell)
        finally:
            if not args.keep:
                shutil.rmtree(base, ignore_errors=True)
    if args.from_runs:
        for cell in cells:
            report(cell)
    summary = grid_summary(cells)
    for name, entry in summary.items():
        print(f"{name:22s} " + " ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in entry.items()), file=sys.stderr)
    if args.markdown:
        print(markdown(cells), file=sys.stderr)
    seconds = [c["seconds"] for c in cells if c.get("seconds")]
    timing = f"cell_seconds_mean={np.mean(seconds):.0f} " if seconds else ""
    compact = lambda obj: json.dumps(obj, separators=(",", ":"))  # noqa: E731
    print(
        f"bench_demo_recovery cells={compact([[c['seed'], c['threads']] for c in cells])} "
        f"summary={compact(summary)} {timing}{machine()}"
    )


if __name__ == "__main__":
    main()

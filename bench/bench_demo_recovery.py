"""Demo ground truth across world seeds: planted-bin precision at k and the unlearning contrast per seed.

The shipped demo is one draw (seed 42) of a synthetic world and a tiny model
trained on it; the e2e tests assert that draw. This script measures how far
the result carries to other draws: for each seed it runs the default demo
DAG with ``seed`` overridden (world, model, attribution, unlearning all
change), then reads ``contrast/demo_recovery.json`` and
``unlearning/summary.parquet``.

Prints one table per seed to stderr and one parseable last line:

    bench_demo_recovery seeds=[..] precision={benchmark: [p@k per seed]} d_positive={benchmark: [..]} on_target_most={benchmark: [..]} ...

``d_positive``: d = gamma(influence) - gamma(random) on answer log-probability
is > 0 in every unlearning seed; ``on_target_most``: the influence-ranked
forget set costs its target more than it costs any other benchmark.

Usage: python bench/bench_demo_recovery.py --seeds 42 43 44 [--parallel 2] [--keep DIR] [--configfile EXTRA.yaml];
python bench/bench_demo_recovery.py --from-runs DIR ... only summarises finished runs (their results/demo).
One demo run takes ~4 minutes on 2 idle cores; two in parallel ~9.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import yaml
from _common import REPO, machine

from capatlas import unlearning_summary


def run_seed(seed: int, workdir: Path, cores: int, extra_configs: list[str]) -> Path:
    workdir.mkdir(parents=True)
    override = workdir / "seed.yaml"
    override.write_text(yaml.safe_dump({"seed": seed}))
    command = [
        str(Path(sys.executable).parent / "snakemake"),
        "--snakefile", str(REPO / "Snakefile"),
        "--directory", str(workdir),
        "--cores", str(cores),
        "--configfile", str(REPO / "config" / "config.yaml"), *extra_configs, str(override),
    ]  # fmt: skip
    log = workdir / "bench_demo_recovery.log"
    with open(log, "w") as handle:
        returncode = subprocess.call(command, stdout=handle, stderr=subprocess.STDOUT)
    if returncode != 0:
        raise SystemExit(f"seed {seed}: the demo DAG failed (exit {returncode}); see {log}")
    return workdir / "results" / "demo"


def summarise(results: Path) -> dict:
    """Precision at k per benchmark, and the unlearning contrast per target, of one finished demo run."""
    recovery = json.loads((results / "contrast" / "demo_recovery.json").read_text())
    config = yaml.safe_load((results / "config.yaml").read_text())
    entry = {
        "seed": config["seed"],
        "precision": {name: e["precision_at_k"] for name, e in recovery["benchmarks"].items()},
        "ranks": {name: sorted(e["planted_ranks"].values()) for name, e in recovery["benchmarks"].items()},
    }
    summary_path = results / "unlearning" / "summary.parquet"
    if summary_path.exists():
        summary = pd.read_parquet(summary_path)
        cells = unlearning_summary.paired_differences(summary, "logprob", "influence", "random")
        entry["d"] = {t: [round(float(v), 3) for v in g["d"]] for t, g in cells.groupby("target")}
        damage = unlearning_summary.mean_damage(summary, "logprob", "influence")
        entry["on_target_most"] = {t: bool((row[t] > row.drop(t)).all()) for t, row in damage.iterrows()}
    return entry


def report(entry: dict) -> None:
    print(f"seed {entry['seed']}", file=sys.stderr)
    for name, p in entry["precision"].items():
        d = entry.get("d", {}).get(name)
        most = entry.get("on_target_most", {}).get(name)
        print(f"  {name:24s} p@k={p:.2f} ranks={entry['ranks'][name]} d={d} on_target_most={most}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--parallel", type=int, default=1, help="demo runs at once (each uses --cores)")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--configfile", action="append", default=[], help="extra config overrides for every seed")
    parser.add_argument("--keep", default=None, help="keep the runs under this directory (seed<N>/)")
    parser.add_argument("--from-runs", nargs="+", default=None, help="summarise these finished run directories")
    args = parser.parse_args()

    if args.from_runs:
        entries = [summarise(Path(d) / "results" / "demo") for d in args.from_runs]
    else:
        base = Path(args.keep).resolve() if args.keep else Path(tempfile.mkdtemp(prefix="capatlas-bench-recovery-"))
        extra = [str(Path(c).resolve()) for c in args.configfile]
        try:
            with ThreadPoolExecutor(max_workers=args.parallel) as pool:
                runs = list(pool.map(lambda s: run_seed(s, base / f"seed{s}", args.cores, extra), args.seeds))
            entries = [summarise(results) for results in runs]
        finally:
            if not args.keep:
                shutil.rmtree(base, ignore_errors=True)
    for entry in entries:
        report(entry)
    names = list(entries[0]["precision"])
    compact = lambda obj: json.dumps(obj, separators=(",", ":"))  # noqa: E731
    d_positive = {n: [all(v > 0 for v in e.get("d", {}).get(n, [float("nan")])) for e in entries] for n in names}
    print(
        f"bench_demo_recovery seeds={compact([e['seed'] for e in entries])} "
        f"precision={compact({n: [e['precision'][n] for e in entries] for n in names})} "
        f"d_positive={compact(d_positive)} "
        f"on_target_most={compact({n: [e.get('on_target_most', {}).get(n) for e in entries] for n in names})} "
        f"{machine()}"
    )


if __name__ == "__main__":
    main()

"""Demo end to end: wall time and peak memory of the full default demo DAG, plus per-rule times.

Runs ``snakemake --cores N`` with config/config.yaml in a fresh scratch
directory (nothing cached: demo world, model, attribution, analysis,
unlearning), samples the summed RSS of Snakemake and every job it starts
(psutil, every 0.2 s), then reads each job's ``benchmark:`` tsv under
results/demo/benchmarks/ and sums the seconds per rule.

Prints the per-rule table to stderr and one parseable last line:

    bench_demo_e2e cores=N seconds=S peak_tree_rss_mb=M jobs=J job_cpu_s=C rule_seconds={...} rule_cpu_seconds={...} cpus=...

Usage: python bench/bench_demo_e2e.py --cores 2 [--keep DIR] (DIR keeps the finished run for other benches);
python bench/bench_demo_e2e.py --from-run results/demo only summarises an existing run's benchmark files.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from _common import REPO, TreeMemorySampler, machine


def rule_seconds(benchmarks: Path) -> tuple[dict[str, float], dict[str, float], int]:
    """Wall and CPU seconds per rule (summed over its jobs) from Snakemake's benchmark tsv files."""
    per_rule: dict[str, float] = defaultdict(float)
    cpu: dict[str, float] = defaultdict(float)
    jobs = 0
    for tsv in sorted(benchmarks.rglob("*.tsv")):
        relative = tsv.relative_to(benchmarks)
        # benchmarks/<rule>.tsv or benchmarks/<family>/.../<wildcards>.tsv: the first part names the
        # rule family; attribution/ holds three rules (preconditioner.tsv, queries/, scores/).
        parts = relative.with_suffix("").parts
        rule = "/".join(parts[:2]) if parts[0] == "attribution" else parts[0]
        with open(tsv) as handle:
            for row in csv.DictReader(handle, delimiter="\t"):
                per_rule[rule] += float(row["s"])
                cpu[rule] += float(row.get("cpu_time") or 0.0)
                jobs += 1
    order = sorted(per_rule, key=lambda k: -per_rule[k])
    return {k: per_rule[k] for k in order}, {k: cpu[k] for k in order}, jobs


def report(per_rule: dict[str, float], cpu: dict[str, float]) -> None:
    print(f"{'rule':40s} {'wall s':>8s} {'cpu s':>8s}", file=sys.stderr)
    for rule, value in per_rule.items():
        print(f"{rule:40s} {value:8.1f} {cpu[rule]:8.1f}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--keep", default=None, help="run in this directory and keep it (must not exist)")
    parser.add_argument(
        "--from-run", default=None, help="only summarise the benchmark files of this finished run (results/<run>)"
    )
    args = parser.parse_args()
    if args.from_run:
        per_rule, cpu, jobs = rule_seconds(Path(args.from_run) / "benchmarks")
        report(per_rule, cpu)
        print(
            f"bench_demo_e2e_rules run={args.from_run} jobs={jobs} job_cpu_s={sum(cpu.values()):.0f} rule_seconds="
            f"{json.dumps({k: round(v, 1) for k, v in per_rule.items()}, separators=(',', ':'))} rule_cpu_seconds="
            f"{json.dumps({k: round(v, 1) for k, v in cpu.items()}, separators=(',', ':'))} {machine()}"
        )
        return
    if args.keep:
        workdir = Path(args.keep).resolve()
        workdir.mkdir(parents=True)
    else:
        workdir = Path(tempfile.mkdtemp(prefix="capatlas-bench-demo-"))
    command = [
        str(Path(sys.executable).parent / "snakemake"),
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(REPO / "config" / "config.yaml"),
        "--cores",
        str(args.cores),
    ]
    log = workdir / "bench_demo_e2e.log"
    try:
        with open(log, "w") as handle:
            start = time.perf_counter()
            proc = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT)
            with TreeMemorySampler(proc.pid) as memory:
                returncode = proc.wait()
            seconds = time.perf_counter() - start
        if returncode != 0:
            sys.exit(f"the demo DAG failed (exit {returncode}); last lines of {log}:\n" + log.read_text()[-3000:])
        per_rule, cpu, jobs = rule_seconds(workdir / "results" / "demo" / "benchmarks")
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    report(per_rule, cpu)
    print(
        f"bench_demo_e2e cores={args.cores} seconds={seconds:.1f} peak_tree_rss_mb={memory.peak_mb:.0f} jobs={jobs} "
        f"job_cpu_s={sum(cpu.values()):.0f} "
        f"rule_seconds={json.dumps({k: round(v, 1) for k, v in per_rule.items()}, separators=(',', ':'))} "
        f"rule_cpu_seconds={json.dumps({k: round(v, 1) for k, v in cpu.items()}, separators=(',', ':'))} {machine()}"
    )


if __name__ == "__main__":
    main()

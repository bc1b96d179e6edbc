"""Shard overhead: our `capatlas score-shard` job vs a bare Bergson scoring call on the same shard.

Both run as fresh processes, alternately (ours, bare, ours, bare, ...),
on one shard of a finished run (the demo by default), with the same
model, preconditioner, optimizer state, projection, precision, token
batch, truncation, max batch size and torch threads, and one query index
holding every benchmark's queries, as our job builds it, so both compute
each document's gradient once. The bare side is, with ``--bare api`` (the
default), Bergson's ``score_dataset`` called directly on the shard already
tokenised (untimed): the least any caller must spend; with ``--bare cli``,
the ``bergson score`` command on the shard's texts as JSONL (it tokenises
them). What ours adds: provenance checks and the model's sha256,
tokenising with the document-length check, combining the query indices,
per-benchmark means and per-bin sums, and two outputs.

Prints each repetition to stderr and one parseable last line:

    bench_shard_overhead shard=K docs=D reps=R ours_s=... bare_s=... ratio=R cpu_ratio=C ...

(ratio = median of ours/bare wall times over the paired repetitions).

Usage: python bench/bench_shard_overhead.py --run results/demo --shard 00000 --reps 5 --threads 2 [--bare cli]
(make a finished demo run with `snakemake --cores 2`, or `bench/bench_demo_e2e.py --keep DIR`
and pass --run DIR/results/demo).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from _common import REPO, Stopwatch, machine

from capatlas.attribution.context import bergson_score_command  # noqa: E402
from capatlas.attribution.score_shard import QueryIndex, combine_query_indices  # noqa: E402


def run_inputs(run: Path, shard: str) -> dict:
    config = yaml.safe_load((run / "config.yaml").read_text())
    demo = config["demo"]["enabled"]
    model = run / "demo" / "model" if demo else Path(config["models"]["document"]["path"])
    optimizer_state = config["attribution"].get("optimizer_state")
    if demo and not optimizer_state and (model / "optimizer.pt").is_file():
        optimizer_state = str(model / "optimizer.pt")  # what the DAG passes in the demo
    names = [b["name"] for b in config["benchmarks"]]
    inputs = {
        "config": config,
        "config_path": run / "config.yaml",
        "model": model.resolve(),
        "optimizer_state": str(Path(optimizer_state).resolve()) if optimizer_state else None,
        "shard": (run / "shards" / f"shard-{shard}.parquet").resolve(),
        "preconditioner": (run / "attribution" / "preconditioner").resolve(),
        "query_indices": {n: (run / "attribution" / "queries" / n).resolve() for n in names},
    }
    missing = [
        str(p) for p in [inputs["shard"], inputs["preconditioner"], *inputs["query_indices"].values()] if not p.exists()
    ]
    if missing:
        sys.exit(f"{run} is not a finished run (missing {', '.join(missing)}); run the DAG first")
    return inputs


def combined_index(inputs: dict, dest: Path) -> Path:
    """Every benchmark's query index in one, as score-shard builds it (not timed)."""
    indices = []
    for name, directory in inputs["query_indices"].items():
        info = json.loads((directory / "index" / "info.json").read_text())
        indices.append(QueryIndex(name, directory, directory / "index", {}, "", [], int(info["num_grads"])))
    combine_query_indices(indices, dest)
    return dest


def ours_command(inputs: dict, out: Path, threads: int) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "capatlas.cli",
        "score-shard",
        "--config",
        str(inputs["config_path"]),
        "--model",
        str(inputs["model"]),
        "--shard",
        str(inputs["shard"]),
        "--preconditioner",
        str(inputs["preconditioner"]),
        "--query-index",
        *[f"{n}={p}" for n, p in inputs["query_indices"].items()],
        "--threads",
        str(threads),
        "--out-scores",
        str(out / "scores.parquet"),
        "--out-binsums",
        str(out / "binsums.safetensors"),
    ]
    if inputs["optimizer_state"]:
        command += ["--optimizer-state", inputs["optimizer_state"]]
    return command


def bare_command(inputs: dict, docs: Path, queries: Path, out: Path) -> list[str]:
    return bergson_score_command(
        out / "bergson",
        model=inputs["model"],
        dataset=docs,
        query_index=queries,
        hessian=inputs["preconditioner"] / "hessian",
        attribution=inputs["config"]["attribution"],
        optimizer_state=inputs["optimizer_state"],
    )


BARE_API = """
import json, sys
from bergson.config.config import DataConfig, DistributedConfig, IndexConfig, PreprocessConfig, ScoreConfig
from bergson.score.score import score_dataset
from bergson.utils.worker_utils import validate_run_path
a = json.loads(sys.argv[1])
cfg = IndexConfig(
    run_path=a["run_path"], overwrite=True, model=a["model"], revision=None, precision=a["precision"],
    projection_dim=a["projection_dim"], projection_type="rademacher", projection_scale="jl",
    projection_target="per_module", include_bias=False, token_batch_size=a["token_batch_size"],
    max_batch_size=a["max_batch_size"], optimizer_state=a["optimizer_state"] or "", loss_fn="ce",
    loss_reduction="sum", data=DataConfig(dataset=a["dataset"], split="train"),
    distributed=DistributedConfig(nproc_per_node=1),
)
validate_run_path(cfg)
score_dataset(
    cfg,
    ScoreConfig(query_path=a["queries"], score="individual", precision="fp32"),
    PreprocessConfig(unit_normalize=True, hessian_path=a["hessian"]),
)
"""


def tokenised_dataset(inputs: dict, texts: list[str], dest: Path) -> Path:
    """The shard's texts tokenised as Bergson would (truncated to the token batch), saved untimed."""
    from datasets import Dataset
    from transformers import AutoTokenizer

    a = inputs["config"]["attribution"]
    tokenizer = AutoTokenizer.from_pretrained(inputs["model"])
    limit = min(a["max_length"], a["token_batch_size"])
    ids = tokenizer(texts, truncation=bool(a["truncation"]), max_length=limit)["input_ids"]
    ids = [x for x in ids if len(x) >= 2]
    Dataset.from_dict({"input_ids": ids, "length": [len(x) for x in ids]}).save_to_disk(str(dest))
    return dest


def bare_api_command(inputs: dict, dataset: Path, queries: Path, out: Path) -> list[str]:
    a = inputs["config"]["attribution"]
    spec = {
        "run_path": str(out / "bergson-api"),
        "model": str(inputs["model"]),
        "precision": a["precision"],
        "projection_dim": a["projection_dim"],
        "token_batch_size": a["token_batch_size"],
        "max_batch_size": a.get("max_batch_size", 1),
        "optimizer_state": inputs["optimizer_state"],
        "dataset": str(dataset),
        "queries": str(queries),
        "hessian": str(inputs["preconditioner"] / "hessian"),
    }
    return [sys.executable, "-c", BARE_API, json.dumps(spec)]


def timed(command: list[str], env: dict, log: Path) -> tuple[float, float]:
    with open(log, "w") as handle, Stopwatch() as watch:
        code = subprocess.run(command, env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO).returncode
    if code != 0:
        sys.exit(f"{command[0]} {command[1] if len(command) > 1 else ''} failed (exit {code}):\n{log.read_text()[-3000:]}")
    return watch.seconds, watch.cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="results/demo", help="a finished run directory (results/<run>)")
    parser.add_argument("--shard", default="00000")
    parser.add_argument("--reps", type=int, default=5, help="pairs of (ours, bare) runs")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads of both")
    parser.add_argument(
        "--bare",
        choices=["api", "cli"],
        default="api",
        help="api: Bergson's score_dataset in a fresh process on the pre-tokenised shard (tokenising untimed, the "
        "strict comparator); cli: the `bergson score` command on the texts",
    )
    parser.add_argument("--docs", type=int, default=None, help="only the shard's first N documents (default: all)")
    args = parser.parse_args()
    inputs = run_inputs(Path(args.run).resolve(), args.shard)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
        "OMP_NUM_THREADS": str(args.threads),
        "MKL_NUM_THREADS": str(args.threads),
        "PYTHONPATH": str(REPO / "workflow"),
    }
    env.pop("CAPATLAS_FAIL_SHARDS", None)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        table = pq.read_table(inputs["shard"])
        if args.docs and args.docs < table.num_rows:
            # The first documents of the shard as a shard of their own: both sides score the same ones.
            table = table.slice(0, args.docs)
            inputs["shard"] = root / f"shard-{args.shard}.parquet"
            pq.write_table(table, inputs["shard"])
        texts = table.column("text").to_pylist()
        docs = root / "docs.jsonl"
        docs.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        queries = combined_index(inputs, root / "queries")
        dataset = tokenised_dataset(inputs, texts, root / "tokens") if args.bare == "api" else None
        ours, bare = [], []
        for rep in range(args.reps):
            out = root / f"rep{rep}"
            out.mkdir()
            ours.append(timed(ours_command(inputs, out, args.threads), env, out / "ours.log"))
            if args.bare == "api":
                command = bare_api_command(inputs, dataset, queries, out)
            else:
                command = bare_command(inputs, docs, queries, out)
            bare.append(timed(command, env, out / "bare.log"))
            print(
                f"rep {rep}: ours {ours[-1][0]:.2f} s ({ours[-1][1]:.2f} cpu s), "
                f"bare {bare[-1][0]:.2f} s ({bare[-1][1]:.2f} cpu s)",
                file=sys.stderr,
            )
            shutil.rmtree(out)
    ratio = statistics.median(o[0] / b[0] for o, b in zip(ours, bare))
    cpu_ratio = statistics.median(o[1] / b[1] for o, b in zip(ours, bare))
    print(
        f"bench_shard_overhead shard={args.shard} docs={len(texts)} reps={args.reps} threads={args.threads} bare={args.bare} "
        f"ours_s={statistics.median(o[0] for o in ours):.2f} bare_s={statistics.median(b[0] for b in bare):.2f} "
        f"ours_cpu_s={statistics.median(o[1] for o in ours):.2f} bare_cpu_s={statistics.median(b[1] for b in bare):.2f} "
        f"ratio={ratio:.3f} cpu_ratio={cpu_ratio:.3f} {machine()}"
    )


if __name__ == "__main__":
    main()

"""Scoring throughput: documents/s and tokens/s of the score-shard job by model size and document length.

For each model size (a randomly initialised ``Olmo3ForCausalLM``, built
here and saved to a temp directory with a word-level tokenizer, so a
document of L words is exactly L tokens) and each document length, this
fits a preconditioner and one benchmark's query gradients with the real
stages (not timed), then times ``capatlas.attribution.score_shard.score_shard``
(Bergson gradient of every document, projection, R^-1/2, unit norm,
scoring against the queries, bin sums, outputs) on a shard of D documents
and twice on a 1-document shard (the faster of the two is the fixed cost).
The marginal rate (D - 1 documents over the difference of the times)
leaves out the fixed cost of loading the
model and Bergson, which a paper-scale shard of thousands of documents
amortises; the fixed cost is printed too.

Achieved FLOP/s counts what Bergson computes: 4 N FLOPs per token, N =
parameters of the Linear layers (lm_head included, embeddings not): the
forward's 2 N and the backward's input gradients, 2 N; Bergson freezes
every weight (`model.requires_grad_(False)` in bergson/utils/worker_utils.py,
only the input embeddings keep a gradient so the backward runs), so the
weight-gradient products of the usual 6 N are never formed (its hooks
project each module's per-token input and output gradient instead). Plus
causal attention 6 x layers x hidden x L per
token (QK^T and AV over L/2 keys on average, forward + backward), plus Bergson's two-sided
projection of every Linear module's gradient, 2 p (in + out) per token and
module. On a GPU (``--device cuda --dtype bf16``) pass the device's peak
(``--peak-tflops``, e.g. 989 for H100 SXM bf16 dense) to get the MFU.

Prints a table to stderr and one parseable JSON last line:

    bench_scoring {"device": ..., "rows": [{"model": ..., "n_linear": ..., "length": ..., "docs_per_s": ...,
    "tokens_per_s": ..., "tflops": ..., "mfu": ...}, ...], "machine": ...}

Usage: python bench/bench_scoring.py --sizes tiny small medium --lengths 128 512 --docs 8 --threads 2
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import logging
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from _common import Stopwatch, machine

# name: (hidden, layers, intermediate, heads)
SIZES = {
    "tiny": (64, 2, 256, 4),
    "small": (128, 4, 512, 4),
    "medium": (256, 4, 1024, 8),
    "large": (512, 8, 2048, 8),
    "xlarge": (1024, 8, 4096, 16),
}
VOCAB = 4096
N_QUERIES = 8
QUERY_WORDS = 32
PROJECTION_DIM = 16


def build_model(directory: Path, size: str, max_length: int, dtype: str):
    import torch
    from factories import write_word_level_model

    hidden, layers, intermediate, heads = SIZES[size]
    model = write_word_level_model(
        directory, (f"w{i}" for i in range(VOCAB - 4)), hidden=hidden, intermediate=intermediate, layers=layers,
        heads=heads, max_length=max_length,
    )  # fmt: skip
    linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    return {
        "n_linear": sum(m.weight.numel() for m in linear),
        "projection_flops_per_token": sum(2 * PROJECTION_DIM * (m.in_features + m.out_features) for m in linear),
        "layers": layers,
        "hidden": hidden,
    }


def words(rng: np.random.Generator, n: int) -> str:
    return " ".join(f"w{i}" for i in rng.integers(0, VOCAB - 4, size=n))


def write_queries(directory: Path, model_dir: Path, rng: np.random.Generator, n_queries: int = N_QUERIES) -> Path:
    from datasets import Dataset
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    input_ids, labels, item_ids = [], [], []
    for j in range(n_queries):
        ids = tokenizer(words(rng, QUERY_WORDS))["input_ids"]
        input_ids.append(ids)
        labels.append([-100] * (len(ids) - 8) + ids[-8:])  # the last 8 tokens stand for the answer
        item_ids.append(f"q{j}")
    Dataset.from_dict({"input_ids": input_ids, "labels": labels, "item_id": item_ids}).save_to_disk(str(directory))
    return directory


def write_shard(path: Path, n_docs: int, length: int, rng: np.random.Generator) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.table(
            {
                "doc_id": pa.array([f"doc-{i}" for i in range(n_docs)], pa.string()),
                "bin_id": pa.array(rng.integers(0, 576, size=n_docs).astype(np.int32), pa.int32()),
                "n_tokens": pa.array([length] * n_docs, pa.int64()),
                "text": pa.array([words(rng, length) for _ in range(n_docs)], pa.string()),
            }
        ),
        path,
    )
    return path


def measure(root: Path, size: str, length: int, args: argparse.Namespace) -> dict:
    from capatlas.attribution.precondition import fit_preconditioner
    from capatlas.attribution.query_gradients import build_query_gradients
    from capatlas.attribution.score_shard import score_shard
    from capatlas.config import validate_config

    rng = np.random.default_rng(0)
    model_dir = root / "model"
    shape = build_model(model_dir, size, max(length, QUERY_WORDS), args.dtype)
    queries = write_queries(root / "queries", model_dir, rng, args.queries)
    shard = write_shard(root / "shard-00000.parquet", args.docs, length, rng)
    single = write_shard(root / "shard-00001.parquet", 1, length, rng)
    config = validate_config(
        {
            "demo": {"enabled": True},
            "corpus": {"labels": {"topic": {"field": "t"}, "format": {"field": "f"}}},
            "attribution": {
                "projection_dim": PROJECTION_DIM,
                "precision": args.dtype,
                "token_batch_size": max(length, QUERY_WORDS),
                "max_length": max(length, QUERY_WORDS),
                "preconditioner_docs": min(args.docs, 8),
                "target_downweight_components": 4,
                "device": args.device,
            },
        }
    )
    with Stopwatch() as fit:
        fit_preconditioner(
            config, model=model_dir, shards=[shard], queries={"bench": queries}, out=root / "preconditioner"
        )
        build_query_gradients(
            config,
            model=model_dir,
            queries=queries,
            preconditioner=root / "preconditioner",
            benchmark="bench",
            out=root / "index",
        )

    def score(path: Path, tag: str, profile: bool = False) -> Stopwatch:
        profiler = cProfile.Profile() if profile else None
        with Stopwatch() as watch:
            if profiler:
                profiler.enable()
            score_shard(
                config,
                model=model_dir,
                shard=path,
                preconditioner=root / "preconditioner",
                query_indices={"bench": root / "index"},
                out_scores=root / f"{tag}.parquet",
                out_binsums=root / f"{tag}.safetensors",
            )
            if profiler:
                profiler.disable()
        if profiler:
            stream = io.StringIO()
            stats = pstats.Stats(profiler, stream=stream)
            stats.sort_stats("cumulative").print_stats(30)
            stats.sort_stats("tottime").print_stats(20)
            print(stream.getvalue(), file=sys.stderr)
        return watch

    # The first call carries one-off costs (lazy imports, allocator); of the two 1-document
    # calls the faster is the fixed cost, so one slow outlier does not skew the marginal rate.
    fixed = min(score(single, "warmup"), score(single, "single"), key=lambda watch: watch.seconds)
    total = score(shard, "shard", profile=args.profile)
    marginal = max(total.seconds - fixed.seconds, 1e-9) / (args.docs - 1)
    marginal_cpu = max(total.cpu - fixed.cpu, 1e-9) / (args.docs - 1)
    # Attention: QK^T and AV, 2 FLOPs per multiply-add over L/2 keys on average (causal), x3 with the backward.
    attention = 6 * shape["layers"] * shape["hidden"] * length
    flops_per_token = LINEAR_FLOPS_PER_PARAM * shape["n_linear"] + attention + shape["projection_flops_per_token"]
    tflops = flops_per_token * length / marginal / 1e12
    row = {
        "model": size,
        "n_linear": shape["n_linear"],
        "length": length,
        "docs": args.docs,
        "queries": args.queries,
        "fixed_s": round(fixed.seconds, 2),
        "shard_s": round(total.seconds, 2),
        "docs_per_s": round(1 / marginal, 3),
        "tokens_per_s": round(length / marginal, 1),
        # Per CPU-second (all threads): what a loaded machine still measures fairly.
        "tokens_per_cpu_s": round(length / marginal_cpu, 1),
        "flops_per_token": int(flops_per_token),
        "tflops": round(tflops, 4),
        "gflops_per_cpu_s": round(flops_per_token * length / marginal_cpu / 1e9, 2),
        "fit_s": round(fit.seconds, 2),
    }
    if args.peak_tflops:
        row["mfu"] = round(tflops / args.peak_tflops, 4)
    return row


# Per Linear parameter and token: forward 2 + input-gradient backward 2. Bergson freezes the weights, so the
# weight-gradient products (the usual 6 N's last 2) are not computed; an optimizer-state normalizer makes
# Bergson form each module's full gradient, adding them back (+2).
LINEAR_FLOPS_PER_PARAM = 4
# OLMo-3 7B (allenai/Olmo-3-1025-7B config.json): hidden, layers, intermediate, vocab; sliding
# window 4096 on 3 of every 4 layers.
OLMO3_7B = {"hidden": 4096, "layers": 32, "intermediate": 11008, "vocab": 100278, "window": 4096, "swa_share": 0.75}
STUDY_DOCS = 5_678_621
# Dense peak TFLOP/s of one GPU: bf16 tensor cores, TF32 tensor cores, plain fp32 (no tensor cores).
# H200 has the H100 SXM's compute (and more, faster memory).
PEAKS = {"bf16": 989.0, "tf32": 494.7, "fp32": 66.9}


def olmo3_flops_per_doc(tokens: int) -> float:
    """Bergson's FLOPs for one document of `tokens` tokens through OLMo-3 7B: forward, input-gradient backward,
    attention, projections."""
    m = OLMO3_7B
    h, layers, inter = m["hidden"], m["layers"], m["intermediate"]
    n_linear = layers * (4 * h * h + 3 * h * inter) + h * m["vocab"]
    # Average keys per token: L/2 with full causal attention; with a sliding window W,
    # tokens past W see W keys.
    full_keys = tokens / 2
    w = m["window"]
    window_keys = full_keys if tokens <= w else (w * w / 2 + (tokens - w) * w) / tokens
    keys = (1 - m["swa_share"]) * full_keys + m["swa_share"] * window_keys
    attention = 6 * layers * h * 2 * keys  # 2 matmuls x 2 FLOPs per multiply-add x 3 (fwd + bwd), per token
    projection = layers * (4 * 2 * PROJECTION_DIM * (h + h) + 2 * 2 * PROJECTION_DIM * (h + inter) + 2 * PROJECTION_DIM * (inter + h))
    return tokens * (LINEAR_FLOPS_PER_PARAM * n_linear + attention + projection)


def paper_estimate(mean_tokens: list[int], mfu: dict[str, float]) -> list[dict]:
    rows = []
    for tokens in mean_tokens:
        flops = STUDY_DOCS * olmo3_flops_per_doc(tokens)
        row = {"mean_tokens": tokens, "pflop": round(flops / 1e15)}
        for precision, share in mfu.items():
            row[f"gpu_hours_{precision}"] = round(flops / (PEAKS[precision] * 1e12 * share) / 3600)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small", "medium"], choices=list(SIZES))
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--docs", type=int, default=16, help="documents in the timed shard (>= 2)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--queries", type=int, default=N_QUERIES, help="query gradients scored against (the study: ~17,000)")
    parser.add_argument("--profile", action="store_true", help="cProfile the timed shard call (stderr)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak for --dtype, for the MFU")
    parser.add_argument(
        "--estimate",
        type=int,
        nargs="*",
        default=None,
        metavar="MEAN_TOKENS",
        help="print only the paper-scale GPU-hour estimate for these mean document lengths (no measurement)",
    )
    parser.add_argument(
        "--mfu", default="bf16=0.40,tf32=0.40,fp32=0.50", help="assumed model-FLOP utilisation per precision"
    )
    args = parser.parse_args()
    if args.estimate is not None:
        mfu = {k: float(v) for k, v in (item.split("=") for item in args.mfu.split(","))}
        rows = paper_estimate(args.estimate or [1500, 3000, 4096, 8192], mfu)
        for row in rows:
            print(" ".join(f"{k}={v}" for k, v in row.items()), file=sys.stderr)
        print("bench_scoring_estimate " + json.dumps({"docs": STUDY_DOCS, "mfu": mfu, "peaks": PEAKS, "rows": rows}))
        return
    if args.docs < 2:
        parser.error("--docs must be 2 or more")
    import torch

    from capatlas.command import set_torch_threads

    set_torch_threads(args.threads)
    logging.disable(logging.INFO)  # Bergson logs every module it hooks, per call
    rows = []
    for size in args.sizes:
        for length in args.lengths:
            with tempfile.TemporaryDirectory() as tmp:
                row = measure(Path(tmp), size, length, args)
            rows.append(row)
            print(
                f"{size:7s} N={row['n_linear']:>11,d} L={length:5d}: {row['docs_per_s']:8.3f} docs/s "
                f"{row['tokens_per_s']:10.1f} tok/s {row['tflops'] * 1e3:8.2f} GFLOP/s "
                f"({row['gflops_per_cpu_s']:.2f} GFLOP per CPU-s) "
                f"(fixed {row['fixed_s']:.1f} s, fit {row['fit_s']:.1f} s)",
                file=sys.stderr,
            )
    device = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu"
    print(
        "bench_scoring "
        + json.dumps(
            {"device": device, "dtype": args.dtype, "threads": args.threads, "rows": rows, "machine": machine()},
            separators=(",", ":"),
        )
    )


if __name__ == "__main__":
    main()

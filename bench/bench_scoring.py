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

With ``--sections`` each row also splits the marginal seconds per document
into Bergson's forward + backward (with its projection hooks), the query
products (the scorer's calls less its writes: R^-1/2, norms and the
products against the queries, `capatlas.attribution.score_block`), the
score writer, and capatlas's accumulation (doc means, bin sums, combined
bootstrap) and outputs. ``--max-batch-size N`` scores N documents per
forward + backward (attribution.max_batch_size). With ``--baseline`` it times a plain forward +
backward (loss.backward(), weight gradients on) of the same documents'
tokens, one document per pass and ``--baseline-batch`` documents per pass,
and reports the score cost as a ratio to each (``vs_fwd_bwd_unbatched``,
``vs_fwd_bwd_batched``). ``--workdir DIR`` keeps the model, preconditioner
and query gradients of each configuration in DIR and reuses them on the
next call (fitting 17,000 queries' gradients takes minutes); the timed
scoring runs afresh every time.

Usage: python bench/bench_scoring.py --sizes tiny small medium --lengths 128 512 --docs 8 --threads 2
       python bench/bench_scoring.py --sizes tiny --lengths 128 --docs 64 --queries 17000 --sections --baseline
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
import time
from contextlib import contextmanager
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
    shape_file = root / "shape.json"
    reuse = shape_file.is_file() and (root / "index").is_dir()
    if reuse:  # --workdir: this configuration's model, shards and fitted inputs are already there
        shape = json.loads(shape_file.read_text())
        shard, single = root / "shard-00000.parquet", root / "shard-00001.parquet"
    else:
        # A batch of documents must fit the model's positions (token_batch_size <= its maximum length); RoPE has no
        # position weights, so the weights are the same for any maximum.
        shape = build_model(model_dir, size, max(length, QUERY_WORDS) * (args.max_batch_size or 1), args.dtype)
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
                "token_batch_size": max(length, QUERY_WORDS) * (args.max_batch_size or 1),
                **({"max_batch_size": args.max_batch_size} if args.max_batch_size else {}),
                "max_length": max(length, QUERY_WORDS),
                "preconditioner_docs": min(args.docs, 8),
                "target_downweight_components": 4,
                "device": args.device,
            },
        }
    )
    with Stopwatch() as fit:
        if not reuse:
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
            shape_file.write_text(json.dumps(shape))
    sections = Sections() if args.sections else None

    def score(path: Path, tag: str, profile: bool = False) -> Stopwatch:
        profiler = cProfile.Profile() if profile else None
        with Stopwatch() as watch, (sections.timing(tag) if sections else _nothing()):
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
    warmup, single_run = score(single, "warmup"), score(single, "single")
    fixed = min(warmup, single_run, key=lambda watch: watch.seconds)
    fixed_tag = "warmup" if fixed is warmup else "single"
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
        "ms_per_doc": round(1e3 * marginal, 3),
        "cpu_ms_per_doc": round(1e3 * marginal_cpu, 3),
        "flops_per_token": int(flops_per_token),
        "tflops": round(tflops, 4),
        "gflops_per_cpu_s": round(flops_per_token * length / marginal_cpu / 1e9, 2),
        "fit_s": round(fit.seconds, 2),
    }
    if args.max_batch_size:
        row["max_batch_size"] = args.max_batch_size
    if args.peak_tflops:
        row["mfu"] = round(tflops / args.peak_tflops, 4)
    if sections:
        # Marginal milliseconds per document of each section (the shard's minus the 1-document run's).
        row["sections_ms_per_doc"] = {
            name: round(1e3 * (sections.seconds["shard"].get(name, 0.0) - sections.seconds[fixed_tag].get(name, 0.0))
                        / (args.docs - 1), 3)
            for name in Sections.NAMES
        }  # fmt: skip
        row["sections_ms_per_doc"]["total"] = round(1e3 * marginal, 3)
    if args.baseline:
        unbatched, batched = plain_forward_backward(model_dir, shard, args.device, args.dtype, args.baseline_batch)
        row["fwd_bwd_ms_per_doc"] = {"unbatched": round(1e3 * unbatched, 3), "batched": round(1e3 * batched, 3),
                                     "batch": args.baseline_batch}  # fmt: skip
        row["vs_fwd_bwd_unbatched"] = round(marginal / unbatched, 3)
        row["vs_fwd_bwd_batched"] = round(marginal / batched, 3)
    return row


@contextmanager
def _nothing():
    yield


class Sections:
    """Wall seconds inside a few functions of a scoring call, by call tag (patched in for the call)."""

    NAMES = ("bergson_loop", "fwd_bwd", "query_products", "writer", "accumulate", "outputs")

    def __init__(self) -> None:
        self.seconds: dict[str, dict[str, float]] = {}

    def _targets(self):
        from bergson.collector.collector import CollectorComputer
        from bergson.collector.gradient_collectors import GradientCollector
        from bergson.score.scorer import Scorer

        from capatlas.attribution import score_block, score_shard

        return [
            ("bergson_loop", CollectorComputer, "run_with_collector_hooks"),
            ("process_batch", GradientCollector, "process_batch"),
            ("scorer", Scorer, "__call__"),
            ("writer_factory", score_block, "_writer_class"),
            ("scorer_factory", score_block, "_scorer_class"),
            ("accumulate", score_shard, "accumulate"),
            ("outputs", score_shard, "_outputs"),
            ("write_scores", score_shard, "write_scores"),
            ("write_bin_sums", score_shard, "write_bin_sums"),
        ]

    @contextmanager
    def timing(self, tag: str):
        totals = self.seconds.setdefault(tag, {})

        def timed(name, fn):
            def wrapper(*a, **k):
                start = time.perf_counter()
                try:
                    return fn(*a, **k)
                finally:
                    totals[name] = totals.get(name, 0.0) + time.perf_counter() - start

            return wrapper

        patched = []
        for name, owner, attr in self._targets():
            original = getattr(owner, attr)
            if name in ("writer_factory", "scorer_factory"):
                def factory(original=original, name=name):
                    cls = original()
                    if name == "writer_factory":
                        cls.__call__ = timed("writer", cls.__call__)
                    else:  # the block scorer: scoring per call and the last block, written at the final flush
                        cls.__call__ = timed("scorer", cls.__call__)
                        cls.drain = timed("scorer", cls.drain)
                    return cls

                replacement = factory
            else:
                replacement = timed(name, original)
            setattr(owner, attr, replacement)
            patched.append((owner, attr, original))
        try:
            yield
        finally:
            for owner, attr, original in reversed(patched):
                setattr(owner, attr, original)
            # Bergson's loop = forward + backward (with its hooks) + process_batch (scoring and writing).
            totals["fwd_bwd"] = totals.get("bergson_loop", 0.0) - totals.get("process_batch", 0.0)
            # The scorer's calls write through the writer: the query products (with R^-1/2 and norms) are the rest.
            totals["query_products"] = totals.get("scorer", 0.0) - totals.get("writer", 0.0)
            totals["outputs"] = sum(totals.get(k, 0.0) for k in ("outputs", "write_scores", "write_bin_sums"))


def plain_forward_backward(model_dir: Path, shard: Path, device: str, dtype: str, batch: int) -> tuple[float, float]:
    """Seconds per document of a plain forward + backward (summed token loss, weight gradients on) of the shard's
    documents, one per pass and `batch` per pass: the fastest of two passes over the shard each."""
    import pyarrow.parquet as pq
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    texts = pq.read_table(shard, columns=["text"]).column("text").to_pylist()
    ids = [torch.tensor(tokenizer(t)["input_ids"], device=device) for t in texts]
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, torch_dtype=torch.bfloat16 if dtype == "bf16" else torch.float32
    ).to(device)

    def step(x: torch.Tensor) -> None:
        logits = model(x).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)).float(), x[:, 1:].reshape(-1), reduction="sum"
        )
        loss.backward()
        model.zero_grad(set_to_none=True)

    def per_doc(groups: list[list[torch.Tensor]]) -> float:
        best = float("inf")
        for _ in range(2):
            start = time.perf_counter()
            for group in groups:
                step(torch.nn.utils.rnn.pad_sequence(group, batch_first=True))
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
        return best / len(ids)

    step(ids[0][None])  # warm-up
    unbatched = per_doc([[x] for x in ids])
    batched = per_doc([ids[i : i + batch] for i in range(0, len(ids), batch)])
    return unbatched, batched


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
    parser.add_argument("--sections", action="store_true", help="split the marginal ms per document by section")
    parser.add_argument(
        "--baseline", action="store_true", help="also time a plain forward + backward of the same tokens (ratio)"
    )
    parser.add_argument("--baseline-batch", type=int, default=8, help="documents per pass of the batched baseline")
    parser.add_argument(
        "--max-batch-size", type=int, default=None, help="attribution.max_batch_size (default: the config's, 1)"
    )
    parser.add_argument("--workdir", default=None, help="keep and reuse each configuration's fitted inputs here")
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
            if args.workdir:
                batch = f"-B{args.max_batch_size}" if args.max_batch_size else ""
                root = Path(args.workdir) / f"{size}-L{length}-D{args.docs}-Q{args.queries}-{args.dtype}{batch}"
                root.mkdir(parents=True, exist_ok=True)
                row = measure(root, size, length, args)
            else:
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
            if "sections_ms_per_doc" in row:
                print("  ms per document: " + " ".join(f"{k}={v}" for k, v in row["sections_ms_per_doc"].items()),
                      file=sys.stderr)  # fmt: skip
            if "fwd_bwd_ms_per_doc" in row:
                print(
                    f"  plain forward+backward: {row['fwd_bwd_ms_per_doc']} ms per document; score cost "
                    f"{row['vs_fwd_bwd_unbatched']}x unbatched, {row['vs_fwd_bwd_batched']}x batched",
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

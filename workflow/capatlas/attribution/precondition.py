"""`capatlas preconditioner`: TrackStar's mixed autocorrelation R, fitted once for every shard.

R is fitted on a seeded random sample of ``attribution.preconditioner_docs``
documents drawn across all shards and on every query of every benchmark,
then mixed: ``R = l * R_query + (1 - l) * R_train`` with ``l`` from
``bergson.utils.math.compute_lambda`` (``target_downweight_components``).
One R for all shards keeps shard scores comparable (bergson-notes 4); a
sample that is not the first N rows keeps it representative.

The sample is order-independent: a document is in it when the sha256 of
``(seed, doc_id)`` is among the N smallest, so it does not depend on the
shard count, the shard order or the row order.

Output (replaced atomically) ``<out>/``:
  hessian/          the mixed GradientProcessor (Bergson's hessian_path)
  sample.parquet    doc_id, bin_id, n_tokens of the sampled documents
  provenance.json   model, Bergson and capatlas versions, the attribution
                    fingerprint, lambda, the sample's hash, optimizer
                    state used or not, the query sets
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from capatlas.command import Command
from capatlas.artifacts.provenance import PROVENANCE_FILE
from capatlas.artifacts.shards import read_shard
from capatlas.attribution.context import (
    add_model_arguments,
    HESSIAN_DIR,
    SAMPLE_FILE,
    Job,
    QuerySet,
    base_provenance,
    bergson_workdir,
    load_query_set,
    load_tokenizer,
    make_job,
    parse_named_paths,
    prepare_run_path,
    save_token_dataset,
    deterministic_torch,
    tokenize_documents,
)
from capatlas.errors import CapatlasError
from capatlas.fileio import atomic_path, file_sha256, write_json, write_parquet
from capatlas.taxonomy import N_BINS

log = logging.getLogger(__name__)

COMMAND = Command(torch_threads="attribution")

STAGE = "preconditioner"
NOISE_FLOOR = 1e-6


def sample_key(seed: int, doc_id: str) -> bytes:
    return hashlib.sha256(f"{seed}\0{doc_id}".encode()).digest()


def sample_documents(shards: Sequence[Path], n: int, seed: int) -> pa.Table:
    """doc_id, bin_id, text of the `n` documents with the smallest sample keys, in key order."""
    total = 0

    def keys():
        nonlocal total
        for k, shard in enumerate(shards):
            ids = read_shard(shard, ["doc_id"]).column("doc_id").to_pylist()
            total += len(ids)
            for doc_id in ids:
                yield sample_key(seed, doc_id), doc_id, k

    # A bounded heap: the paper-scale working set has millions of ids.
    chosen = heapq.nsmallest(n, keys())
    if not chosen:
        raise CapatlasError("the shards hold no documents to fit the preconditioner on")
    if total < n:
        log.warning(
            "attribution.preconditioner_docs=%d but the shards hold only %d documents: R is fitted on all of them",
            n,
            total,
        )
    for (_, doc_a, k_a), (_, doc_b, k_b) in zip(chosen, chosen[1:]):
        if doc_a == doc_b:
            where = f"twice in {shards[k_a]}" if k_a == k_b else f"in both {shards[k_a]} and {shards[k_b]}"
            raise CapatlasError(f"document {doc_a!r} appears {where}: doc ids must be unique across shards")
    wanted_by_shard: dict[int, list[str]] = {}
    for _, doc_id, k in chosen:
        wanted_by_shard.setdefault(k, []).append(doc_id)
    rows: dict[str, tuple[int, str]] = {}
    for k, wanted in sorted(wanted_by_shard.items()):
        table = read_shard(shards[k], doc_ids=wanted)
        for doc_id, bin_id, text in zip(
            table.column("doc_id").to_pylist(), table.column("bin_id").to_pylist(), table.column("text").to_pylist()
        ):
            rows[doc_id] = (int(bin_id), text)
    order = [doc_id for _, doc_id, _ in chosen]
    return pa.table(
        {
            "doc_id": pa.array(order, pa.string()),
            "bin_id": pa.array([rows[d][0] for d in order], pa.int32()),
            "text": pa.array([rows[d][1] for d in order], pa.string()),
        }
    )


def _fit_hessian(job: Job, run_path: Path, dataset: Path) -> Path:
    from bergson.cli.commands import Hessian
    from bergson.config.config import HessianConfig
    from bergson.config.config_io import save_run_config
    from bergson.hessians.hessian_approximations import approximate_hessians

    hessian_cfg = HessianConfig(method="autocorrelation")
    index_cfg = job.index_config(run_path, dataset)
    prepare_run_path(index_cfg)
    # mix_autocorrelation_matrices reads the method back from this config.
    save_run_config(Hessian(hessian_cfg=hessian_cfg, index_cfg=index_cfg), index_cfg.partial_run_path)
    approximate_hessians(index_cfg, hessian_cfg)
    return Path(index_cfg.run_path)


def mixing_lambda(query_path: Path, index_path: Path, target_components: int) -> dict:
    """The mixing weight exactly as mix_autocorrelation_matrices computes it, with the spectra behind it."""
    import torch
    from bergson.gradients import GradientProcessor
    from bergson.utils.math import compute_lambda

    query = GradientProcessor.load(query_path, map_location="cpu")
    index = GradientProcessor.load(index_path, map_location="cpu")
    lam = float(
        compute_lambda(
            query_eigen=query.hessians_eigen,
            index_eigen=index.hessians_eigen,
            target_components=target_components,
        )
    )

    def spectrum(processor) -> torch.Tensor:
        values = [v[0].double().clamp(min=0) for k, v in processor.hessians_eigen.items() if k in query.hessians_eigen]
        return torch.sort(torch.cat(values), descending=True).values

    def numerical_rank(processor) -> int:
        # The Grams are accumulated in fp32, so a module's eigenvalues below
        # ~1e-6 of its largest are rounding noise.
        rank = 0
        for name, (values, _) in processor.hessians_eigen.items():
            if name in query.hessians_eigen:
                values = values.double()
                rank += int((values > values.max().clamp(min=0) * NOISE_FLOOR).sum())
        return rank

    q_eig, i_eig = spectrum(query), spectrum(index)
    k = min(target_components, len(q_eig))
    q_rank, i_rank = numerical_rank(query), numerical_rank(index)
    return {
        "lambda": lam,
        "target_downweight_components": target_components,
        "component_used": k,
        "components": int(len(q_eig)),
        "query_eigenvalue_at_component": float(q_eig[k - 1]) if k else None,
        "train_eigenvalue_at_component": float(i_eig[k - 1]) if k else None,
        "query_nonzero_eigenvalues": q_rank,
        "train_nonzero_eigenvalues": i_rank,
    }


def _warn_about_mixing(mixing: dict) -> None:
    k = mixing["component_used"]
    advice = "use more queries (or preconditioner documents) or lower attribution.target_downweight_components"
    if mixing["lambda"] == 1.0:
        log.warning(
            "the mixing weight lambda is exactly 1.0: the pooled query spectrum has %d nonzero eigenvalues of %d "
            "components, fewer than the %d-th component where lambda is set, so R is the queries' "
            "autocorrelation alone and the training documents' statistics are ignored; %s",
            mixing["query_nonzero_eigenvalues"],
            mixing["components"],
            k,
            advice,
        )
    elif mixing["query_nonzero_eigenvalues"] < k or mixing["train_nonzero_eigenvalues"] < k:
        log.warning(
            "the mixing weight lambda = %.6g is set by rounding noise: at component %d the query spectrum "
            "(%d nonzero eigenvalues) or the training spectrum (%d) is already zero; %s",
            mixing["lambda"],
            k,
            mixing["query_nonzero_eigenvalues"],
            mixing["train_nonzero_eigenvalues"],
            advice,
        )
    else:
        log.info("mixing weight lambda = %.6g (set at component %d)", mixing["lambda"], k)


def _tokenized_sample(job, sample: pa.Table) -> tuple[list, np.ndarray, np.ndarray]:
    """The sample's token ids and lengths, and which documents Bergson can use (>= 2 tokens: something to predict)."""
    bins = sample.column("bin_id").to_numpy()
    if len(bins) and (bins.min() < 0 or bins.max() >= N_BINS):
        raise CapatlasError(f"a sampled document has bin_id outside 0..{N_BINS - 1}; the shards are corrupt")
    token_ids = tokenize_documents(
        load_tokenizer(job.model.path),
        sample.column("text").to_pylist(),
        sample.column("doc_id").to_pylist(),
        max_length=job.effective_max_length,
        truncation=job.settings.truncation,
        where="preconditioner sample",
    )
    lengths = np.array([len(ids) for ids in token_ids], dtype=np.int64)
    usable = lengths >= 2
    if not usable.any():
        raise CapatlasError("no sampled document has 2 or more tokens; cannot fit the preconditioner")
    if not usable.all():
        log.warning("%d sampled documents have fewer than 2 tokens and do not count towards R", int((~usable).sum()))
    return token_ids, lengths, usable


def _provenance(job, mixing, sample: pa.Table, shard_paths, lengths, usable, query_sets, hessian_files) -> dict:
    s = job.settings
    doc_ids = sample.column("doc_id").to_pylist()
    text_digest = hashlib.sha256()
    for text in sample.column("text").to_pylist():
        text_digest.update(hashlib.sha256(text.encode()).digest())
    return base_provenance(
        STAGE,
        job,
        mixing=mixing,
        sample={
            "seed": s.seed,
            "rule": "the N smallest sha256(seed \\0 doc_id) across all shards",
            "requested": s.preconditioner_docs,
            "n_docs": int(len(doc_ids)),
            "n_docs_used": int(usable.sum()),
            "n_tokens": int(lengths[usable].sum()),
            "doc_ids_sha256": hashlib.sha256("\n".join(doc_ids).encode()).hexdigest(),
            "texts_sha256": text_digest.hexdigest(),
            "shards": [str(p) for p in shard_paths],
        },
        optimizer_state={
            "used": bool(s.optimizer_state),
            "path": str(Path(s.optimizer_state).resolve()) if s.optimizer_state else None,
            "sha256": job.optimizer_state_sha256,
        },
        query_sets={q.name: q.describe() for q in query_sets},
        hessian_files=hessian_files,
    )


def fit_preconditioner(
    config: Mapping,
    *,
    model: str | os.PathLike,
    shards: Sequence[str | os.PathLike],
    queries: Mapping[str, str | os.PathLike],
    out: str | os.PathLike,
    optimizer_state: str | None = None,
    revision: str | None = None,
) -> dict:
    """Fit and mix R, write `out` atomically and return its provenance."""
    if not shards:
        raise CapatlasError("no shards given (--shards)")
    if not queries:
        raise CapatlasError("no query sets given (--queries): TrackStar mixes R with the queries' statistics")
    job = make_job(config, str(model), revision=revision, optimizer_state=optimizer_state)
    s = job.settings
    shard_paths = [Path(p).resolve() for p in shards]
    sample = sample_documents(shard_paths, s.preconditioner_docs, s.seed)
    token_ids, lengths, usable = _tokenized_sample(job, sample)

    query_sets: list[QuerySet] = [
        load_query_set(path, name=name, max_length=job.effective_max_length) for name, path in queries.items()
    ]
    pooled_ids = [ids for q in query_sets for ids in q.input_ids]
    pooled_labels = [lab for q in query_sets for lab in q.labels]
    log.info(
        "fitting R on %d documents (%d tokens) and %d queries from %d benchmark(s) on %s",
        int(usable.sum()),
        int(lengths[usable].sum()),
        len(pooled_ids),
        len(query_sets),
        job.device,
    )

    from bergson.process_grads import mix_autocorrelation_matrices

    out = Path(out).resolve()
    with bergson_workdir(out) as work, deterministic_torch():
        docs_ds = save_token_dataset(work / "docs", [ids for ids, ok in zip(token_ids, usable) if ok])
        queries_ds = save_token_dataset(work / "queries", pooled_ids, pooled_labels)
        train_hessian = _fit_hessian(job, work / "train_hessian", docs_ds)
        query_hessian = _fit_hessian(job, work / "query_hessian", queries_ds)
        mixing = mixing_lambda(query_hessian, train_hessian, s.target_downweight_components)
        mixed = mix_autocorrelation_matrices(
            query_path=query_hessian,
            index_path=train_hessian,
            output_path=work / "mixed",
            target_downweight_components=s.target_downweight_components,
        )
        _warn_about_mixing(mixing)

        with atomic_path(out, directory=True) as tmp:
            shutil.move(str(mixed), str(tmp / HESSIAN_DIR))
            hessian_files = {p.name: file_sha256(p) for p in sorted((tmp / HESSIAN_DIR).iterdir()) if p.is_file()}
            write_parquet(
                pa.table(
                    {
                        "doc_id": sample.column("doc_id"),
                        "bin_id": sample.column("bin_id"),
                        "n_tokens": pa.array(lengths, pa.int64()),
                    }
                ),
                tmp / SAMPLE_FILE,
            )
            provenance = _provenance(job, mixing, sample, shard_paths, lengths, usable, query_sets, hessian_files)
            write_json(provenance, tmp / PROVENANCE_FILE)
    return provenance


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser, model_help="document model directory (or a hub id in the local cache)")
    parser.add_argument("--shards", nargs="+", required=True, help="every shard-*.parquet (the sample spans all)")
    parser.add_argument(
        "--queries", nargs="+", required=True, help="query set directories, PATH or NAME=PATH (name: the benchmark)"
    )
    parser.add_argument("--out", required=True, help="preconditioner directory (replaced atomically)")


def run(args: argparse.Namespace, config: dict | None) -> None:
    fit_preconditioner(
        config,
        model=args.model,
        revision=args.revision,
        shards=args.shards,
        queries=parse_named_paths(args.queries, flag="--queries", require_name=False),
        optimizer_state=args.optimizer_state,
        out=args.out,
    )

"""`capatlas score-shard`: one shard's documents scored against every benchmark's queries.

Each document's gradient (summed token loss over its whole text) is scored
by Bergson's own ``score_dataset`` (its query products taken a block of
documents at a time, `capatlas.attribution.score_block`) against the
query gradients of all benchmarks at once, with ``unit_normalize`` on and
the mixed R^-1/2 applied to both sides: the score of (query, document) is
TrackStar's cosine. The benchmarks' query indices are concatenated into
one index in a scratch directory, so each document's gradient is computed
once however many benchmarks there are; each query column is scored on
its own, so this equals ``bergson score`` against each index separately
(to float32 rounding: the block products sum in another order).

Before anything runs, the preconditioner and every query index must come
from the same model, Bergson version and attribution fingerprint as this
job, and every query index from this very preconditioner; otherwise the
job fails naming the file and the difference, and writes nothing.

Outputs (each written to a temporary name and renamed when both are done):

``--out-scores`` (parquet, the shard's row order)
    doc_id, bin_id, and one float32 column per benchmark = the mean of
    the document's cosines over that benchmark's queries. A document with
    fewer than 2 tokens has nothing to predict and scores NaN.
``--out-binsums`` (safetensors; the format is `capatlas.artifacts.binsums`)
    per benchmark and bin: the sum and sum of squares of the documents'
    cosines per query, the count of scored documents, and the shard's part
    of the document bootstrap (`capatlas.artifacts.doc_bootstrap`): per
    replicate, the sum of Poisson weight x document score (the float32
    score of the parquet) and the sum of weights, with
    ``analysis.bootstrap`` replicates and weights keyed by (``seed``,
    doc_id), so `capatlas influence` only adds them up.
Both carry the provenance JSON (parquet: schema metadata key
``capatlas.provenance``); its ``document_bootstrap`` entry records the
replicate count, seed and weight scheme.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from capatlas.command import Command
from capatlas.artifacts.provenance import (
    PROVENANCE_FILE,
    check_identity,
    provenance_sha256,
    read_provenance,
)
from capatlas.attribution.context import (
    add_model_arguments,
    Job,
    ModelInfo,
    HESSIAN_DIR,
    INDEX_DIR,
    ITEMS_FILE,
    SCORE_PRECISION,
    base_provenance,
    bergson_workdir,
    load_tokenizer,
    make_job,
    model_info,
    parse_named_paths,
    prepare_run_path,
    save_token_dataset,
    deterministic_torch,
    tokenize_documents,
)
from capatlas.attribution.query_gradients import check_preconditioner
from capatlas.attribution.score_block import ScoreBlock, block_scoring
from capatlas.artifacts.binsums import BenchmarkSums, BinSums, write_bin_sums
from capatlas.artifacts.scores import scores_table, write_scores
from capatlas.artifacts.shards import read_shard
from capatlas.artifacts.doc_bootstrap import (
    WEIGHTS_SCHEME,
    bin_groups,
    document_keys,
    joint_bin_sums,
    poisson_weights,
    query_mean_weights,
    shard_bootstrap,
)
from capatlas.errors import CapatlasError
from capatlas.fileio import atomic_path, file_sha256
from capatlas.taxonomy import N_BINS

log = logging.getLogger(__name__)

COMMAND = Command(torch_threads="attribution")

STAGE = "score-shard"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_RESERVED = {"doc_id", "bin_id"}
# Score rows read from Bergson's memmap at a time (times the query count).
_CHUNK_CELLS = 1 << 24
# Fault injection for testing retries and partial reruns (issue 6): a comma-
# separated list of shard numbers whose score-shard job fails before it
# writes anything. An environment variable, not config, so flipping it does
# not change any job's parameters or provenance.
FAIL_SHARDS_ENV = "CAPATLAS_FAIL_SHARDS"
_SHARD_NUMBER = re.compile(r"(\d+)$")


def injected_failure(shard: Path, environ: Mapping[str, str] = os.environ) -> None:
    """Raise if `shard`'s number is listed in $CAPATLAS_FAIL_SHARDS (e.g. ``00002,5``)."""
    value = environ.get(FAIL_SHARDS_ENV, "").strip()
    if not value:
        return
    wanted = set()
    for token in value.split(","):
        token = token.strip()
        if not token:
            continue
        if not token.isdigit():
            raise CapatlasError(f"${FAIL_SHARDS_ENV} lists shard numbers such as 00002,5, not {token!r}")
        wanted.add(int(token))
    match = _SHARD_NUMBER.search(Path(shard).name.split(".")[0])
    if match and int(match.group(1)) in wanted:
        raise CapatlasError(
            f"injected failure: shard {Path(shard).name} is listed in ${FAIL_SHARDS_ENV}={value} "
            "(unset it to score this shard)"
        )


@dataclass(frozen=True)
class QueryIndex:
    name: str
    directory: Path
    index: Path
    provenance: dict
    provenance_sha256: str
    item_ids: list[str]
    num_grads: int


def check_query_indices(
    query_indices: Mapping[str, Path], *, expected_identity: dict, preconditioner_sha256: str, preconditioner: Path
) -> list[QueryIndex]:
    """Load every query index after checking it belongs to this job and this preconditioner."""
    loaded = []
    for name, directory in query_indices.items():
        if not _NAME.match(name) or name in _RESERVED:
            raise CapatlasError(
                f"benchmark name {name!r} cannot be a score column: use letters, digits, '_', '.', '-' "
                f"and not {', '.join(sorted(_RESERVED))}"
            )
        directory = Path(directory).resolve()
        provenance = read_provenance(directory, stage="query-gradients", produced_by="query-gradients")
        source = directory / PROVENANCE_FILE
        check_identity(expected_identity, provenance, source, rerun="query-gradients")
        recorded = provenance.get("preconditioner", {})
        if recorded.get("provenance_sha256") != preconditioner_sha256:
            raise CapatlasError(
                f"{source} was built against the preconditioner at {recorded.get('path')} "
                f"(provenance sha256 {str(recorded.get('provenance_sha256'))[:12]}...), not against {preconditioner} "
                f"(sha256 {preconditioner_sha256[:12]}...): rerun `capatlas query-gradients` for {name!r}"
            )
        if provenance.get("benchmark") != name:
            raise CapatlasError(
                f"{source} holds the queries of benchmark {provenance.get('benchmark')!r}, "
                f"but it was passed as {name!r}"
            )
        index = directory / INDEX_DIR
        info_path = index / "info.json"
        if not info_path.is_file():
            raise CapatlasError(
                f"{index} is not a Bergson query index (no info.json); rerun `capatlas query-gradients`"
            )
        info = json.loads(info_path.read_text())
        items_path = directory / ITEMS_FILE
        if not items_path.is_file():
            raise CapatlasError(f"{items_path} does not exist; rerun `capatlas query-gradients`")
        item_ids = [str(x) for x in pq.read_table(items_path, columns=["item_id"]).column("item_id").to_pylist()]
        if len(item_ids) != info.get("num_grads"):
            raise CapatlasError(
                f"{items_path} lists {len(item_ids)} items but {info_path} holds {info.get('num_grads')} gradients; "
                "rerun `capatlas query-gradients`"
            )
        loaded.append(
            QueryIndex(
                name=name,
                directory=directory,
                index=index,
                provenance=provenance,
                provenance_sha256=provenance_sha256(provenance),
                item_ids=item_ids,
                num_grads=int(info["num_grads"]),
            )
        )
    return loaded


def combine_query_indices(indices: list[QueryIndex], dest: Path) -> list[tuple[int, int]]:
    """One Bergson query index holding every benchmark's rows in order; returns each one's column range."""
    from bergson.config.config import PreprocessConfig
    from bergson.config.config_io import load_subconfig

    first = indices[0]
    first_info = json.loads((first.index / "info.json").read_text())
    first_processor = (first.index / "processor_config.yaml").read_text()
    first_preprocess = load_subconfig(first.index, "preprocess_cfg", PreprocessConfig)
    if first_preprocess is None or not first_preprocess.unit_normalize or first_preprocess.aggregation != "none":
        raise CapatlasError(
            f"{first.index} was not built unit-normalised with per-query gradients; rerun `capatlas query-gradients`"
        )
    dest.mkdir(parents=True)
    ranges = []
    start = 0
    with open(dest / "gradients.bin", "wb") as out:
        for entry in indices:
            info = json.loads((entry.index / "info.json").read_text())
            for key in ("grad_sizes", "base_dtype", "attribute_tokens"):
                if key == "grad_sizes":
                    same = list(info.get(key, {}).items()) == list(first_info.get(key, {}).items())
                else:
                    same = info.get(key) == first_info.get(key)
                if not same:
                    raise CapatlasError(
                        f"{entry.index}/info.json has a different {key} than {first.index}: the query indices "
                        "were not built with one model and setting; rerun `capatlas query-gradients`"
                    )
            if (entry.index / "processor_config.yaml").read_text() != first_processor:
                raise CapatlasError(
                    f"{entry.index} was projected differently from {first.index}; rerun `capatlas query-gradients`"
                )
            preprocess = load_subconfig(entry.index, "preprocess_cfg", PreprocessConfig)
            if preprocess is None or (
                preprocess.unit_normalize,
                preprocess.aggregation,
                bool(preprocess.hessian_path),
            ) != (first_preprocess.unit_normalize, first_preprocess.aggregation, bool(first_preprocess.hessian_path)):
                raise CapatlasError(
                    f"{entry.index} was preprocessed differently from {first.index}; rerun `capatlas query-gradients`"
                )
            source = entry.index / "gradients.bin"
            expected = info["num_grads"] * sum(info["grad_sizes"].values()) * np.dtype(info["base_dtype"]).itemsize
            if source.stat().st_size != expected:
                raise CapatlasError(f"{source} has {source.stat().st_size} bytes, not {expected}; it is truncated")
            with open(source, "rb") as handle:
                shutil.copyfileobj(handle, out, 1 << 24)
            ranges.append((start, start + entry.num_grads))
            start += entry.num_grads
    combined = dict(first_info)
    combined["num_grads"] = combined["num_items"] = start
    (dest / "info.json").write_text(json.dumps(combined, indent=2))
    shutil.copyfile(first.index / "processor_config.yaml", dest / "processor_config.yaml")
    shutil.copyfile(first.index / "config.yaml", dest / "config.yaml")
    return ranges


def _bergson_scores(job, docs_ds: Path, combined: Path, preconditioner: Path, run_path: Path):
    from bergson.config.config import PreprocessConfig, ScoreConfig
    from bergson.data import load_scores
    from bergson.score.score import score_dataset

    index_cfg = job.index_config(run_path, docs_ds)
    prepare_run_path(index_cfg)
    score_cfg = ScoreConfig(query_path=str(combined), score="individual", precision=SCORE_PRECISION)
    preprocess_cfg = PreprocessConfig(unit_normalize=True, hessian_path=str(preconditioner / HESSIAN_DIR))
    # Bergson's writer loops over query columns in Python; the block writer stores the same bytes at once.
    # Bergson's scorer reads the whole query matrix per batch (one document); the block scorer once per
    # SCORE_ROWS documents (capatlas.attribution.score_block).
    with block_scoring():
        score_dataset(index_cfg, score_cfg, preprocess_cfg)
    return ScoreBlock(load_scores(Path(index_cfg.run_path)).mmap)


@dataclass(frozen=True)
class JointDraw:
    """The combined bootstrap's draw: document keys' seed and each benchmark's normalised query weights."""

    seed: int
    query_weights: list[np.ndarray]  # per benchmark [n_queries, B], from doc_bootstrap.query_mean_weights

    @property
    def n_bootstrap(self) -> int:
        return self.query_weights[0].shape[1] if self.query_weights else 0


def accumulate(
    scores, bins: np.ndarray, ranges: list[tuple[int, int]], doc_ids: list[str], joint: JointDraw | None = None
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], np.ndarray, list[np.ndarray]]:
    """Stream Bergson's [docs, queries] scores into per-benchmark doc means and per-bin sums (float64).

    With `joint`, also each benchmark's combined-bootstrap sums ([B, 576];
    `capatlas.artifacts.doc_bootstrap`), which need the per-query scores and
    so are summed here, while they stream past.
    """
    n = len(bins)
    n_queries = ranges[-1][1] if ranges else 0
    means = [np.empty(n, dtype=np.float64) for _ in ranges]
    sums = [np.zeros((N_BINS, hi - lo), dtype=np.float64) for lo, hi in ranges]
    sumsq = [np.zeros((N_BINS, hi - lo), dtype=np.float64) for lo, hi in ranges]
    n_boot = joint.n_bootstrap if joint is not None else 0
    joint_sums = [np.zeros((N_BINS, n_boot), dtype=np.float64) for _ in ranges]
    counts = np.bincount(bins, minlength=N_BINS).astype(np.int64)
    keys = document_keys(doc_ids, joint.seed) if n_boot else None
    step = max(1, _CHUNK_CELLS // max(1, n_queries, n_boot))
    for a in range(0, n, step):
        b = min(n, a + step)
        block = np.asarray(scores[a:b], dtype=np.float64)
        if block.shape != (b - a, n_queries):
            raise CapatlasError(f"Bergson returned scores of shape {block.shape}, expected {(b - a, n_queries)}")
        bad = ~np.isfinite(block).all(axis=1)
        if bad.any():
            raise CapatlasError(
                f"document {doc_ids[a + int(np.flatnonzero(bad)[0])]!r} got a non-finite score "
                "(the model's loss or gradient overflowed; try attribution.precision fp32)"
            )
        # Rows grouped by bin (stable, so the summation order is the shard's row order).
        groups = bin_groups(bins[a:b])
        doc_weights = poisson_weights(keys[a:b], n_boot, dtype=np.uint8) if n_boot else None
        for k, (lo, hi) in enumerate(ranges):
            part = block[:, lo:hi]
            means[k][a:b] = part.mean(axis=1)
            sums[k][groups.present] += groups.sums(part)
            sumsq[k][groups.present] += groups.sums(part * part)
            if n_boot:
                joint_sums[k][groups.present] += joint_bin_sums(doc_weights, groups, part, joint.query_weights[k])
    return means, sums, sumsq, counts, [np.ascontiguousarray(j.T) for j in joint_sums]


def bootstrap_settings(config: Mapping) -> dict:
    """The document-bootstrap settings a shard's bin sums are drawn with (recorded in its provenance)."""
    return {"n_bootstrap": int(config["analysis"]["bootstrap"]), "seed": int(config["seed"]), "weights": WEIGHTS_SCHEME}


@dataclass
class _Inputs:
    """The checked upstream of one scoring job: its models, the preconditioner and the query indices."""

    job: Job
    query_info: ModelInfo
    preconditioner: Path
    pre_provenance: dict
    pre_sha: str
    indices: list[QueryIndex]


def _check_inputs(config, model, preconditioner, query_indices, query_model, revision, query_revision, optimizer_state):
    if not query_indices:
        raise CapatlasError("no query indices given (--query-index NAME=DIR)")
    job = make_job(config, str(model), revision=revision, optimizer_state=optimizer_state)
    query_info = job.model
    if query_model is not None:
        query_info = model_info(query_model, query_revision)
        if query_info.sha256 == job.model.sha256:
            query_info = job.model
    preconditioner = Path(preconditioner).resolve()
    pre_provenance = check_preconditioner(preconditioner, job, model_sha256=job.model.sha256)
    pre_sha = provenance_sha256(pre_provenance)
    indices = check_query_indices(
        {name: Path(p) for name, p in query_indices.items()},
        expected_identity=job.identity(model=query_info),
        preconditioner_sha256=pre_sha,
        preconditioner=preconditioner,
    )
    return _Inputs(job, query_info, preconditioner, pre_provenance, pre_sha, indices)


@dataclass
class _ShardDocs:
    doc_ids: list[str]
    bins: np.ndarray
    token_ids: list
    lengths: np.ndarray
    scored: np.ndarray  # rows with >= 2 tokens: Bergson skips shorter documents, nothing to predict
    n_at_limit: int  # documents that reached max_length: cut to it (or exactly that long)


def _tokenized_shard(job, shard: Path) -> _ShardDocs:
    table = read_shard(shard)
    doc_ids = table.column("doc_id").to_pylist()
    bins = table.column("bin_id").to_numpy().astype(np.int64)
    token_ids = tokenize_documents(
        load_tokenizer(job.model.path),
        table.column("text").to_pylist(),
        doc_ids,
        max_length=job.effective_max_length,
        truncation=job.settings.truncation,
        where=f"shard {shard}",
    )
    lengths = np.array([len(ids) for ids in token_ids], dtype=np.int64)
    scored = np.flatnonzero(lengths >= 2)
    if len(scored) < len(doc_ids):
        log.warning("%d document(s) of %s have fewer than 2 tokens and score NaN", len(doc_ids) - len(scored), shard)
    # Tokenised with truncation on, a document that reached the limit was (almost surely) cut to it;
    # its score covers its first max_length tokens only. Counted here as the queries count theirs.
    n_at_limit = int((lengths >= job.effective_max_length).sum())
    if n_at_limit:
        log.info(
            "%d of %d documents of %s (%.0f%%) reached max_length = %d tokens and were scored on their first %d",
            n_at_limit, len(doc_ids), shard.name, 100 * n_at_limit / len(doc_ids), job.effective_max_length,
            job.effective_max_length,
        )  # fmt: skip
    return _ShardDocs(doc_ids, bins, token_ids, lengths, scored, n_at_limit)


def _query_ranges(indices: list[QueryIndex]) -> list[tuple[int, int]]:
    ranges, start = [], 0
    for q in indices:
        ranges.append((start, start + q.num_grads))
        start += q.num_grads
    return ranges


def _score_documents(config: Mapping, inputs: _Inputs, docs: _ShardDocs, work: Path):
    """Per benchmark: document means, bin sums and sums of squares per query, combined-bootstrap sums; bin counts;
    the query ranges."""
    ranges = _query_ranges(inputs.indices)
    bootstrap = bootstrap_settings(config)
    if not len(docs.scored):
        means = [np.empty(0) for _ in ranges]
        sums = [np.zeros((N_BINS, hi - lo)) for lo, hi in ranges]
        sumsq = [np.zeros((N_BINS, hi - lo)) for lo, hi in ranges]
        joint_sums = [np.zeros((bootstrap["n_bootstrap"], N_BINS)) for _ in ranges]
        return means, sums, sumsq, np.zeros(N_BINS, dtype=np.int64), joint_sums, ranges
    joint = JointDraw(
        bootstrap["seed"],
        [query_mean_weights(q.item_ids, q.name, bootstrap["n_bootstrap"], bootstrap["seed"]) for q in inputs.indices],
    )
    docs_ds = save_token_dataset(work / "docs", [docs.token_ids[i] for i in docs.scored])
    docs.token_ids = []  # the dataset on disk is all Bergson needs
    ranges = combine_query_indices(inputs.indices, work / "queries")
    scores = _bergson_scores(inputs.job, docs_ds, work / "queries", inputs.preconditioner, work / "scores")
    if len(scores) != len(docs.scored):
        raise CapatlasError(f"Bergson scored {len(scores)} rows, expected {len(docs.scored)}")
    means, sums, sumsq, counts, joint_sums = accumulate(
        scores, docs.bins[docs.scored], ranges, [docs.doc_ids[i] for i in docs.scored], joint
    )
    return means, sums, sumsq, counts, joint_sums, ranges


def _provenance(config, inputs: _Inputs, shard: Path, docs: _ShardDocs, ranges) -> dict:
    job = inputs.job
    return base_provenance(
        STAGE,
        job,
        document_bootstrap=bootstrap_settings(config),
        shard={
            "path": str(shard),
            "sha256": file_sha256(shard),
            "n_docs": len(docs.doc_ids),
            "n_scored": int(len(docs.scored)),
            "n_tokens_scored": int(docs.lengths[docs.scored].sum()),
            "n_at_max_length": docs.n_at_limit,
            "max_length": job.effective_max_length,
        },
        preconditioner={
            "path": str(inputs.preconditioner),
            "provenance_sha256": inputs.pre_sha,
            "lambda": inputs.pre_provenance.get("mixing", {}).get("lambda"),
        },
        query_model=inputs.query_info.describe() if inputs.query_info is not job.model else None,
        benchmarks=[
            {
                "name": q.name,
                "path": str(q.directory),
                "provenance_sha256": q.provenance_sha256,
                "query_set_sha256": q.provenance.get("query_set", {}).get("sha256"),
                "n_queries": q.num_grads,
                "columns": list(r),
            }
            for q, r in zip(inputs.indices, ranges)
        ],
    )


def _outputs(
    provenance: dict, indices, docs: _ShardDocs, means, sums, sumsq, counts, joint_sums
) -> tuple[pa.Table, BinSums]:
    """The scores table (float32 document means) and the bin sums, with the shard's document bootstrap."""
    n_docs = len(docs.doc_ids)
    doc_scores = np.full((n_docs, len(indices)), np.nan, dtype=np.float32)
    for j, mean in enumerate(means):
        doc_scores[docs.scored, j] = mean
    # The bootstrap weighs the float32 scores the parquet holds, so it is
    # exactly what a pass over the score files would give.
    bootstrap = provenance["document_bootstrap"]
    boot_sum, boot_weight = shard_bootstrap(
        docs.doc_ids, docs.bins, doc_scores.astype(np.float64), bootstrap["n_bootstrap"], bootstrap["seed"]
    )
    bin_sums = BinSums(provenance=provenance)
    for j, (q, s, ss) in enumerate(zip(indices, sums, sumsq)):
        bin_sums.benchmarks[q.name] = BenchmarkSums(
            item_ids=list(q.item_ids),
            sum=s,
            sumsq=ss,
            count=counts,
            boot_sum=boot_sum[j],
            boot_weight=boot_weight[j],
            joint_sum=joint_sums[j],
        )
    table = scores_table(docs.doc_ids, docs.bins, {q.name: doc_scores[:, j] for j, q in enumerate(indices)}, provenance)
    return table, bin_sums


def score_shard(
    config: Mapping,
    *,
    model: str | os.PathLike,
    shard: str | os.PathLike,
    preconditioner: str | os.PathLike,
    query_indices: Mapping[str, str | os.PathLike],
    out_scores: str | os.PathLike,
    out_binsums: str | os.PathLike,
    query_model: str | os.PathLike | None = None,
    revision: str | None = None,
    query_revision: str | None = None,
    optimizer_state: str | None = None,
) -> dict:
    """Score one shard; write both outputs atomically; return the provenance."""
    injected_failure(Path(shard))
    inputs = _check_inputs(
        config, model, preconditioner, query_indices, query_model, revision, query_revision, optimizer_state
    )
    shard = Path(shard).resolve()
    docs = _tokenized_shard(inputs.job, shard)
    log.info(
        "scoring %d documents (%d tokens) of %s against %d queries of %d benchmark(s) on %s",
        len(docs.scored),
        int(docs.lengths[docs.scored].sum()),
        shard.name,
        sum(q.num_grads for q in inputs.indices),
        len(inputs.indices),
        inputs.job.device,
    )
    out_scores = Path(out_scores).resolve()
    out_binsums = Path(out_binsums).resolve()
    with bergson_workdir(out_scores) as work, deterministic_torch():
        means, sums, sumsq, counts, joint_sums, ranges = _score_documents(config, inputs, docs, work)
        provenance = _provenance(config, inputs, shard, docs, ranges)
        table, bin_sums = _outputs(provenance, inputs.indices, docs, means, sums, sumsq, counts, joint_sums)
        with atomic_path(out_scores) as tmp_scores, atomic_path(out_binsums) as tmp_binsums:
            write_scores(tmp_scores, table)
            write_bin_sums(tmp_binsums, bin_sums)
    return provenance


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser, model_help="document model directory (or a hub id in the local cache)")
    parser.add_argument("--query-model", default=None, help="model the query indices were built with, if not --model")
    parser.add_argument("--query-revision", default=None, help="revision of --query-model (hub ids only)")
    parser.add_argument("--shard", required=True, help="shard-*.parquet (doc_id, bin_id, text)")
    parser.add_argument("--preconditioner", required=True, help="`capatlas preconditioner` output directory")
    parser.add_argument(
        "--query-index",
        nargs="+",
        required=True,
        metavar="NAME=DIR",
        help="each benchmark's `capatlas query-gradients` output; NAME becomes the score column",
    )
    parser.add_argument("--out-scores", required=True, help="scores parquet (written atomically)")
    parser.add_argument("--out-binsums", required=True, help="bin sums, safetensors (written atomically)")


def run(args: argparse.Namespace, config: dict | None) -> None:
    score_shard(
        config,
        model=args.model,
        revision=args.revision,
        query_model=args.query_model,
        query_revision=args.query_revision,
        shard=args.shard,
        preconditioner=args.preconditioner,
        query_indices=parse_named_paths(args.query_index, flag="--query-index", require_name=True),
        optimizer_state=args.optimizer_state,
        out_scores=args.out_scores,
        out_binsums=args.out_binsums,
    )

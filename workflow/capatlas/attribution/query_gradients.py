"""`capatlas query-gradients`: each benchmark's query gradients as a Bergson query index, in one process.

Each query's gradient (loss on the answer tokens only) is randomly
projected, preconditioned with the mixed R^-1/2 and unit-normalised by
Bergson's ``build_query`` with ``PreprocessConfig(unit_normalize=True,
hessian_path=<preconditioner>/hessian)`` (bergson-notes 1). Gradients stay
per query (aggregation ``none``), so shard scoring yields every query's
cosine and the benchmark score is their mean (bergson-notes 3).

Output per benchmark (replaced atomically) ``<out>/``:
  index/            the Bergson query index (gradients.bin, info.json, ...)
  items.parquet     row, item_id, n_tokens, n_label_tokens, loss (index row order)
  provenance.json   model, versions, attribution fingerprint, the
                    preconditioner's provenance hash, the query set's hash
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import pyarrow as pa

from capatlas.command import Command
from capatlas.artifacts.provenance import PROVENANCE_FILE, check_identity, provenance_sha256, read_provenance
from capatlas.attribution.context import (
    add_model_arguments,
    HESSIAN_DIR,
    INDEX_DIR,
    ITEMS_FILE,
    base_provenance,
    bergson_workdir,
    load_query_set,
    make_job,
    one_preconditioner_inversion,
    parse_named_paths,
    prepare_run_path,
    save_token_dataset,
    deterministic_torch,
)
from capatlas.errors import CapatlasError
from capatlas.fileio import atomic_path, tokenizer_sha256_of, write_json, write_parquet

log = logging.getLogger(__name__)

COMMAND = Command(torch_threads="attribution")

STAGE = "query-gradients"


def check_preconditioner(preconditioner: Path, job, *, model_sha256: str | None = None) -> dict:
    """The preconditioner's provenance, after checking it matches this job's Bergson version and settings.

    The preconditioner is fitted with the document model; a query model that
    differs (the paper's Instruct model) is compared through `model_sha256`
    only when given.
    """
    provenance = read_provenance(preconditioner, stage="preconditioner", produced_by="preconditioner")
    expected = job.identity()
    recorded = provenance.get("identity")
    if model_sha256 is not None:
        expected["model_sha256"] = model_sha256
    elif isinstance(recorded, Mapping):
        expected["model_sha256"] = recorded.get("model_sha256")
    check_identity(expected, provenance, preconditioner / PROVENANCE_FILE, rerun="preconditioner")
    if not (preconditioner / HESSIAN_DIR / "processor_config.yaml").is_file():
        raise CapatlasError(f"{preconditioner / HESSIAN_DIR} is incomplete; rerun `capatlas preconditioner`")
    return provenance


def _fitted_with(pre_provenance: dict, query_set, benchmark: str) -> bool:
    """Whether R was mixed with this query set's statistics; warn if not (its scores are still valid, less tuned)."""
    fitted = pre_provenance.get("query_sets", {})
    if any(entry.get("sha256") == query_set.sha256 for entry in fitted.values()):
        return True
    log.warning(
        "the query set %s (%s) is not among the query sets R was fitted on (%s): its scores use a "
        "preconditioner mixed without its statistics; rerun `capatlas preconditioner` to include it",
        query_set.path,
        benchmark,
        ", ".join(sorted(fitted)) or "none",
    )
    return False


def build_query_indices(
    config: Mapping,
    *,
    model: str | os.PathLike,
    query_sets: Mapping[str, str | os.PathLike],
    preconditioner: str | os.PathLike,
    out: Mapping[str, str | os.PathLike],
    revision: str | None = None,
    optimizer_state: str | None = None,
) -> dict[str, dict]:
    """Build each benchmark's query index into its `out` directory atomically; return their provenances.

    One process for every benchmark: the model is hashed, Bergson imported
    (~15 s on CPU per process) and the preconditioner inverted (~7 s for
    the demo) once, not once per benchmark.
    """
    if set(query_sets) != set(out):
        raise CapatlasError(
            f"query-gradients: query sets for {sorted(query_sets)} but outputs for {sorted(out)}"
        )
    job = make_job(config, str(model), revision=revision, optimizer_state=optimizer_state)
    preconditioner = Path(preconditioner).resolve()
    pre_provenance = check_preconditioner(preconditioner, job)
    if pre_provenance["identity"]["model_sha256"] != job.model.sha256:
        log.info(
            "query model %s differs from the document model the preconditioner was fitted with (%s)",
            job.model.path,
            pre_provenance.get("model", {}).get("path"),
        )
    with one_preconditioner_inversion():
        return {
            name: _build_one(job, pre_provenance, preconditioner, name, query_sets[name], out[name])
            for name in query_sets
        }


def build_query_gradients(config: Mapping, *, queries, benchmark: str, out, **kwargs) -> dict:
    """One benchmark's query index (build_query_indices for a single benchmark)."""
    return build_query_indices(config, query_sets={benchmark: queries}, out={benchmark: out}, **kwargs)[benchmark]


def check_query_tokenizer(queries: Path, model) -> None:
    """Refuse a query set tokenised with other tokenizer files than the query model's (when both are local).

    The model's tokenizer files were hashed with the model (`ModelInfo.files`), so nothing is read again.
    """
    summary_path = Path(queries) / "queries.json"
    try:
        recorded = json.loads(summary_path.read_text()).get("tokenizer_sha256")
    except (OSError, ValueError):
        recorded = None  # load_query_set names a broken query set
    model_tokenizer = tokenizer_sha256_of(model.files)
    if recorded and model_tokenizer and recorded != model_tokenizer:
        raise CapatlasError(
            f"{summary_path}: the query set was tokenised with other tokenizer files than the query model "
            f"{model.path} has; its token ids would mean other tokens. Rerun `capatlas queries` with "
            f"--tokenizer {model.path}"
        )


def _build_one(job, pre_provenance: dict, preconditioner: Path, benchmark: str, queries, out) -> dict:
    check_query_tokenizer(Path(queries), job.model)
    query_set = load_query_set(queries, name=benchmark, max_length=job.effective_max_length)
    in_preconditioner = _fitted_with(pre_provenance, query_set, benchmark)
    log.info("building %d query gradients for %s on %s", len(query_set.item_ids), benchmark, job.device)

    from bergson.build import build_query
    from bergson.config.config import PreprocessConfig, QuerySetConfig

    out = Path(out).resolve()
    with bergson_workdir(out) as work, deterministic_torch():
        dataset = save_token_dataset(work / "queries", query_set.input_ids, query_set.labels)
        index_cfg = job.index_config(work / INDEX_DIR, dataset)
        prepare_run_path(index_cfg)
        preprocess_cfg = PreprocessConfig(unit_normalize=True, hessian_path=str(preconditioner / HESSIAN_DIR))
        query_cfg = QuerySetConfig.from_data(index_cfg.data, aggregation="none")
        index_path = Path(build_query(index_cfg, query_cfg, preprocess_cfg))
        losses = _query_losses(index_path, len(query_set.item_ids))
        with atomic_path(out, directory=True) as tmp:
            shutil.move(str(index_path), str(tmp / INDEX_DIR))
            write_parquet(
                pa.table(
                    {
                        "row": pa.array(range(len(query_set.item_ids)), pa.int64()),
                        "item_id": pa.array(query_set.item_ids, pa.string()),
                        "n_tokens": pa.array([len(ids) for ids in query_set.input_ids], pa.int64()),
                        "n_label_tokens": pa.array(query_set.n_label_tokens, pa.int64()),
                        "loss": pa.array(losses, pa.float32()),
                    }
                ),
                tmp / ITEMS_FILE,
            )
            provenance = base_provenance(
                STAGE,
                job,
                benchmark=benchmark,
                query_set=query_set.describe(),
                n_queries=len(query_set.item_ids),
                in_preconditioner=in_preconditioner,
                preconditioner={
                    "path": str(preconditioner),
                    "provenance_sha256": provenance_sha256(pre_provenance),
                    "model_sha256": pre_provenance["identity"]["model_sha256"],
                    "lambda": pre_provenance.get("mixing", {}).get("lambda"),
                },
                preprocess={
                    "unit_normalize": True,
                    "aggregation": "none",
                    "hessian_path": str(preconditioner / HESSIAN_DIR),
                },
            )
            write_json(provenance, tmp / PROVENANCE_FILE)
    return provenance


def _query_losses(index_path: Path, n: int) -> list[float | None]:
    from datasets import load_from_disk

    try:
        data = load_from_disk(str(index_path / "data.hf"))
        losses = [float(x) for x in data["loss"]]
    except Exception:  # a diagnostic only; the index itself is what matters
        return [None] * n
    return losses if len(losses) == n else [None] * n


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser, model_help="query model directory (default document model)")
    parser.add_argument(
        "--queries", required=True, nargs="+", metavar="NAME=DIR", help="each benchmark's `capatlas queries` output"
    )
    parser.add_argument("--preconditioner", required=True, help="`capatlas preconditioner` output directory")
    parser.add_argument(
        "--out", required=True, nargs="+", metavar="NAME=DIR", help="each benchmark's query index (replaced atomically)"
    )


def run(args: argparse.Namespace, config: dict | None) -> None:
    build_query_indices(
        config,
        model=args.model,
        revision=args.revision,
        query_sets=parse_named_paths(args.queries, flag="--queries", require_name=True),
        preconditioner=args.preconditioner,
        optimizer_state=args.optimizer_state,
        out=parse_named_paths(args.out, flag="--out", require_name=True),
    )

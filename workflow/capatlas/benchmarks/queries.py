"""`capatlas queries`: benchmarks' items as tokenized attribution queries (one set per benchmark).

A query is an item's prompt followed by its correct continuation; its loss,
and so its gradient, covers the continuation tokens only. Bergson's own
``completion_column`` path goes through ``apply_chat_template`` (base-model
tokenizers have none) and can silently leave a row with no label token, so
the queries are tokenized here and saved as a ``datasets`` directory that
already holds ``input_ids`` and ``labels`` (-100 on every prompt token),
which Bergson then uses as is.

The full text ``prompt + completion`` is tokenized once, with character
offsets, so the tokens are exactly those the model sees; a token is labelled
when any of its characters lies in the completion (a token straddling the
boundary counts as completion). Every row must keep at least one labelled
token at a position the causal shift can predict, or the stage fails naming
the item. Over-long rows lose tokens from the left, so the answer stays;
the length limit is the one attribution works with (the smallest of
``attribution.max_length``, ``attribution.token_batch_size`` and the query
model's own limit), so Bergson never drops, cuts or refuses a query.

Output (replaced atomically): ``<out>/`` = ``Dataset.save_to_disk`` files
(columns input_ids, labels, item_id, gold, subject, prompt, completion,
truncated)
plus ``<out>/queries.json`` (settings, token statistics, item ids).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from capatlas.command import Command
from capatlas.benchmarks.items import (
    MCItem,
    Rendered,
    benchmark_config,
    benchmark_spec,
    items_for_role,
    load_all_items,
    load_fewshot_pool,
    render_items,
    resolve_source,
    resolve_subjects,
    role_counts,
    subsample,
)
from capatlas.errors import CapatlasError
from capatlas.fileio import atomic_path, tokenizer_sha256
from capatlas.settings import Attribution

log = logging.getLogger(__name__)

COMMAND = Command()

IGNORE_INDEX = -100
QUERY_COLUMNS = ("input_ids", "labels", "item_id", "gold", "subject", "prompt", "completion", "truncated")


def load_tokenizer(path: str, *, revision: str | None = None):
    """A fast tokenizer (character offsets are needed) from a local directory, a tokenizer.json or the HF cache."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    local = Path(path).expanduser()
    try:
        if local.is_file():
            tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(local.resolve()))
        else:
            # An absolute path keeps a relative directory from being taken for a hub id.
            target = str(local.resolve()) if local.exists() else path
            tokenizer = AutoTokenizer.from_pretrained(target, revision=revision)
    except Exception as exc:
        raise CapatlasError(
            f"cannot load the query tokenizer from {path}: {type(exc).__name__}: {exc}. "
            "Pass a local model/tokenizer directory (hub ids are read from the local cache only when offline)"
        ) from exc
    if not getattr(tokenizer, "is_fast", False):
        raise CapatlasError(f"the tokenizer at {path} is not a fast tokenizer; character offsets are needed")
    return tokenizer


def default_bos(tokenizer) -> int | None:
    """The BOS id if the tokenizer puts one in front by default (Llama does; OLMo's does not)."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return None
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    without = tokenizer("a", add_special_tokens=False)["input_ids"]
    if with_special[:1] == [bos] and without[:1] != [bos]:
        return bos
    return None


def tokenize_query(
    prompt: str,
    completion: str,
    tokenizer,
    *,
    bos_id: int | None = None,
    max_length: int | None = None,
    truncation: bool = True,
    where: str = "query",
) -> tuple[list[int], list[int], bool]:
    """(input_ids, labels, truncated) with labels only on the completion's tokens."""
    if not completion:
        raise CapatlasError(f"{where}: the completion is empty")
    text = prompt + completion
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    boundary = len(prompt)
    # An offset span ending past the boundary holds completion characters. ByteLevel
    # tokenizers trim a lone space token to the zero-width span just after it, so a
    # space that opens the completion still ends past the boundary and counts.
    labels = [tok if end > boundary else IGNORE_INDEX for tok, (_, end) in zip(ids, enc["offset_mapping"])]
    if bos_id is not None:
        ids, labels = [bos_id, *ids], [IGNORE_INDEX, *labels]
    truncated = False
    if max_length is not None and len(ids) > max_length:
        if not truncation:
            raise CapatlasError(
                f"{where}: {len(ids)} tokens exceed attribution.max_length={max_length} (attribution.truncation is off)"
            )
        n_completion = sum(1 for x in labels if x != IGNORE_INDEX)
        head = 1 if bos_id is not None else 0
        # At least one prompt token must stay: the first position is never a prediction target.
        if n_completion + head + 1 > max_length:
            raise CapatlasError(
                f"{where}: the completion alone has {n_completion} tokens; it does not fit "
                f"attribution.max_length={max_length} with any prompt"
            )
        keep = max_length - head
        ids, labels = ids[:head] + ids[-keep:], labels[:head] + labels[-keep:]
        truncated = True
    # Causal LMs predict token t from positions < t, so a label at position 0 is never scored.
    if not any(x != IGNORE_INDEX for x in labels[1:]):
        raise CapatlasError(
            f"{where}: no token of the completion {completion!r} gets a label (prompt ends {prompt[-30:]!r}); "
            "its gradient would be empty"
        )
    return ids, labels, truncated


def build_queries(
    items: Sequence[MCItem],
    rendered: Sequence[Rendered],
    tokenizer,
    *,
    max_length: int,
    truncation: bool = True,
    benchmark: str = "?",
    bos_id: int | None | str = "auto",
):
    """A `datasets.Dataset` of tokenized queries, one row per item, in item order."""
    import datasets
    import pyarrow as pa
    from datasets.table import InMemoryTable

    if len(items) != len(rendered):
        raise ValueError(f"{len(items)} items but {len(rendered)} rendered prompts")
    if not items:
        raise CapatlasError(f"benchmark '{benchmark}': no items to build queries from")
    if bos_id == "auto":
        bos_id = default_bos(tokenizer)
    columns: dict[str, list[Any]] = {name: [] for name in QUERY_COLUMNS}
    for item, r in zip(items, rendered):
        ids, labels, truncated = tokenize_query(
            r.prompt,
            r.completion,
            tokenizer,
            bos_id=bos_id,  # type: ignore[arg-type]
            max_length=max_length,
            truncation=truncation,
            where=f"benchmark '{benchmark}': item {item.item_id}",
        )
        columns["input_ids"].append(ids)
        columns["labels"].append(labels)
        columns["item_id"].append(item.item_id)
        columns["gold"].append(int(r.gold))
        columns["subject"].append(item.subject or "")
        columns["prompt"].append(r.prompt)
        columns["completion"].append(r.completion)
        columns["truncated"].append(truncated)
    table = pa.table(
        {
            "input_ids": pa.array(columns["input_ids"], pa.list_(pa.int64())),
            # int64: cross-entropy wants long targets when Bergson turns rows into tensors.
            "labels": pa.array(columns["labels"], pa.list_(pa.int64())),
            "item_id": pa.array(columns["item_id"], pa.string()),
            "gold": pa.array(columns["gold"], pa.int64()),
            "subject": pa.array(columns["subject"], pa.string()),
            "prompt": pa.array(columns["prompt"], pa.string()),
            "completion": pa.array(columns["completion"], pa.string()),
            "truncated": pa.array(columns["truncated"], pa.bool_()),
        }
    )
    # A content fingerprint (datasets would draw a random one) keeps reruns byte-identical.
    digest = hashlib.sha256()
    for ids, labels in zip(columns["input_ids"], columns["labels"]):
        digest.update(json.dumps([ids, labels]).encode())
    digest.update(json.dumps(columns["item_id"]).encode())
    dataset = datasets.Dataset(InMemoryTable(table), fingerprint=digest.hexdigest()[:16])
    dataset.info.description = f"capatlas attribution queries for benchmark {benchmark}"
    n_truncated = sum(columns["truncated"])
    if n_truncated:
        log.warning("benchmark %s: %d of %d queries were cut from the left to %d tokens",
                    benchmark, n_truncated, len(items), max_length)  # fmt: skip
    return dataset


def query_stats(dataset) -> dict:
    """Token counts over the queries: label (completion) tokens and total tokens."""
    label_counts = [sum(1 for x in labels if x != IGNORE_INDEX) for labels in dataset["labels"]]
    lengths = [len(ids) for ids in dataset["input_ids"]]

    def summary(values: list[int]) -> dict:
        return {
            "min": min(values),
            "max": max(values),
            "mean": sum(values) / len(values),
            "total": sum(values),
        }

    return {
        "label_tokens": summary(label_counts),
        "tokens": summary(lengths),
        "n_truncated": int(sum(dataset["truncated"])),
    }


def write_queries(dataset, out: str | os.PathLike, summary: dict) -> None:
    """Save the dataset and queries.json into `out`, replacing it as a whole."""
    import datasets

    datasets.disable_progress_bars()
    with atomic_path(out, directory=True) as tmp:
        dataset.save_to_disk(str(tmp))
        (tmp / "queries.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")


def model_length_limit(tokenizer, path: str, *, revision: str | None = None) -> int | None:
    """The longest input the query model takes: min of the tokenizer's limit and max_position_embeddings.

    This is Bergson's own limit (``max_tokens_for_model``); a bare tokenizer
    without a model config contributes only its ``model_max_length``.
    """
    limits = []
    declared = getattr(tokenizer, "model_max_length", None)
    # Tokenizers without a limit report a huge sentinel (int(1e30)).
    if isinstance(declared, int) and 0 < declared < 10**9:
        limits.append(declared)
    local = Path(path).expanduser()
    if not local.is_file():
        try:
            from transformers import AutoConfig

            model_config = AutoConfig.from_pretrained(
                str(local.resolve()) if local.exists() else path, revision=revision
            )
        except Exception:  # a tokenizer-only directory has no model config
            model_config = None
        positions = getattr(model_config, "max_position_embeddings", None)
        if isinstance(positions, int) and positions > 0:
            limits.append(positions)
    return min(limits) if limits else None


def query_max_length(config: dict, model_limit: int | None, given: int | None = None) -> int:
    """Tokens a query may have: what attribution can take without dropping or refusing it.

    Bergson cuts every row to min(model limit, token_batch_size) and a row
    longer than a token batch cannot be scored, so queries are cut (from the
    left, keeping the answer) to min(attribution.max_length,
    attribution.token_batch_size, model limit) here, where the cut is explicit
    and recorded.
    """
    section = config["attribution"]
    limits = [int(section["max_length"]), int(section["token_batch_size"])]
    if model_limit is not None:
        limits.append(int(model_limit))
    if given is not None:
        limits.append(int(given))
    return min(limits)


def resolve_tokenizer_path(config: dict, given: str | None) -> tuple[str, str | None]:
    """--tokenizer, else models.query.path, else the document model (the demo's own model in the demo)."""
    if given:
        return given, None
    query = config["models"]["query"]
    if query.get("path"):
        return query["path"], query.get("revision")
    document = config["models"]["document"]
    if document.get("path"):
        return document["path"], document.get("revision")
    if config["demo"]["enabled"]:
        from capatlas.config import run_dir

        return str(run_dir(config) / "demo" / "model"), None
    raise CapatlasError("no query tokenizer: pass --tokenizer or set config key 'models.query.path'")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--benchmark", required=True, nargs="+", help="benchmark names (config 'benchmarks' entries), one per --out"
    )
    parser.add_argument(
        "--tokenizer",
        default=None,
        help="query model or tokenizer directory (default: models.query.path, else models.document.path)",
    )
    parser.add_argument(
        "--out", required=True, nargs="+", help="each benchmark's output directory (replaced atomically), in order"
    )
    parser.add_argument(
        "--world", default=None, help="demo world directory that {world} in a source stands for (default: the run's)"
    )
    parser.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="at most this many tokens per query (always capped at the smallest of attribution.max_length, "
        "attribution.token_batch_size and the query model's limit)",
    )


def run(args: argparse.Namespace, config: dict | None) -> None:
    """Every named benchmark's query set, in one process (one import of transformers and datasets)."""
    from capatlas.config import run_dir

    if len(args.benchmark) != len(args.out):
        raise CapatlasError(f"{len(args.benchmark)} --benchmark names but {len(args.out)} --out directories")
    world = args.world
    if world is None and config["demo"]["enabled"]:
        world = str(run_dir(config) / "demo" / "world")
    for name, out in zip(args.benchmark, args.out):
        write_query_set(config, name, out, world=world, tokenizer_arg=args.tokenizer, max_length_arg=args.max_length)


def write_query_set(
    config: dict, name: str, out: str, *, world: str | None, tokenizer_arg: str | None, max_length_arg: int | None
) -> None:
    bench = benchmark_spec(benchmark_config(config, name))
    seed = int(config["seed"])
    truncation = Attribution.of(config["attribution"]).truncation

    all_items = load_all_items(bench, world_dir=world)
    limited = subsample(all_items, bench.limit, seed=seed, name=bench.name)
    # Only the query items: the evaluation (and guard) items are held out of attribution.
    items = items_for_role(limited, "queries", config["item_roles"], seed=seed, name=bench.name)
    pool = load_fewshot_pool(bench, all_items, world_dir=world) if bench.fewshot else None
    rendered = render_items(items, bench, seed=seed, pool=pool)

    tokenizer_path, revision = resolve_tokenizer_path(config, tokenizer_arg)
    tokenizer = load_tokenizer(tokenizer_path, revision=revision)
    model_limit = model_length_limit(tokenizer, tokenizer_path, revision=revision)
    max_length = query_max_length(config, model_limit, max_length_arg)
    bos_id = default_bos(tokenizer)
    dataset = build_queries(
        items,
        rendered,
        tokenizer,
        max_length=max_length,
        truncation=truncation,
        benchmark=bench.name,
        bos_id=bos_id,
    )
    stats = query_stats(dataset)
    source = resolve_source(bench.source, world, benchmark=bench.name)
    summary = {
        "benchmark": bench.name,
        "domain": bench.domain,
        "capability": bench.capability,
        "loader": bench.loader,
        "source": str(Path(source).resolve()) if Path(source).exists() else source,
        "config_name": bench.config_name,
        "split": bench.split,
        "subjects": resolve_subjects(bench.subjects, benchmark=bench.name, loader=bench.loader),
        "subjects_found": sorted({i.subject for i in items if i.subject}),
        "prompt_format": bench.prompt_format,
        "fewshot": bench.fewshot,
        "fewshot_source": pool.source if pool else None,
        "limit": bench.limit,
        "seed": seed,
        "n_items_available": len(all_items),
        "n_items": len(items),
        # Which of the benchmark's items are queries, evaluated, guards: the split the evaluation relies on.
        "item_roles": role_counts(limited, config["item_roles"], seed=seed, name=bench.name),
        "tokenizer": str(Path(tokenizer_path).resolve()) if Path(tokenizer_path).exists() else tokenizer_path,
        "tokenizer_revision": revision,
        # Checked by query-gradients against the query model's own tokenizer files.
        "tokenizer_sha256": tokenizer_sha256(tokenizer_path),
        "bos_prepended": bos_id is not None,
        "max_length": max_length,
        "max_length_limits": {
            "attribution.max_length": int(config["attribution"]["max_length"]),
            "attribution.token_batch_size": int(config["attribution"]["token_batch_size"]),
            "model": model_limit,
            "--max-length": max_length_arg,
        },
        "columns": list(dataset.column_names),
        **stats,
        "item_ids": list(dataset["item_id"]),
    }
    write_queries(dataset, out, summary)
    log.info(
        "benchmark %s: %d queries (%d available), label tokens per query %d-%d, written to %s",
        bench.name, len(items), len(all_items),
        stats["label_tokens"]["min"], stats["label_tokens"]["max"], out,
    )  # fmt: skip

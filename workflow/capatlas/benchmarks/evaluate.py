"""`capatlas evaluate`: multiple-choice log-likelihood evaluation of a causal LM (optionally + LoRA adapter).

Every configured benchmark's items are rendered by `capatlas.benchmarks.items`
(OLMES RC, OLMES MC or lm-evaluation-harness format, with few-shot
examples), and each continuation is scored by its summed log-probability
given the prompt. The definitions follow lm-evaluation-harness:

- the pair is tokenized as ``whole = encode(context + continuation)``,
  ``context = encode(context)``, continuation tokens = ``whole[len(context):]``
  (so a merge across the boundary is scored as the model would read it);
- ``acc``: the choice with the highest summed log-likelihood is the gold one;
- ``acc_norm``: the same after dividing each log-likelihood by the number of
  characters of the choice (the continuation without its leading delimiter
  space: lm-eval's ``len(choice)``, OLMES' ``acc_per_char``);
- ``logprob``: the mean over items of the gold continuation's summed
  log-probability, a smoother signal than accuracy for small effects
  (``logprob_per_char`` divides it by the characters as acc_norm does).

Ties go to the first choice (numpy's argmax, as lm-eval). Output:
``eval/<model key>.json`` = {model, adapter, settings, benchmarks: {name:
{acc, acc_norm, logprob, logprob_per_char, chance, n_items, prompt_format,
item_role, item_ids_sha256}}}: which items were scored (config key
item_roles: the evaluation items, or the guard's) and the sha256 of their
ids, one per line, so a reader can check they are not the attribution
queries.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from capatlas.command import Command
from capatlas.benchmarks.items import (
    benchmark_spec,
    items_for_role,
    load_all_items,
    load_fewshot_pool,
    render_items,
    subsample,
)
from capatlas.config import run_dir
from capatlas.devices import resolve_device
from capatlas.errors import CapatlasError
from capatlas.fileio import write_json

log = logging.getLogger(__name__)

COMMAND = Command(config_help="capatlas config (keys seed, benchmarks, evaluation)")

PREFIX_TOKENS = ("eos", "bos", "none")


@dataclass(frozen=True)
class Request:
    """One (item, choice) pair, tokenized: the model reads context + continuation."""

    context: tuple[int, ...]
    continuation: tuple[int, ...]


def prefix_id(tokenizer, kind: str) -> int | None:
    """Token in front of every context: the document separator the model saw at the start of each document."""
    if kind == "none":
        return None
    token = tokenizer.eos_token_id if kind == "eos" else tokenizer.bos_token_id
    if token is None:
        raise CapatlasError(f"evaluation.prefix_token is '{kind}', but the tokenizer has no {kind} token")
    return int(token)


def encode_pair(tokenizer, context: str, continuation: str, prefix: int | None) -> Request:
    """lm-evaluation-harness's split: encode the whole, then cut at the context's length."""
    # Trailing context whitespace belongs to the continuation (lm-eval moves it there).
    n_space = len(context) - len(context.rstrip())
    if n_space:
        context, continuation = context[: len(context) - n_space], context[len(context) - n_space :] + continuation
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    continuation_ids = whole[len(context_ids) :]
    if prefix is not None:
        context_ids = [prefix, *context_ids]
    if not continuation_ids:
        raise CapatlasError(f"continuation {continuation!r} tokenizes to nothing after context ...{context[-40:]!r}")
    if not context_ids:
        raise CapatlasError(
            f"context {context!r} is empty and evaluation.prefix_token is 'none': the first continuation "
            "token would have nothing to be predicted from"
        )
    return Request(tuple(context_ids), tuple(continuation_ids))


def loglikelihoods(
    model, requests: Sequence[Request], *, batch_size: int, max_length: int | None = None, desc: str = "loglik"
) -> np.ndarray:
    """Summed log-probability of each request's continuation given its context (float64).

    Longest requests first (one padding width per batch, as lm-eval sorts);
    a request longer than ``max_length`` loses context tokens from the left.
    """
    import torch
    from tqdm import tqdm

    device = next(model.parameters()).device
    out = np.zeros(len(requests), dtype=np.float64)
    order = sorted(range(len(requests)), key=lambda i: -(len(requests[i].context) + len(requests[i].continuation)))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    with torch.no_grad():
        for batch in tqdm(batches, desc=desc, file=sys.stderr, mininterval=2.0, disable=len(batches) < 4):
            sequences, starts = [], []
            for index in batch:
                request = requests[index]
                sequence = list(request.context + request.continuation)
                if max_length is not None and len(sequence) > max_length:
                    if len(request.continuation) >= max_length:
                        raise CapatlasError(
                            f"a continuation of {len(request.continuation)} tokens does not fit "
                            f"evaluation.max_length={max_length}"
                        )
                    sequence = sequence[-max_length:]
                sequences.append(sequence)
                starts.append(len(sequence) - len(request.continuation))
            width = max(len(s) for s in sequences)
            ids = torch.zeros((len(batch), width), dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, sequence in enumerate(sequences):
                ids[row, : len(sequence)] = torch.tensor(sequence)
                mask[row, : len(sequence)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            logprobs = torch.log_softmax(logits, dim=-1).cpu()
            for row, (index, start) in enumerate(zip(batch, starts)):
                targets = torch.tensor(requests[index].continuation)
                positions = torch.arange(start - 1, start - 1 + len(targets))
                out[index] = float(logprobs[row, positions, targets].double().sum())
    return out


def choice_chars(continuation: str) -> int:
    """Characters lm-eval divides by: the choice without the delimiter space in front."""
    return max(1, len(continuation[1:] if continuation.startswith(" ") else continuation))


def mc_metrics(scores: Sequence[Sequence[float]], golds: Sequence[int], chars: Sequence[Sequence[int]]) -> dict:
    """acc, acc_norm, logprob and logprob_per_char from per-choice summed log-likelihoods."""
    if not scores:
        raise CapatlasError("no items to score")
    acc, acc_norm, gold_lp, gold_lp_char, chance = [], [], [], [], []
    for item_scores, gold, item_chars in zip(scores, golds, chars):
        lls = np.asarray(item_scores, dtype=np.float64)
        per_char = lls / np.asarray(item_chars, dtype=np.float64)
        acc.append(float(np.argmax(lls) == gold))
        acc_norm.append(float(np.argmax(per_char) == gold))
        gold_lp.append(lls[gold])
        gold_lp_char.append(per_char[gold])
        chance.append(1.0 / len(lls))
    return {
        "acc": float(np.mean(acc)),
        "acc_norm": float(np.mean(acc_norm)),
        "logprob": float(np.mean(gold_lp)),
        "logprob_per_char": float(np.mean(gold_lp_char)),
        "chance": float(np.mean(chance)),
        "n_items": len(scores),
    }


@dataclass
class PreparedBenchmark:
    """A benchmark's items already rendered and tokenized (reused for every evaluation of a run)."""

    name: str
    prompt_format: str
    requests: list[Request]
    n_choices: list[int]
    golds: list[int]
    chars: list[list[int]]
    role: str = "evaluation"
    item_ids: tuple[str, ...] = ()

    @property
    def item_ids_sha256(self) -> str:
        """Which items were scored, in a line of the results: sha256 of the item ids, one per line, in order."""
        return hashlib.sha256("\n".join(self.item_ids).encode()).hexdigest()


def prepare_benchmarks(
    config: dict,
    tokenizer,
    *,
    world_dir: str | os.PathLike | None = None,
    names: Sequence[str] | None = None,
    role: str = "evaluation",
) -> list[PreparedBenchmark]:
    """Render and tokenize the `role` items (config key item_roles) of the configured benchmarks (all, or `names`)."""
    seed = int(config["seed"])
    prefix = prefix_id(tokenizer, config["evaluation"]["prefix_token"])
    wanted = set(names) if names else None
    prepared = []
    for bench in map(benchmark_spec, config["benchmarks"]):
        if wanted is not None and bench.name not in wanted:
            continue
        items = load_all_items(bench, world_dir=world_dir)
        pool = load_fewshot_pool(bench, items, world_dir=world_dir) if bench.fewshot else None
        items = subsample(items, bench.limit, seed=seed, name=bench.name)
        items = items_for_role(items, role, config["item_roles"], seed=seed, name=bench.name)
        rendered = render_items(items, bench, seed=seed, pool=pool)
        requests, n_choices, golds, chars = [], [], [], []
        for item, shown in zip(items, rendered):
            try:
                requests.extend(encode_pair(tokenizer, shown.prompt, c, prefix) for c in shown.continuations)
            except CapatlasError as exc:
                raise CapatlasError(f"benchmark '{bench.name}': item {item.item_id}: {exc}") from None
            n_choices.append(len(shown.continuations))
            golds.append(shown.gold)
            chars.append([choice_chars(c) for c in shown.continuations])
        prepared.append(
            PreparedBenchmark(
                bench.name, bench.prompt_format, requests, n_choices, golds, chars, role, tuple(i.item_id for i in items)
            )
        )
    if wanted is not None and (missing := wanted - {p.name for p in prepared}):
        raise CapatlasError(f"benchmark(s) {', '.join(sorted(missing))} are not in the config's 'benchmarks'")
    return prepared


def evaluate_prepared(model, prepared: Sequence[PreparedBenchmark], *, batch_size: int, max_length: int | None) -> dict:
    """{benchmark: metrics} for a model on already tokenized benchmarks."""
    was_training = model.training
    model.eval()
    results = {}
    for bench in prepared:
        flat = loglikelihoods(model, bench.requests, batch_size=batch_size, max_length=max_length, desc=bench.name)
        scores, cursor = [], 0
        for n in bench.n_choices:
            scores.append(flat[cursor : cursor + n])
            cursor += n
        results[bench.name] = {
            **mc_metrics(scores, bench.golds, bench.chars),
            "prompt_format": bench.prompt_format,
            "item_role": bench.role,
            "item_ids_sha256": bench.item_ids_sha256,
        }
    if was_training:
        model.train()
    return results


def model_max_length(model, configured: int | None) -> int | None:
    if configured is not None:
        return configured
    limit = getattr(model.config, "max_position_embeddings", None)
    return int(limit) if limit else None


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    local = Path(path).expanduser()
    try:
        return AutoTokenizer.from_pretrained(str(local.resolve()) if local.exists() else path)
    except Exception as exc:
        raise CapatlasError(f"cannot load a tokenizer from {path}: {type(exc).__name__}: {exc}") from exc


def check_tokenizer_fits(tokenizer, model, model_path: str) -> None:
    """A tokenizer whose ids run past the model's embedding rows would crash deep in torch."""
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        raise CapatlasError(
            f"the tokenizer ({len(tokenizer)} tokens) does not match the model {model_path} "
            f"({rows} embedding rows): point the model and tokenizer at the same checkpoint"
        )


def torch_dtype(precision: str):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]


def load_model(path: str, *, adapter: str | None = None, device: str = "cpu", precision: str = "fp32"):
    """A causal LM from a local directory (or the HF cache), with a peft adapter applied if given."""
    from transformers import AutoModelForCausalLM

    local = Path(path).expanduser()
    if not local.exists() and path.startswith((".", "/", "~")):
        raise CapatlasError(f"model directory {path} does not exist")
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(local.resolve()) if local.exists() else path, dtype=torch_dtype(precision)
        )
    except Exception as exc:
        raise CapatlasError(f"cannot load a causal LM from {path}: {type(exc).__name__}: {exc}") from exc
    if adapter is not None:
        from peft import PeftModel

        adapter_dir = Path(adapter)
        if not (adapter_dir / "adapter_config.json").is_file():
            raise CapatlasError(f"adapter {adapter} does not exist or has no adapter_config.json")
        model = PeftModel.from_pretrained(model, str(adapter_dir))
    return model.to(device).eval()


def evaluate_model(
    config: dict,
    model_path: str,
    *,
    adapter: str | None = None,
    world_dir: str | os.PathLike | None = None,
    names: Sequence[str] | None = None,
) -> dict:
    import torch

    settings = config["evaluation"]
    torch.set_num_threads(settings["threads"])
    device = resolve_device(settings["device"], key="evaluation.device")
    tokenizer = load_tokenizer(model_path)
    model = load_model(model_path, adapter=adapter, device=device, precision=settings["precision"])
    check_tokenizer_fits(tokenizer, model, model_path)
    prepared = prepare_benchmarks(config, tokenizer, world_dir=world_dir, names=names)
    max_length = model_max_length(model, settings["max_length"])
    results = evaluate_prepared(model, prepared, batch_size=settings["batch_size"], max_length=max_length)
    return {
        "model": str(model_path),
        "adapter": None if adapter is None else str(adapter),
        "settings": {**settings, "device": device, "max_length": max_length, "dtype": str(model.dtype).removeprefix("torch.")},
        "benchmarks": results,
    }


def default_world(config: dict, given: str | None) -> str | None:
    if given is None and config["demo"]["enabled"]:
        return str(run_dir(config) / "demo" / "world")
    return given


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="HF causal LM directory (or hub id in the local cache)")
    parser.add_argument("--adapter", default=None, help="peft LoRA adapter directory applied on top of --model")
    parser.add_argument("--world", default=None, help="demo world directory ({world} in sources; default: the run's)")
    parser.add_argument("--benchmark", action="append", default=None, help="only this benchmark (repeatable)")
    parser.add_argument("--out", required=True, help="eval/<model key>.json (written atomically)")


def run(args: argparse.Namespace, config: dict | None) -> None:
    result = evaluate_model(
        config, args.model, adapter=args.adapter, world_dir=default_world(config, args.world), names=args.benchmark
    )
    write_json(result, args.out)
    for name, metrics in result["benchmarks"].items():
        log.info(
            "%s: acc %.3f acc_norm %.3f logprob %.3f (chance %.3f, %d items)",
            name, metrics["acc"], metrics["acc_norm"], metrics["logprob"], metrics["chance"], metrics["n_items"],
        )  # fmt: skip
    if any(math.isnan(m["logprob"]) for m in result["benchmarks"].values()):
        raise CapatlasError(f"evaluation of {args.model} produced NaN log-probabilities")

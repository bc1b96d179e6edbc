"""`capatlas unlearn`: one job's unlearning runs (a target and unit, in one seed or all), each from the base model, evaluated.

The model forgets the documents of one forget set while a retain set keeps
the rest of its behaviour. Methods (``unlearning.method``), all on the
mean next-token cross-entropy CE of a batch:

- ``ga``: gradient ascent, loss = -CE(forget);
- ``graddiff``: gradient difference, loss = -CE(forget) + w CE(retain);
- ``ngdiff``: normalised gradient difference (the study's method): the
  update direction is g = g_retain/|g_retain| - g_forget/|g_forget| with
  g = grad CE and |.| the global norm over the trained parameters, so
  neither objective dominates by scale;
- ``npo``: negative preference optimisation,
  loss = -(2/beta) mean log sigmoid(-beta (log p(x) - log p_ref(x))) over the
  forget sequences (log p = summed token log-likelihood, p_ref = the model
  before unlearning, computed once up front), + w CE(retain) when
  ``retain_weight`` > 0.

Parameters: LoRA adapters (peft; r, alpha, dropout, target modules) or the
full model. Documents are cut into chunks of ``train.max_length`` tokens
(after the evaluation prefix token); a step averages ``grad_accum``
micro-batches of ``batch_size`` chunks. Retain chunks come from the retain
pool of the run's seed, round ``step // resample_every``, minus the run's
unit and forget documents.

Stopping: ``train.max_steps``; the utility guard (every ``guard_every``
steps the guard benchmark is evaluated; below ``guard_fraction`` x its
baseline the run stops and keeps the parameters of the last check that
passed); an optional forget-loss threshold (stop once the step's forget CE
reaches it). On CPU the run is deterministic given the seed.

Outputs in ``--out`` (``unlearning/<target>/<unit>/<condition>/seed<s>/``):
``adapter/`` (LoRA) or ``checkpoint/`` (full), ``train_log.csv`` and
``eval.json`` (every benchmark, as ``capatlas evaluate``, plus the run's
identity, steps and stop reason), written last.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from capatlas.command import Command
from capatlas.errors import CapatlasError
from capatlas.benchmarks.evaluate import (
    default_world,
    evaluate_prepared,
    check_tokenizer_fits,
    load_model,
    load_tokenizer,
    model_max_length,
    prefix_id,
    prepare_benchmarks,
)
from capatlas.devices import resolve_device
from capatlas.plan import GLOBAL_UNIT, PAIRS
from capatlas.unlearning import diagnostics
from capatlas.unlearning.forget_sets import read_forget_set, read_retain_pool
from capatlas.fileio import atomic_path, write_json

log = logging.getLogger(__name__)

COMMAND = Command(config_help="capatlas config (keys unlearning, evaluation, benchmarks)")

IGNORE_INDEX = -100
# control condition -> the influence condition it is paired with
CONTROL_OF = {control: treated for treated, control in PAIRS}
# either condition of a pair -> the other (its forget set is the held-out set of the diagnostics)
PARTNER = {**CONTROL_OF, **{treated: control for treated, control in PAIRS}}
LOG_COLUMNS = (
    "step", "loss", "forget_loss", "retain_loss", "forget_grad_norm", "retain_grad_norm", "lr", "guard", "retain_round",
    "forget_ppl",
)  # fmt: skip


# ------------------------------------------------------------------ data


def chunk_documents(tokenizer, texts: Sequence[str], max_length: int, prefix: int | None) -> list[list[int]]:
    """Each document as [prefix] + tokens, cut into chunks of at most max_length (chunks of 1 token dropped)."""
    chunks = []
    for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
        ids = ([prefix] if prefix is not None else []) + list(ids)
        chunks.extend(c for start in range(0, len(ids), max_length) if len(c := ids[start : start + max_length]) > 1)
    return chunks


def collate(chunks: Sequence[Sequence[int]]):
    """input_ids, attention_mask, labels (-100 on padding), right-padded."""
    import torch

    width = max(len(c) for c in chunks)
    ids = torch.zeros((len(chunks), width), dtype=torch.long)
    mask = torch.zeros((len(chunks), width), dtype=torch.long)
    for row, chunk in enumerate(chunks):
        ids[row, : len(chunk)] = torch.tensor(chunk)
        mask[row, : len(chunk)] = 1
    labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def token_logprobs(model, batch) -> tuple["torch.Tensor", "torch.Tensor"]:  # noqa: F821
    """Each sequence's next-token log-probabilities (positions 1..) and which of them are real tokens, [batch, T - 1]."""
    import torch

    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
    targets = batch["labels"][:, 1:]
    return logprobs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1), targets != IGNORE_INDEX


def sequence_logprobs(model, batch) -> "torch.Tensor":  # noqa: F821
    """Summed log-likelihood of each sequence's tokens (positions 1..), shape [batch]."""
    picked, valid = token_logprobs(model, batch)
    return (picked * valid).sum(dim=1)


def chunk_token_logprobs(model, chunks: Sequence[Sequence[int]], batch_size: int, device) -> list[np.ndarray]:
    """Each chunk's next-token log-probabilities (float64), in eval mode."""
    import torch

    was_training = model.training
    model.eval()
    out: list[np.ndarray] = []
    with torch.no_grad():
        for start in range(0, len(chunks), batch_size):
            picked, valid = token_logprobs(model, _to(collate(chunks[start : start + batch_size]), device))
            out.extend(row[mask].cpu().numpy().astype(np.float64) for row, mask in zip(picked, valid))
    model.train(was_training)
    return out


def mean_ce(model, batch) -> "torch.Tensor":  # noqa: F821
    """Mean next-token cross-entropy over the batch's real tokens (the HF loss)."""
    return model(**batch).loss


class ChunkSampler:
    """Batches of chunks in seeded epochs: every chunk once per epoch before any repeats."""

    def __init__(self, chunks: list[list[int]], batch_size: int, rng: np.random.Generator):
        if not chunks:
            raise CapatlasError("no chunks to sample")
        self.chunks, self.batch_size, self.rng = chunks, batch_size, rng
        self.order: list[int] = []

    def next(self) -> list[list[int]]:
        while len(self.order) < self.batch_size:
            self.order.extend(self.rng.permutation(len(self.chunks)).tolist())
        take, self.order = self.order[: self.batch_size], self.order[self.batch_size :]
        return [self.chunks[i] for i in take]


# ---------------------------------------------------------------- methods


def trainable(model) -> list:
    return [p for p in model.parameters() if p.requires_grad]


def grad_norm(grads: Sequence) -> float:
    return math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads if g is not None))


def _accumulate(model, loss_fn, micro_batches) -> tuple[list, float]:
    """Gradient of the mean of loss_fn over micro-batches, and that mean (grads left zeroed)."""
    import torch

    params = trainable(model)
    for p in params:
        p.grad = None
    total = 0.0
    for batch in micro_batches:
        loss = loss_fn(batch) / len(micro_batches)
        loss.backward()
        total += float(loss.detach())
    grads = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in params]
    for p in params:
        p.grad = None
    return grads, total


def npo_loss(logp: "torch.Tensor", ref_logp: "torch.Tensor", beta: float) -> "torch.Tensor":  # noqa: F821
    import torch.nn.functional as F

    return -(2.0 / beta) * F.logsigmoid(-beta * (logp - ref_logp)).mean()


@dataclass
class StepResult:
    loss: float
    forget_loss: float
    retain_loss: float = float("nan")
    forget_grad_norm: float = float("nan")
    retain_grad_norm: float = float("nan")


@dataclass
class UpdateInputs:
    """What a method combines into its descent direction: the step's gradients, losses and settings."""

    model: object
    g_forget: list
    g_retain: list | None  # None when the method runs without retain data
    result: StepResult
    forget_batches: Sequence[dict]
    retain_weight: float
    npo_beta: float
    ref_logps: Sequence | None


def _ga(u: UpdateInputs) -> tuple[list, float]:
    return [-g for g in u.g_forget], -u.result.forget_loss


def _graddiff(u: UpdateInputs) -> tuple[list, float]:
    if u.g_retain is None:
        return [-g for g in u.g_forget], -u.result.forget_loss + 0.0
    direction = [-gf + u.retain_weight * gr for gf, gr in zip(u.g_forget, u.g_retain)]
    return direction, -u.result.forget_loss + u.retain_weight * u.result.retain_loss


def _ngdiff(u: UpdateInputs) -> tuple[list, float]:
    nf, nr = max(u.result.forget_grad_norm, 1e-12), max(u.result.retain_grad_norm, 1e-12)
    return [gr / nr - gf / nf for gf, gr in zip(u.g_forget, u.g_retain)], u.result.retain_loss - u.result.forget_loss


def _npo(u: UpdateInputs) -> tuple[list, float]:
    if u.ref_logps is None or len(u.ref_logps) != len(u.forget_batches):
        raise CapatlasError("npo needs the reference log-likelihood of every forget micro-batch")
    model = u.model
    pairs = list(zip(u.forget_batches, u.ref_logps))
    g_npo, loss_npo = _accumulate(
        model, lambda pair: npo_loss(sequence_logprobs(model, pair[0]), pair[1], u.npo_beta), pairs
    )
    if u.g_retain is None:
        return g_npo, loss_npo + 0.0
    return [gn + u.retain_weight * gr for gn, gr in zip(g_npo, u.g_retain)], loss_npo + u.retain_weight * u.result.retain_loss


@dataclass(frozen=True)
class Method:
    """An unlearning method: whether it needs retain data (given retain_weight) and its direction."""

    needs_retain: Callable[[float], bool]
    direction: Callable[[UpdateInputs], tuple[list, float]]


# unlearning.method -> its update (the module docstring gives each one's loss).
METHODS: dict[str, Method] = {
    "ga": Method(lambda weight: False, _ga),
    "graddiff": Method(lambda weight: weight > 0, _graddiff),
    "ngdiff": Method(lambda weight: True, _ngdiff),
    "npo": Method(lambda weight: weight > 0, _npo),
}


def method_named(name: str) -> Method:
    if name not in METHODS:
        raise CapatlasError(f"unknown unlearning.method '{name}' (one of {', '.join(METHODS)})")
    return METHODS[name]


def compute_update(
    model,
    method: str,
    forget_batches: Sequence[dict],
    retain_batches: Sequence[dict],
    *,
    retain_weight: float = 1.0,
    npo_beta: float = 0.1,
    ref_logps: Sequence | None = None,
) -> StepResult:
    """Set `.grad` of the trained parameters to the method's descent direction; return the losses.

    An optimizer step then moves the parameters against `.grad`: up the
    forget loss, down the retain loss.
    """
    chosen = method_named(method)
    params = trainable(model)
    g_forget, ce_forget = _accumulate(model, lambda b: mean_ce(model, b), forget_batches)
    result = StepResult(loss=float("nan"), forget_loss=ce_forget, forget_grad_norm=grad_norm(g_forget))
    g_retain = None
    if chosen.needs_retain(retain_weight):
        if not retain_batches:
            raise CapatlasError(f"unlearning.method '{method}' needs retain data, and the retain set is empty")
        g_retain, ce_retain = _accumulate(model, lambda b: mean_ce(model, b), retain_batches)
        result.retain_loss, result.retain_grad_norm = ce_retain, grad_norm(g_retain)
    inputs = UpdateInputs(model, g_forget, g_retain, result, forget_batches, retain_weight, npo_beta, ref_logps)
    direction, result.loss = chosen.direction(inputs)
    for p, d in zip(params, direction):
        p.grad = d.to(p.dtype)
    return result


# ----------------------------------------------------------------- model


def attach_lora(model, lora_cfg: dict):
    from peft import LoraConfig, get_peft_model

    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in lora_cfg["target_modules"] if m not in names]
    if missing:
        raise CapatlasError(
            f"config key 'unlearning.lora.target_modules': the model has no module(s) named {', '.join(missing)}"
        )
    config = LoraConfig(
        r=lora_cfg["r"],
        lora_alpha=lora_cfg["alpha"],
        lora_dropout=lora_cfg["dropout"],
        target_modules=list(lora_cfg["target_modules"]),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def prepare_model(model, section: dict):
    """LoRA adapters on a frozen base, or every parameter trainable."""
    if section["lora"]["enabled"]:
        return attach_lora(model, section["lora"])
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def make_optimizer(model, train_cfg: dict):
    import torch

    params = trainable(model)
    if train_cfg["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=train_cfg["lr"], weight_decay=train_cfg["weight_decay"])
    return torch.optim.AdamW(params, lr=train_cfg["lr"], weight_decay=train_cfg["weight_decay"])


# ------------------------------------------------------------------- run


@dataclass
class RunData:
    forget_chunks: list[list[int]]
    retain_rounds: list[list[list[int]]]  # chunks per resampling round
    forget_docs: int
    forget_tokens: int


def retain_texts(pool: pd.DataFrame, exclude_unit: str | None, exclude_docs: set[str]) -> dict[int, list[str]]:
    keep = ~pool["doc_id"].isin(exclude_docs)
    if exclude_unit is not None:
        keep &= pool["unit"] != exclude_unit
    kept = pool[keep]
    return {int(r): list(g["text"]) for r, g in kept.groupby("round", sort=True)}


def load_run_data(
    tokenizer, forget: pd.DataFrame, meta: dict, pool: pd.DataFrame, *, max_length: int, prefix, run_name: str
) -> RunData:
    unit = meta.get("unit")
    rounds = retain_texts(pool, None if unit in (None, GLOBAL_UNIT) else unit, set(forget["doc_id"]))
    forget_chunks = chunk_documents(tokenizer, list(forget["text"]), max_length, prefix)
    if not forget_chunks:
        raise CapatlasError(f"{run_name}: the forget set's documents have no tokens to train on")
    retain_chunks = [chunk_documents(tokenizer, rounds[r], max_length, prefix) for r in sorted(rounds)]
    return RunData(forget_chunks, retain_chunks, len(forget), int(forget.get("n_tokens", pd.Series([0])).sum()))


@dataclass
class TrainOutcome:
    steps: int
    stop_reason: str
    rows: list[dict] = field(default_factory=list)
    perplexity_threshold: float | None = None


def _eval_loss(model, batch) -> float:
    """The mean cross-entropy of `batch` in eval mode (no dropout), as the study's learning-rate probe measures it."""
    import torch

    was_training = model.training
    model.eval()
    with torch.no_grad():
        loss = float(mean_ce(model, batch))
    model.train(was_training)
    return loss


def _reference_logprobs(model, data: RunData, device) -> dict:
    """NPO's reference: the model before unlearning, its log-likelihood of each forget chunk, taken once."""
    import torch

    cache = {}
    with torch.no_grad():
        model.eval()
        for chunk in data.forget_chunks:
            cache[tuple(chunk)] = sequence_logprobs(model, _to(collate([chunk]), device))[0]
    return cache


def _losses(result) -> dict:
    return {
        "loss": result.loss,
        "forget_loss": result.forget_loss,
        "retain_loss": result.retain_loss,
        "forget_grad_norm": result.forget_grad_norm,
        "retain_grad_norm": result.retain_grad_norm,
    }


# ------------------------------------------- the study's NGDiff controls


def fit_learning_rate(lr: float, delta: float, losses: Sequence[float], low: float, high: float) -> float:
    """The minimiser of the parabola through (lr - delta, l-), (lr, l0), (lr + delta, l+), clamped to [low, high].

    A parabola that is not convex (flat, concave, not finite) has no
    minimiser, and the lr stays. The study's code takes -b / 2a, the offset
    from lr, as the new lr, and also follows a concave fit to its maximum.
    """
    l_minus, l_0, l_plus = losses
    curvature = (l_minus - 2 * l_0 + l_plus) / (2 * delta**2)
    slope = (l_plus - l_minus) / (2 * delta)
    if not (math.isfinite(curvature) and math.isfinite(slope) and curvature > 0):
        return lr
    return min(high, max(low, lr - slope / (2 * curvature)))


def probe_learning_rate(params: Sequence, optimizer, loss_fn: Callable[[], float], auto_lr: dict) -> tuple[float, list]:
    """Three trial steps with the gradients in place, each from the same parameters and optimizer state and undone.

    Sets and returns the fitted lr, with the three probe losses.
    """
    import copy

    import torch

    lr = optimizer.param_groups[0]["lr"]
    saved_params = [p.detach().clone() for p in params]
    saved_state = copy.deepcopy(optimizer.state_dict())
    losses = []
    for trial in (lr - auto_lr["delta"], lr, lr + auto_lr["delta"]):
        for group in optimizer.param_groups:
            group["lr"] = trial
        optimizer.step()
        losses.append(float(loss_fn()))
        with torch.no_grad():
            for p, saved in zip(params, saved_params):
                p.copy_(saved)
        optimizer.load_state_dict(saved_state)
    new_lr = fit_learning_rate(lr, auto_lr["delta"], losses, auto_lr["min"], auto_lr["max"])
    for group in optimizer.param_groups:
        group["lr"] = new_lr
    return new_lr, losses


def forget_perplexity(model, chunks: Sequence[Sequence[int]], batch_size: int, device) -> float:
    """exp of the mean next-token cross-entropy over every token of `chunks` (the first of each is never predicted)."""
    return diagnostics.perplexity(chunk_token_logprobs(model, chunks, batch_size, device))


def shuffled_chunks(chunks: Sequence[Sequence[int]], seed: int) -> list[list[int]]:
    """Each chunk with its tokens after the first in a seeded random order: the same words, no text."""
    rng = np.random.default_rng([seed, 11])
    return [[c[0], *np.asarray(c[1:])[rng.permutation(len(c) - 1)].tolist()] for c in chunks]


def perplexity_threshold(model, data: RunData, stop: dict, seed: int, batch_size: int, device) -> float | None:
    threshold = stop["perplexity"]["threshold"]
    if threshold == "shuffled":
        return forget_perplexity(model, shuffled_chunks(data.forget_chunks, seed), batch_size, device)
    return threshold


def _check_guard(model, guard, snapshot: list, row: dict, run_name: str) -> list | None:
    """Run the guard; on a pass the new snapshot, on a fall the last passing parameters restored and None."""
    import torch

    value, ok = guard(model)
    row["guard"] = value
    if ok:
        return [p.detach().clone() for p in trainable(model)]
    with torch.no_grad():
        for p, saved in zip(trainable(model), snapshot):
            p.copy_(saved)
    log.info("%s: guard fell to %.4f at step %d; parameters of the last passing check kept", run_name, value, row["step"])
    return None


def train_unlearning(
    model, data: RunData, section: dict, seed: int, *, guard=None, run_name: str = "run", fixed_steps: int | None = None
):
    """Run the method until a stop criterion; `guard(model) -> bool` says whether utility is still acceptable.

    With `fixed_steps` (a control run whose dose is matched to its influence
    run) the run takes exactly that many optimizer steps and no stop rule applies.
    """
    import torch
    from tqdm import tqdm

    train_cfg, stop = section["train"], section["stop"]
    method = section["method"]
    rng = np.random.default_rng([seed, 7])
    forget_sampler = ChunkSampler(data.forget_chunks, train_cfg["batch_size"], rng)
    retain_samplers = [
        ChunkSampler(chunks, train_cfg["batch_size"], rng) if chunks else None for chunks in data.retain_rounds
    ]
    needs_retain = method_named(method).needs_retain(section["retain_weight"])
    if needs_retain and not any(retain_samplers):
        raise CapatlasError(f"{run_name}: the retain set is empty after removing the run's unit and forget documents")
    device = next(model.parameters()).device
    ref_cache = _reference_logprobs(model, data, device) if method == "npo" else {}
    # NPO compares the policy's log-likelihood with the reference's, taken in
    # eval mode: it trains in eval mode too (no dropout), so that the two are
    # taken alike and at the first step the loss is exactly its reference value.
    model.train(method != "npo")
    optimizer = make_optimizer(model, train_cfg)
    every = section["retain"]["resample_every"]
    outcome = TrainOutcome(steps=0, stop_reason="max_steps" if fixed_steps is None else "matched_dose")
    if fixed_steps is not None:
        guard, stop = None, {**stop, "forget_loss_threshold": None, "perplexity": {**stop["perplexity"], "threshold": None}}
    auto_lr = train_cfg["auto_lr"]
    if auto_lr["enabled"] and not needs_retain:
        raise CapatlasError(f"{run_name}: unlearning.train.auto_lr probes on a retain example; method {method} has none")
    ppl_threshold = perplexity_threshold(model, data, stop, seed, train_cfg["batch_size"], device)
    outcome.perplexity_threshold = ppl_threshold
    snapshot = [p.detach().clone() for p in trainable(model)]
    n_steps = train_cfg["max_steps"] if fixed_steps is None else fixed_steps
    for step in tqdm(range(n_steps), desc=run_name, file=sys.stderr, mininterval=2.0):
        round_ = min(step // every if every else 0, len(retain_samplers) - 1)
        forget_batches = _draw(forget_sampler, train_cfg["grad_accum"], device)
        retain_batches = _draw(retain_samplers[round_], train_cfg["grad_accum"], device) if needs_retain else []
        ref = None
        if method == "npo":
            ref = [torch.stack([ref_cache[tuple(_unpad(row, m))] for row, m in _rows(b)]) for b in forget_batches]
        result = compute_update(
            model,
            method,
            forget_batches,
            retain_batches,
            retain_weight=section["retain_weight"],
            npo_beta=section["npo_beta"],
            ref_logps=ref,
        )
        if auto_lr["enabled"] and retain_batches and (step + 1) % auto_lr["every"] == 0:
            probe = {k: v[:1] for k, v in retain_batches[0].items()}
            probe_learning_rate(trainable(model), optimizer, lambda: _eval_loss(model, probe), auto_lr)
        lr_used = optimizer.param_groups[0]["lr"]
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        outcome.steps = step + 1
        row = {"step": step + 1, **_losses(result), "lr": lr_used, "guard": float("nan"), "retain_round": round_,
               "forget_ppl": float("nan")}  # fmt: skip
        outcome.rows.append(row)
        if not all(math.isfinite(row[k]) for k in ("forget_loss", "loss")):
            raise CapatlasError(f"{run_name}: the loss became {row['loss']} at step {step + 1} (lower the lr)")
        if guard is not None and (step + 1) % stop["guard_every"] == 0:
            snapshot = _check_guard(model, guard, snapshot, row, run_name)
            if snapshot is None:
                outcome.stop_reason = "guard"
                break
        reason = _forgotten(model, data, result, row, stop, ppl_threshold, train_cfg["batch_size"], device)
        if reason is not None:
            outcome.stop_reason = reason
            break
    model.eval()
    return outcome


def _draw(sampler: ChunkSampler | None, n: int, device) -> list[dict]:
    """`n` batches (one per gradient-accumulation step); none from an empty retain round."""
    return [] if sampler is None else [_to(collate(sampler.next()), device) for _ in range(n)]


def _forgotten(model, data: RunData, result, row: dict, stop: dict, ppl_threshold, batch_size: int, device) -> str | None:
    """The stop rule on the forget set that this step met, if any: its loss, or (every few steps) its perplexity."""
    threshold = stop["forget_loss_threshold"]
    if threshold is not None and result.forget_loss >= threshold:
        return "forget_loss"
    if ppl_threshold is not None and row["step"] % stop["perplexity"]["every"] == 0:
        row["forget_ppl"] = forget_perplexity(model, data.forget_chunks, batch_size, device)
        if row["forget_ppl"] >= ppl_threshold:
            return "perplexity"
    return None


def _to(batch: dict, device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def _rows(batch: dict):
    return zip(batch["input_ids"].cpu(), batch["attention_mask"].cpu())


def _unpad(row, mask) -> list[int]:
    return row[mask.bool()].tolist()


def write_train_log(rows: Sequence[dict], path: Path) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(LOG_COLUMNS))
            writer.writeheader()
            for row in rows:
                writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def read_baseline(path: Path, run_name: str) -> dict:
    if not path.is_file():
        raise CapatlasError(f"{run_name}: baseline evaluation {path} does not exist (run capatlas evaluate)")
    return json.loads(path.read_text())["benchmarks"]


def _make_guard(stop: dict, shared: SharedInputs, base_model, batch_size: int, eval_len):
    """`guard(model) -> (value, ok)` on the guard benchmark's guard items against its floor, or None without one.

    The floor is `guard_fraction` x the base model's value on the same items,
    measured once per job: under item_roles held_out they are items no run is judged on.
    """
    guarded = shared.guarded
    if not guarded:
        return None
    (bench,) = guarded
    metric = stop["guard_metric"]
    if shared.guard_base_value is None:
        base = evaluate_prepared(base_model, guarded, batch_size=batch_size, max_length=eval_len)
        shared.guard_base_value = base[bench.name][metric]
    floor = stop["guard_fraction"] * shared.guard_base_value

    def guard(m):
        value = evaluate_prepared(m, guarded, batch_size=batch_size, max_length=eval_len)[bench.name][metric]
        return value, value >= floor

    return guard


@dataclass
class SharedInputs:
    """What every run of one job reads once: tokenizer, prepared benchmarks, retain pools by seed, baseline."""

    model_path: str
    device: str
    tokenizer: object
    prepared: list
    guarded: list  # the guard benchmark's guard items, prepared; empty without a guard
    pools: dict[int, pd.DataFrame]
    baseline: dict
    baseline_path: Path
    prefix: int | None
    # The base model's value on the guard items: the same for every run of the job, measured by the first.
    guard_base_value: float | None = None


def read_retain_pools(retain_paths: Sequence[Path], seeds: set[int], job_name: str) -> dict[int, pd.DataFrame]:
    """One retain pool for each seed among the job's runs, by the seed each pool records."""
    pools: dict[int, pd.DataFrame] = {}
    for path in retain_paths:
        seed, pool = read_retain_pool(path, job_name=job_name)
        if seed in pools:
            raise CapatlasError(f"{job_name}: two retain pools of seed {seed} ({', '.join(map(str, retain_paths))})")
        pools[seed] = pool
    unpaired = sorted(seeds - set(pools))
    if unpaired:
        raise CapatlasError(
            f"{job_name}: no retain pool for seed(s) {unpaired} among --retain-pool (given seeds {sorted(pools)})"
        )
    return pools


def load_shared_inputs(
    config: dict, model_path: str, pools: dict[int, pd.DataFrame], baseline_path: Path, *, world_dir, job_name
) -> SharedInputs:
    tokenizer = load_tokenizer(model_path)
    guard = config["unlearning"]["stop"]["guard_benchmark"]
    if guard is not None and guard not in {b["name"] for b in config["benchmarks"]}:
        raise CapatlasError(f"config key 'unlearning.stop.guard_benchmark': '{guard}' is not a benchmark")
    return SharedInputs(
        model_path=str(model_path),
        device=resolve_device(config["unlearning"]["device"], key="unlearning.device"),
        tokenizer=tokenizer,
        prepared=prepare_benchmarks(config, tokenizer, world_dir=world_dir),
        guarded=[] if guard is None else prepare_benchmarks(config, tokenizer, world_dir=world_dir, names=[guard], role="guard"),
        pools=pools,
        baseline=read_baseline(baseline_path, job_name),
        baseline_path=baseline_path,
        prefix=prefix_id(tokenizer, config["evaluation"]["prefix_token"]),
    )


def run_one(
    config: dict,
    shared: SharedInputs,
    forget: pd.DataFrame,
    meta: dict,
    out: Path,
    *,
    fixed_steps: int | None = None,
    heldout: tuple[str, pd.DataFrame] | None = None,
) -> dict:
    """One run from the base model: forget `forget`, evaluate, write `out` (eval.json last).

    `heldout`: the paired run's condition and forget set (same unit and seed), for the diagnostics.
    """
    import torch

    section = config["unlearning"]
    eval_cfg = config["evaluation"]
    run_name = f"unlearning run {'/'.join(Path(out).parts[-4:])}"
    seed = int(meta.get("seed", 0))
    started = time.perf_counter()
    # Seeded before the model is loaded and LoRA attached, as a run of its
    # own would be: a run's bytes do not depend on what else its job ran.
    torch.manual_seed(seed)
    base = load_model(shared.model_path, device=shared.device, precision=section["precision"])
    check_tokenizer_fits(shared.tokenizer, base, shared.model_path)
    train_len = section["train"]["max_length"]
    max_length = min(train_len, model_max_length(base, None) or train_len)
    eval_len = model_max_length(base, eval_cfg["max_length"])
    data = load_run_data(
        shared.tokenizer, forget, meta, shared.pools[seed], max_length=max_length, prefix=shared.prefix, run_name=run_name
    )
    guard = _make_guard(section["stop"], shared, base, eval_cfg["batch_size"], eval_len)
    heldout_chunks = chunk_documents(shared.tokenizer, list(heldout[1]["text"]), max_length, shared.prefix) if heldout else []
    def diagnose(state) -> dict:
        measure = partial(chunk_token_logprobs, state, batch_size=eval_cfg["batch_size"], device=shared.device)
        return diagnostics.diagnose(measure, data.forget_chunks, heldout_chunks)

    before = diagnose(base) if heldout_chunks else None
    model = prepare_model(base, section)
    outcome = train_unlearning(model, data, section, seed, guard=guard, run_name=run_name, fixed_steps=fixed_steps)
    after = diagnose(model) if heldout_chunks else None
    results = evaluate_prepared(model, shared.prepared, batch_size=eval_cfg["batch_size"], max_length=eval_len)
    model_dir = out / ("adapter" if section["lora"]["enabled"] else "checkpoint")
    with atomic_path(model_dir, directory=True) as tmp:
        model.save_pretrained(tmp)
        if not section["lora"]["enabled"]:
            shared.tokenizer.save_pretrained(tmp)
    write_train_log(outcome.rows, out / "train_log.csv")
    summary = {
        "run": {k: meta.get(k) for k in ("target", "unit_slot", "unit", "level", "condition")} | {"seed": seed},
        "model": shared.model_path,
        "adapter": str(model_dir) if section["lora"]["enabled"] else None,
        "checkpoint": None if section["lora"]["enabled"] else str(model_dir),
        "method": section["method"],
        # The base weights' dtype as loaded, not only the setting asked for.
        "precision": section["precision"],
        "dtype": str(base.dtype).removeprefix("torch."),
        "device": str(shared.device),
        "steps": outcome.steps,
        "stop_reason": outcome.stop_reason,
        "dose": section["stop"]["dose"],
        "perplexity_threshold": outcome.perplexity_threshold,
        "diagnostics": None if before is None else {
            "heldout": f"the forget set of the paired {heldout[0]} run (same unit and seed)",
            "before": before,
            "after": after,
        },
        "forget_docs": data.forget_docs,
        "forget_tokens": data.forget_tokens,
        "forget_chunks": len(data.forget_chunks),
        "final_forget_loss": outcome.rows[-1]["forget_loss"] if outcome.rows else None,
        "seconds": time.perf_counter() - started,
        "benchmarks": results,
        "baseline": {name: shared.baseline.get(name) for name in results},
    }
    write_json(summary, out / "eval.json")
    return summary


def run_unlearning(
    config: dict,
    model_path: str,
    runs: Sequence[tuple[Path, Path]],
    retain_paths: Sequence[Path],
    baseline_path: Path,
    *,
    world_dir: str | None = None,
) -> list[dict]:
    """Every (forget set, output directory) run of one job, each from the base model.

    A job holds the runs of one (target, unit): the conditions a paired test
    compares, in every seed, share the process start-up (~15 s of imports
    on CPU) and, on a cluster, the node's float path. Each run trains on the
    retain pool of its own seed, so `retain_paths` holds one pool per seed.
    """
    import torch

    if not runs:
        raise CapatlasError("capatlas unlearn: no runs given (--forget-set/--out)")
    job_name = "unlearning job " + ", ".join("/".join(Path(out).parts[-4:]) for _, out in runs)
    forget_sets = [read_forget_set(path, run_name=job_name) for path, _ in runs]
    pools = read_retain_pools(retain_paths, {int(meta.get("seed", 0)) for _, meta in forget_sets}, job_name)
    torch.set_num_threads(config["unlearning"]["threads"])
    torch.use_deterministic_algorithms(True, warn_only=True)
    shared = load_shared_inputs(config, model_path, pools, baseline_path, world_dir=world_dir, job_name=job_name)
    matched = config["unlearning"]["stop"]["dose"] == "matched"
    # Influence runs first: with a matched dose each control run takes its partner's step count.
    order = sorted(range(len(runs)), key=lambda i: forget_sets[i][1].get("condition") in CONTROL_OF)
    summaries: dict[int, dict] = {}
    by_run = {_run_key(meta, meta.get("condition")): forget for forget, meta in forget_sets}
    for i in order:
        (forget, meta), (_, out) = forget_sets[i], runs[i]
        fixed_steps = dose_partner_steps(meta, summaries.values(), job_name) if matched else None
        partner = PARTNER.get(meta.get("condition"))
        heldout = (partner, by_run[_run_key(meta, partner)]) if _run_key(meta, partner) in by_run else None
        summaries[i] = run_one(config, shared, forget, meta, out, fixed_steps=fixed_steps, heldout=heldout)
    return [summaries[i] for i in range(len(runs))]


def _run_key(meta: dict, condition: str | None) -> tuple:
    return (meta.get("target"), meta.get("unit_slot"), condition, int(meta.get("seed", 0)))


def dose_partner_steps(meta: dict, done: Iterable[dict], job_name: str) -> int | None:
    """The steps a control run takes under a matched dose: its influence run's; None for an influence run."""
    treated = CONTROL_OF.get(meta.get("condition"))
    if treated is None:
        return None
    key = _run_key(meta, treated)
    for summary in done:
        if _run_key(summary["run"], summary["run"]["condition"]) == key:
            return int(summary["steps"])
    raise CapatlasError(
        f"{job_name}: the {meta.get('condition')} run of target {key[0]}, unit {key[1]}, seed {key[3]} has a matched "
        f"dose (unlearning.stop.dose: matched) but its {treated} run is not in the same job; list both conditions "
        "in unlearning.forget.conditions, or set unlearning.stop.dose: independent"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="base model directory")
    parser.add_argument("--forget-set", required=True, nargs="+", help="each run's forget_set.parquet")
    parser.add_argument(
        "--retain-pool", required=True, nargs="+", help="the retain pool of each seed among the runs (retain/seed<s>.parquet)"
    )
    parser.add_argument("--baseline", required=True, help="eval/base.json (guard baseline)")
    parser.add_argument("--world", default=None, help="demo world directory (default: the run's)")
    parser.add_argument(
        "--out", required=True, nargs="+", help="each run's directory unlearning/<target>/<unit>/<condition>/seed<s>"
    )


def run(args: argparse.Namespace, config: dict | None) -> None:
    if len(args.forget_set) != len(args.out):
        raise CapatlasError(
            f"capatlas unlearn: {len(args.forget_set)} --forget-set paths but {len(args.out)} --out directories"
        )
    summaries = run_unlearning(
        config,
        args.model,
        [(Path(f), Path(o)) for f, o in zip(args.forget_set, args.out)],
        [Path(p) for p in args.retain_pool],
        Path(args.baseline),
        world_dir=default_world(config, args.world),
    )
    for out, summary in zip(args.out, summaries):
        target = summary["run"]["target"]
        after = summary["benchmarks"].get(target, {})
        before = summary["baseline"].get(target) or {}
        log.info(
            "%s: %d steps (%s); %s logprob %.4f -> %.4f, acc %.3f -> %.3f",
            out, summary["steps"], summary["stop_reason"], target,
            before.get("logprob", float("nan")), after.get("logprob", float("nan")),
            before.get("acc", float("nan")), after.get("acc", float("nan")),
        )  # fmt: skip

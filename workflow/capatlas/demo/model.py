"""`capatlas demo-model`: a tiny OLMo-3 model pretrained on the demo world, with its tokenizer.

The demo's stand-in for the paper's `allenai/Olmo-3-1025-7B`: the same
architecture (`Olmo3ForCausalLM`: sliding and full attention layers,
QK-norm, post-norms) at a size a laptop CPU trains in about a minute, with
its own byte-level BPE tokenizer trained on the same corpus
(`capatlas demo-tokenizer`, or here when none is given). It is trained
only on the demo corpus, so whatever it knows about the demo benchmarks it
learned from the planted bins; the quick multiple-choice check at the end
confirms that it did.

Output directory (written atomically)::

    config.json, model.safetensors, generation_config.json   the model
    tokenizer.json, tokenizer_config.json, ...               the tokenizer
    optimizer.pt        AdamW state_dict, entries carry "param_name" (Bergson's optimizer_state)
    train_log.csv       step, loss, lr
    demo_accuracy.json  {benchmark: {acc, acc_norm, n_items, chance}}
    train_summary.json  sizes, loss curve summary, seconds, accuracy
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from capatlas.command import Command
from capatlas.errors import CapatlasError
from capatlas.demo.tokenizer import load_demo_tokenizer, train_tokenizer
from capatlas.demo.world import load_ground_truth, read_corpus
from capatlas.fileio import atomic_path

log = logging.getLogger(__name__)

COMMAND = Command(config_help="capatlas config YAML (uses keys seed and demo)")

ADAM_BETAS = (0.9, 0.95)
ADAM_EPS = 1e-8
GRAD_CLIP = 1.0
# Cosine decay ends at this fraction of the peak learning rate.
MIN_LR_FRACTION = 0.1
EVAL_BATCH = 64


# ------------------------------------------------------------------- model


def layer_types(n_layers: int) -> list[str]:
    # OLMo 3 makes every fourth layer full attention; a tiny model still needs
    # at least one, so the last layer is always full.
    return [
        "full_attention" if (i + 1) % 4 == 0 or i == n_layers - 1 else "sliding_attention"
        for i in range(n_layers)
    ]


def build_model(model_cfg: dict, tokenizer):
    from transformers import Olmo3Config, Olmo3ForCausalLM

    config = Olmo3Config(
        vocab_size=len(tokenizer),
        hidden_size=model_cfg["hidden_size"],
        intermediate_size=model_cfg["intermediate_size"],
        num_hidden_layers=model_cfg["num_hidden_layers"],
        num_attention_heads=model_cfg["num_attention_heads"],
        num_key_value_heads=model_cfg["num_attention_heads"],
        max_position_embeddings=model_cfg["max_position_embeddings"],
        sliding_window=model_cfg["sliding_window"],
        layer_types=layer_types(model_cfg["num_hidden_layers"]),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    if config.hidden_size % config.num_attention_heads:
        raise CapatlasError(
            f"config key 'demo.model.hidden_size' ({config.hidden_size}) must be divisible by "
            f"'demo.model.num_attention_heads' ({config.num_attention_heads})"
        )
    return Olmo3ForCausalLM(config)


# ---------------------------------------------------------------- training


def pack_blocks(token_lists: Sequence[list[int]], eos_id: int, seq_len: int, seed: int):
    """Documents in a seeded order, joined by EOS, cut into seq_len blocks."""
    import torch

    order = list(range(len(token_lists)))
    random.Random(f"{seed}:pack").shuffle(order)
    stream: list[int] = []
    for index in order:
        stream.extend(token_lists[index])
        stream.append(eos_id)
    n_blocks = len(stream) // seq_len
    if n_blocks == 0:
        raise CapatlasError(
            f"the demo corpus has {len(stream)} tokens, fewer than one block of "
            f"'demo.train.seq_len' = {seq_len}"
        )
    return torch.tensor(stream[: n_blocks * seq_len], dtype=torch.long).view(n_blocks, seq_len)


def lr_at(step: int, train_cfg: dict) -> float:
    """Linear warmup, then cosine decay to MIN_LR_FRACTION of the peak."""
    peak, warmup, total = train_cfg["lr"], train_cfg["warmup_steps"], train_cfg["steps"]
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (MIN_LR_FRACTION + (1 - MIN_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * progress)))


@dataclass
class TrainResult:
    log_rows: list[tuple[int, float, float]]
    optimizer: object


def seed_everything(seed: int, threads: int) -> None:
    import torch

    random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    # CPU kernels are deterministic for a fixed thread count; this turns any
    # op without a deterministic variant into an error instead of silent drift.
    torch.use_deterministic_algorithms(True, warn_only=True)


def train(model, blocks, train_cfg: dict, seed: int) -> TrainResult:
    import torch
    from tqdm import tqdm

    optimizer = torch.optim.AdamW(
        model.parameters(),  # one param group, in named_parameters() order, as Bergson maps it
        lr=train_cfg["lr"],
        betas=ADAM_BETAS,
        eps=ADAM_EPS,
        weight_decay=train_cfg["weight_decay"],
    )
    generator = torch.Generator().manual_seed(seed)
    batch_size = train_cfg["batch_size"]
    order = torch.empty(0, dtype=torch.long)
    rows: list[tuple[int, float, float]] = []
    model.train()
    progress = tqdm(range(train_cfg["steps"]), desc="demo-model", file=sys.stderr, mininterval=1.0)
    for step in progress:
        if len(order) < batch_size:
            # Epochs over the blocks, each in a fresh seeded order.
            order = torch.cat([order, torch.randperm(len(blocks), generator=generator)])
        batch, order = blocks[order[:batch_size]], order[batch_size:]
        lr = lr_at(step, train_cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_value = loss.item()
        rows.append((step, loss_value, lr))
        progress.set_postfix(loss=f"{loss_value:.3f}", refresh=False)
    progress.close()
    model.eval()
    return TrainResult(rows, optimizer)


def optimizer_state_for_bergson(model, optimizer) -> dict:
    """AdamW state_dict whose entries also record their parameter's name.

    Indices already follow ``model.named_parameters()`` (one param group), so
    Bergson's loader can map them positionally; the recorded ``param_name`` is
    what it prefers. It is the full-model name, as Bergson's own exporter
    (``save_second_moments_as_optimizer_pt``) writes it: its reader strips the
    ``model.`` base-model prefix for the normalizer key and uses the full name
    to look the module up and orient the second moment.
    """
    state = optimizer.state_dict()
    names = [name for name, _ in model.named_parameters()]
    if len(names) != len(state["param_groups"][0]["params"]):
        raise RuntimeError("optimizer parameters do not match model.named_parameters()")
    for index, entry in state["state"].items():
        entry["param_name"] = names[index]
    return state


# -------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class ChoiceItem:
    context: str
    choices: tuple[str, ...]
    gold: int


def benchmark_items(world_dir: Path, entry: dict) -> list[ChoiceItem]:
    """One demo benchmark's items, rendered OLMES RC style (cloze over choice texts)."""
    path = Path(world_dir) / entry["items_file"]
    if not path.is_file():
        raise CapatlasError(f"demo world is missing benchmark items {path}")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    items = []
    for row in rows:
        if "answerA" in row:  # SocialIQA
            question = f"{row['context']} {row['question']}"
            choices = (row["answerA"], row["answerB"], row["answerC"])
            gold = int(row["label"]) - 1
        elif "answerKey" in row:  # ARC: the key may be a letter or a digit
            question = row["question"]
            choices = tuple(row["choices"]["text"])
            gold = row["choices"]["label"].index(row["answerKey"])
        else:  # MMLU, this benchmark's subjects only
            if row["subject"] not in entry.get("subjects", ()):
                continue
            question = row["question"]
            choices = tuple(row["choices"])
            gold = int(row["answer"])
        items.append(ChoiceItem(f"Question: {question}\nAnswer:", choices, gold))
    return items


def choice_logprobs(model, tokenizer, items: Sequence[ChoiceItem]) -> list[list[float]]:
    """Summed log-probability of " {choice}" after each item's context."""
    import torch

    # Contexts start after an EOS, where every training document starts too.
    requests = []
    for item in items:
        context = [tokenizer.eos_token_id] + tokenizer.encode(item.context, add_special_tokens=False)
        for choice in item.choices:
            requests.append((context, tokenizer.encode(" " + choice, add_special_tokens=False)))
    scores: list[float] = []
    with torch.no_grad():
        for start in range(0, len(requests), EVAL_BATCH):
            chunk = requests[start : start + EVAL_BATCH]
            width = max(len(c) + len(x) for c, x in chunk)
            ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, (context, continuation) in enumerate(chunk):
                sequence = context + continuation
                ids[row, : len(sequence)] = torch.tensor(sequence)
                mask[row, : len(sequence)] = 1
            logprobs = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
            for row, (context, continuation) in enumerate(chunk):
                positions = torch.arange(len(context) - 1, len(context) + len(continuation) - 1)
                targets = torch.tensor(continuation)
                scores.append(float(logprobs[row, positions, targets].sum()))
    out, cursor = [], 0
    for item in items:
        out.append(scores[cursor : cursor + len(item.choices)])
        cursor += len(item.choices)
    return out


def evaluate(model, tokenizer, world_dir: Path, ground_truth: dict) -> dict[str, dict]:
    results = {}
    for name, entry in sorted(ground_truth["benchmarks"].items()):
        items = benchmark_items(world_dir, entry)
        if not items:
            raise CapatlasError(f"demo world has no items for benchmark {name!r} in {entry['items_file']}")
        scored = choice_logprobs(model, tokenizer, items)
        correct = correct_norm = 0
        for item, logprobs in zip(items, scored):
            # acc_norm: log-likelihood per character of the continuation (lm-eval's acc_norm,
            # OLMES' acc_per_char), so long choices are not penalised for their length.
            per_char = [lp / len(" " + c) for lp, c in zip(logprobs, item.choices)]
            correct += max(range(len(logprobs)), key=logprobs.__getitem__) == item.gold
            correct_norm += max(range(len(per_char)), key=per_char.__getitem__) == item.gold
        results[name] = {
            "acc": correct / len(items),
            "acc_norm": correct_norm / len(items),
            "n_items": len(items),
            "chance": sum(1 / len(item.choices) for item in items) / len(items),
        }
    return results


# -------------------------------------------------------------------- main


def _loss_summary(rows: Sequence[tuple[int, float, float]]) -> dict:
    losses = [loss for _, loss, _ in rows]
    window = max(1, len(losses) // 20)
    return {
        "first": losses[0],
        "last": losses[-1],
        "mean_first_5pct": sum(losses[:window]) / window,
        "mean_last_5pct": sum(losses[-window:]) / window,
        "min": min(losses),
    }


def train_demo_model(config: dict, world_dir: Path, out_dir: Path, tokenizer_dir: Path | None = None) -> dict:
    """Train the model (and its tokenizer, unless `tokenizer_dir` holds demo-tokenizer's) on the demo world.

    Writes the model, a copy of its tokenizer's files and the training
    records to `out_dir`; returns the metrics.
    """
    import torch

    started = time.perf_counter()
    demo, seed = config["demo"], int(config["seed"])
    model_cfg, train_cfg = demo["model"], demo["train"]
    world_dir = Path(world_dir)
    ground_truth = load_ground_truth(world_dir)
    texts = read_corpus(world_dir)
    if train_cfg["seq_len"] > model_cfg["max_position_embeddings"]:
        raise CapatlasError(
            f"config key 'demo.train.seq_len' ({train_cfg['seq_len']}) exceeds "
            f"'demo.model.max_position_embeddings' ({model_cfg['max_position_embeddings']})"
        )

    seed_everything(seed, train_cfg["threads"])
    if tokenizer_dir is None:
        tokenizer, tokenizer_files = train_tokenizer(texts, model_cfg["vocab_size"]), None
    else:
        tokenizer, tokenizer_files = load_demo_tokenizer(tokenizer_dir, config, world_dir)
    token_lists = tokenizer(texts, add_special_tokens=False)["input_ids"]
    blocks = pack_blocks(token_lists, tokenizer.eos_token_id, train_cfg["seq_len"], seed)
    seconds_prepare = time.perf_counter() - started

    torch.manual_seed(seed)
    model = build_model(model_cfg, tokenizer)
    n_params = sum(p.numel() for p in model.parameters())
    log.info(
        "demo model: %d docs, %d tokens in %d blocks, vocab %d, %.2fM parameters, %d steps",
        len(texts), blocks.numel(), len(blocks), len(tokenizer), n_params / 1e6, train_cfg["steps"],
    )
    train_started = time.perf_counter()
    result = train(model, blocks, train_cfg, seed)
    seconds_train = time.perf_counter() - train_started
    accuracy = evaluate(model, tokenizer, world_dir, ground_truth)

    tokens_seen = train_cfg["steps"] * train_cfg["batch_size"] * train_cfg["seq_len"]
    summary = {
        "seed": seed,
        "model": dict(model_cfg),
        "train": dict(train_cfg),
        "layer_types": list(model.config.layer_types),
        "n_parameters": n_params,
        "vocab_size": len(tokenizer),
        "n_docs": len(texts),
        "n_tokens": int(blocks.numel()),
        "epochs": tokens_seen / blocks.numel(),
        "loss": _loss_summary(result.log_rows),
        "accuracy": accuracy,
    }
    with atomic_path(out_dir, directory=True) as tmp:
        model.save_pretrained(tmp)
        if tokenizer_files is None:
            tokenizer.save_pretrained(tmp)
        for path in tokenizer_files or ():
            shutil.copyfile(path, tmp / path.name)
        torch.save(optimizer_state_for_bergson(model, result.optimizer), tmp / "optimizer.pt")
        with open(tmp / "train_log.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["step", "loss", "lr"])
            writer.writerows((step, f"{loss:.6f}", f"{lr:.8g}") for step, loss, lr in result.log_rows)
        (tmp / "demo_accuracy.json").write_text(json.dumps(accuracy, indent=2, sort_keys=True) + "\n")
        summary["seconds"] = {
            "prepare": seconds_prepare,
            "train": seconds_train,
            "total": time.perf_counter() - started,
        }
        (tmp / "train_summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    for name, scores in accuracy.items():
        log.info("%s: acc %.3f acc_norm %.3f (chance %.3f, %d items)", name, scores["acc"], scores["acc_norm"], scores["chance"], scores["n_items"])
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--world", required=True, help="demo world directory (capatlas demo-world --out)")
    parser.add_argument(
        "--tokenizer", default=None, help="capatlas demo-tokenizer's output (default: train the tokenizer here)"
    )
    parser.add_argument("--out", required=True, help="directory to write the model into (replaced as a whole)")


def run(args: argparse.Namespace, config: dict | None) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    train_demo_model(config, Path(args.world), Path(args.out), Path(args.tokenizer) if args.tokenizer else None)

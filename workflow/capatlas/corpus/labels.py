"""`capatlas labels`: WebOrganizer topic/format labels for one corpus file.

Runs the TopicClassifier / FormatClassifier (HF sequence classifiers with
24 classes, loaded from local directories) for every facet whose
``corpus.labels.<facet>.source`` is ``classifier``, over every record of
one file, and writes ``labels/<file-key>.parquet`` with columns

    row (int64), doc_id (string), <facet>_id (int32), <facet>_prob (float32)

``<facet>_prob`` is the winning class's softmax probability. The manifest
reads the file back through `capatlas.corpus.readers.LabelResolver`, which also
checks that rows and doc ids still match the corpus file.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from capatlas.command import Command
from capatlas.corpus.readers import CorpusRecord, get_field, iter_records
from capatlas.devices import resolve_device
from capatlas.errors import CapatlasError
from capatlas.fileio import write_parquet
from capatlas.taxonomy import FACETS

log = logging.getLogger(__name__)

COMMAND = Command()

N_CLASSES = 24
# Characters kept per document before tokenising: the tokenizer truncates
# to max_length anyway, and no natural text needs 32 characters per token,
# so this only saves tokenising megabyte-long documents in full.
CHARS_PER_TOKEN_CAP = 32


def labels_schema(facets: Sequence[str]) -> pa.Schema:
    fields = [pa.field("row", pa.int64()), pa.field("doc_id", pa.string())]
    for facet in facets:
        fields += [pa.field(f"{facet}_id", pa.int32()), pa.field(f"{facet}_prob", pa.float32())]
    return pa.schema(fields)


def classifier_dtype(precision: str, device: str):
    """`auto`: bf16 where a GPU runs the classifier, fp32 on a CPU (where bf16 is slow, not cheap)."""
    import torch

    if precision == "auto":
        precision = "bf16" if str(device).startswith("cuda") else "fp32"
    return {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]


def load_classifier(
    model_dir: str, *, trust_remote_code: bool = True, device: str = "cpu", precision: str = "fp32"
) -> tuple[Any, Any]:
    """Load a 24-class WebOrganizer classifier and its tokenizer from a local directory."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if not model_dir or not os.path.isdir(model_dir):
        raise CapatlasError(f"classifier model directory {model_dir!r} does not exist")
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True, trust_remote_code=trust_remote_code)
        model = AutoModelForSequenceClassification.from_pretrained(
            model_dir,
            local_files_only=True,
            trust_remote_code=trust_remote_code,
            dtype=classifier_dtype(precision, device),
        )
    except (OSError, ValueError, KeyError) as exc:
        raise CapatlasError(f"cannot load the classifier from {model_dir}: {exc}") from None
    num_labels = getattr(model.config, "num_labels", None)
    if num_labels != N_CLASSES:
        raise CapatlasError(
            f"classifier {model_dir} has {num_labels} labels; a WebOrganizer topic or format "
            f"classifier has {N_CLASSES}"
        )
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise CapatlasError(f"the tokenizer of classifier {model_dir} has no pad or eos token to batch with")
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device)
    model.eval()
    return model, tokenizer


def _forward_keys(model: Any) -> set[str] | None:
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return set(params)


def classify_texts(
    model: Any, tokenizer: Any, texts: Sequence[str], batch_size: int, max_length: int
) -> tuple[np.ndarray, np.ndarray]:
    """Argmax class id and its softmax probability for each text, in input order."""
    import torch

    n = len(texts)
    ids = np.zeros(n, dtype=np.int32)
    probs = np.zeros(n, dtype=np.float32)
    if n == 0:
        return ids, probs
    cap = max_length * CHARS_PER_TOKEN_CAP
    # Longest first so each batch pads to similar lengths.
    order = sorted(range(n), key=lambda i: -min(len(texts[i]), cap))
    device = next(model.parameters()).device
    accepted = _forward_keys(model)
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            index = order[start : start + batch_size]
            batch = [texts[i][:cap] for i in index]
            encoded = tokenizer(batch, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
            inputs = {k: v.to(device) for k, v in encoded.items() if accepted is None or k in accepted}
            logits = model(**inputs).logits.float()
            p = torch.softmax(logits, dim=-1)
            best_p, best = p.max(dim=-1)
            ids[index] = best.cpu().numpy()
            probs[index] = best_p.cpu().numpy()
    return ids, probs


def classifier_input(template: str, rec: CorpusRecord) -> str:
    url = get_field(rec.record, "metadata.url")
    if url is None:
        url = get_field(rec.record, "url")
    # str.replace rather than str.format: a template may hold other braces.
    return template.replace("{url}", "" if url is None else str(url)).replace("{text}", rec.text)


def _chunks(records: Iterator[CorpusRecord], size: int) -> Iterator[list[CorpusRecord]]:
    chunk: list[CorpusRecord] = []
    for rec in records:
        chunk.append(rec)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def label_file(config: dict, corpus_file: str, out: str | os.PathLike, *, device: str | None = None) -> int:
    """Classify every record of `corpus_file`; write the labels parquet atomically. Returns the record count."""
    from tqdm import tqdm

    corpus = config["corpus"]
    facets = [name for name in ("topic", "format") if corpus["labels"][name]["source"] == "classifier"]
    if not facets:
        raise CapatlasError("no facet has source 'classifier' (corpus.labels.topic/format.source); nothing to label")
    settings = corpus["classifier"]
    device = resolve_device(device or settings["device"], key="corpus.classifier.device")
    models = {}
    for facet in facets:
        model_dir = corpus["labels"][facet]["model"]
        models[facet] = load_classifier(
            model_dir, trust_remote_code=settings["trust_remote_code"], device=device, precision=settings["precision"]
        )
        dtype = str(next(models[facet][0].parameters()).dtype).removeprefix("torch.")
        log.info("loaded %s classifier from %s on %s (%s)", facet, model_dir, device, dtype)

    rows: list[np.ndarray] = []
    doc_ids: list[str] = []
    results: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {f: [] for f in facets}
    records = iter_records(corpus_file, id_field=corpus["id_field"], text_field=corpus["text_field"])
    progress = tqdm(desc=f"labels {os.path.basename(corpus_file)}", unit="doc", file=sys.stderr, mininterval=5)
    for chunk in _chunks(records, settings["batch_size"] * 16):
        texts = [classifier_input(settings["input_template"], rec) for rec in chunk]
        for facet in facets:
            model, tokenizer = models[facet]
            results[facet].append(
                classify_texts(model, tokenizer, texts, settings["batch_size"], settings["max_length"])
            )
        rows.append(np.fromiter((rec.row for rec in chunk), dtype=np.int64, count=len(chunk)))
        doc_ids.extend(rec.doc_id for rec in chunk)
        progress.update(len(chunk))
    progress.close()

    schema = labels_schema(facets)
    columns: dict[str, Any] = {
        "row": np.concatenate(rows) if rows else np.zeros(0, np.int64),
        "doc_id": doc_ids,
    }
    for facet in facets:
        parts = results[facet]
        columns[f"{facet}_id"] = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int32)
        columns[f"{facet}_prob"] = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.float32)
    table = pa.table([pa.array(columns[f.name], type=f.type) for f in schema], schema=schema)
    write_parquet(table, out)
    for facet in facets:
        counts = np.bincount(columns[f"{facet}_id"], minlength=N_CLASSES)
        top = np.argsort(-counts)[:3]
        log.info(
            "%s: most frequent %s labels %s",
            corpus_file,
            facet,
            ", ".join(f"{FACETS[facet].slug(int(i))}={int(counts[i])}" for i in top if counts[i]),
        )
    log.info("wrote %d labels to %s", len(doc_ids), out)
    return len(doc_ids)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--file", required=True, help="one corpus file (.jsonl, .jsonl.gz, .jsonl.zst, .parquet)")
    parser.add_argument("--out", required=True, help="labels parquet to write (labels/<file-key>.parquet)")
    parser.add_argument("--device", default=None, help="override corpus.classifier.device (auto, cpu, cuda, cuda:1)")


def run(args: argparse.Namespace, config: dict | None) -> None:
    if not os.path.isfile(args.file):
        raise CapatlasError(f"corpus file {args.file} does not exist")
    label_file(config, args.file, args.out, device=args.device)

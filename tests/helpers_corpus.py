"""Small corpora, tokenizers and configs for the corpus/labels/manifest/shard tests.

Everything is built in temporary directories; nothing is downloaded.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
import zstandard

from capatlas.config import validate_config
from capatlas.taxonomy import FORMAT_SLUGS, N_FORMATS, TOPIC_SLUGS

WORDS = (
    "the a of and to in is was for on that with as by at from it this be are an or not his her they "
    "river music court market engine prayer recipe garden planet law vote team train hotel poem code "
    "chip fashion health history game bank film school factory novel church science software sport travel"
).split()


# --------------------------------------------------------------------------- writers


def _lines(records) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def write_records(path: str | Path, records: list[dict], *, frames: int = 1) -> Path:
    """Write records in the format the suffix names (.jsonl, .json, .jsonl.gz, .jsonl.zst, .parquet)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    name = path.name
    if name.endswith(".jsonl.zst"):
        compressor = zstandard.ZstdCompressor()
        frames = max(1, min(frames, len(records) or 1))
        step = -(-len(records) // frames) if records else 1
        # Several independent frames, as concatenated shards produce.
        data = b"".join(
            compressor.compress(_lines(records[i : i + step])) for i in range(0, max(len(records), 1), step)
        )
        path.write_bytes(data)
    elif name.endswith(".jsonl.gz"):
        with gzip.open(path, "wb") as handle:
            handle.write(_lines(records))
    elif name.endswith(".jsonl") or name.endswith(".json"):
        path.write_bytes(_lines(records))
    elif name.endswith(".parquet"):
        pq.write_table(pa.Table.from_pylist(records), path)
    else:
        raise ValueError(path)
    return path


# --------------------------------------------------------------------------- tokenizer


def build_tokenizer(directory: str | Path) -> Path:
    """A WordLevel tokenizer: one token per whitespace/punctuation-separated word."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    directory = Path(directory)
    vocab = {"[UNK]": 0, "[PAD]": 1, "[CLS]": 2, "[SEP]": 3}
    for word in WORDS + [f"w{i}" for i in range(200)]:
        vocab.setdefault(word, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]"
    )
    fast.save_pretrained(directory)
    return directory


def build_classifier(directory, num_labels=24):
    """A randomly initialised 24-class BERT with the word-level tokenizer: a stand-in format classifier."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    tokenizer_dir = build_tokenizer(directory)
    from transformers import AutoTokenizer

    vocab_size = len(AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        num_labels=num_labels,
        pad_token_id=1,
    )
    model = BertForSequenceClassification(config)
    with torch.no_grad():
        # Larger head weights so the random model spreads its predictions over classes.
        model.classifier.weight.normal_(0, 2.0)
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    return build_tokenizer(tmp_path_factory.mktemp("tokenizer"))


# --------------------------------------------------------------------------- corpora


def text_of(n_words: int, rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


def make_records(
    n: int,
    *,
    seed: int = 0,
    prefix: str = "doc",
    topics: int = 24,
    formats: int = 24,
    min_words: int = 4,
    max_words: int = 40,
) -> list[dict]:
    """Records with id, text and WebOrganizer labels under metadata.weborganizer (slugs)."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        t = rng.randrange(topics)
        f = rng.randrange(formats)
        records.append(
            {
                "id": f"{prefix}-{i:05d}",
                "text": text_of(rng.randint(min_words, max_words), rng) + f" w{i % 200}",
                "metadata": {
                    "url": f"https://example.org/{prefix}/{i}",
                    "weborganizer": {"topic": TOPIC_SLUGS[t], "format": FORMAT_SLUGS[f]},
                },
            }
        )
    return records


def split_records(records: list[dict], sizes: list[int]) -> list[list[dict]]:
    out, start = [], 0
    for size in sizes:
        out.append(records[start : start + size])
        start += size
    assert start == len(records)
    return out


FIELD_LABELS = {
    "topic": {"source": "field", "field": "metadata.weborganizer.topic"},
    "format": {"source": "field", "field": "metadata.weborganizer.format"},
}


def make_config(tokenizer: str | Path, paths: list[str] | None = None, **sections) -> dict:
    """A validated non-demo config; `sections` are merged one level deep."""
    raw: dict = {
        "seed": 7,
        "corpus": {"paths": paths or ["unused/*.jsonl"], "labels": FIELD_LABELS},
        "models": {"document": {"path": str(tokenizer)}},
        "manifest": {"allocation": "quota", "docs_per_bin": 3, "min_tokens": 0, "threads": 1},
        "shards": {"count": 3},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return validate_config(raw)


def write_config(path: str | Path, config: dict) -> Path:
    path = Path(path)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# A stand-in for WebOrganizer's format classifier, for lazy labels (tests and bench).


def skewed_format(text: str, doc_id: str = "") -> int:
    """A deterministic stand-in classifier with a skewed label distribution (format 0 half the time).

    Like a URL-aware model it may label copies of one text differently: copies with ids
    starting 'copy-' get the next format."""
    u = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") / 2**32
    return (min(N_FORMATS - 1, int(N_FORMATS * u**3)) + doc_id.startswith("copy-")) % N_FORMATS


class FakeClassifier:
    def __init__(self):
        self.n_classified = 0

    def classify(self, records):
        self.n_classified += len(records)
        return {"format": np.array([skewed_format(r.text, r.doc_id) for r in records], dtype=np.int32)}

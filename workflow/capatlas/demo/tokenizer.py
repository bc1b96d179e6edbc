"""`capatlas demo-tokenizer`: the demo model's byte-level BPE tokenizer, trained on the demo world's corpus.

A stage of its own so that everything that only needs to count or cut
tokens (the manifest, the shards, the benchmark queries) runs while the
model trains. The demo model is trained with this tokenizer and carries a
byte-for-byte copy of its files, so a model directory stays a complete
Hugging Face model.

Output directory (written atomically)::

    tokenizer.json, tokenizer_config.json, ...   the tokenizer (AutoTokenizer loads it offline)
    provenance.json   stage, identity (vocab_size, the corpus files' sha256), each file's sha256
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from capatlas.artifacts.provenance import PROVENANCE_FILE, check_identity, read_provenance
from capatlas.command import Command
from capatlas.demo.world import corpus_files, read_corpus
from capatlas.errors import CapatlasError
from capatlas.fileio import atomic_path, file_sha256, write_json

log = logging.getLogger(__name__)

COMMAND = Command(config_help="capatlas config YAML (uses key demo.model.vocab_size)")

STAGE = "demo-tokenizer"
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"


def train_tokenizer(texts: Sequence[str], vocab_size: int):
    """Byte-level BPE on the corpus, wrapped so AutoTokenizer loads it offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=1 << 30,
    )


def identity(config: dict, world_dir: Path) -> dict:
    """What the tokenizer is made from: the vocabulary size and the corpus, file by file."""
    return {
        "vocab_size": int(config["demo"]["model"]["vocab_size"]),
        "corpus": {path.name: file_sha256(path) for path in corpus_files(world_dir)},
    }


def write_demo_tokenizer(config: dict, world_dir: Path, out_dir: Path) -> dict:
    """Train the tokenizer on `world_dir`'s corpus and write it with its provenance; return the provenance."""
    world_dir = Path(world_dir)
    tokenizer = train_tokenizer(read_corpus(world_dir), config["demo"]["model"]["vocab_size"])
    with atomic_path(out_dir, directory=True) as tmp:
        tokenizer.save_pretrained(tmp)
        provenance = {
            "stage": STAGE,
            "identity": identity(config, world_dir),
            "files": {path.name: file_sha256(path) for path in sorted(tmp.iterdir())},
        }
        write_json(provenance, tmp / PROVENANCE_FILE)
    log.info("demo tokenizer: %d tokens, written to %s", len(tokenizer), out_dir)
    return provenance


def load_demo_tokenizer(tokenizer_dir: Path, config: dict, world_dir: Path):
    """The tokenizer `demo-tokenizer` wrote, after checking it was made from this world and config, intact.

    Returns (tokenizer, its files): the files are what a model directory
    copies to carry its tokenizer.
    """
    from transformers import PreTrainedTokenizerFast

    tokenizer_dir = Path(tokenizer_dir)
    provenance = read_provenance(tokenizer_dir, stage=STAGE, produced_by=STAGE)
    check_identity(identity(config, world_dir), provenance, tokenizer_dir / PROVENANCE_FILE, rerun=STAGE)
    files = provenance.get("files") or {}
    for name, sha256 in sorted(files.items()):
        path = tokenizer_dir / name
        if not path.is_file() or file_sha256(path) != sha256:
            raise CapatlasError(f"{path} is missing or not the file `capatlas {STAGE}` wrote; rerun it")
    if not files:
        raise CapatlasError(f"{tokenizer_dir / PROVENANCE_FILE} lists no tokenizer files; rerun `capatlas {STAGE}`")
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(tokenizer_dir))
    return tokenizer, [tokenizer_dir / name for name in sorted(files)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--world", required=True, help="demo world directory (capatlas demo-world --out)")
    parser.add_argument("--out", required=True, help="directory to write the tokenizer into (replaced as a whole)")


def run(args: argparse.Namespace, config: dict | None) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    write_demo_tokenizer(config, Path(args.world), Path(args.out))

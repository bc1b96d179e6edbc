"""Stand-in models shared by the tests and the benches: a word-level tokenizer and a random Olmo3ForCausalLM.

Written as one Hugging Face directory, as the pipeline loads a real model.
bench/ imports this module too (bench/_common.py puts tests/ on sys.path),
so the tests' and the benches' models are built one way.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

SPECIAL_TOKENS = {"[PAD]": 0, "[UNK]": 1, "[BOS]": 2, "[EOS]": 3}


def write_word_level_model(
    directory: Path,
    words: Iterable[str],
    *,
    hidden: int,
    intermediate: int,
    layers: int,
    heads: int,
    max_length: int,
    sliding_window: int | None = None,
    seed: int = 0,
):
    """A whitespace word-level tokenizer over `words` and a random Olmo3 model in `directory`; returns the model."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import Olmo3Config, Olmo3ForCausalLM, PreTrainedTokenizerFast

    vocab = dict(SPECIAL_TOKENS)
    for word in words:
        vocab.setdefault(word, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        bos_token="[BOS]",
        eos_token="[EOS]",
        model_max_length=max_length,
    ).save_pretrained(directory)
    torch.manual_seed(seed)
    config = Olmo3Config(
        vocab_size=len(vocab),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=max_length,
        sliding_window=sliding_window or max_length,
        pad_token_id=SPECIAL_TOKENS["[PAD]"],
        bos_token_id=SPECIAL_TOKENS["[BOS]"],
        eos_token_id=SPECIAL_TOKENS["[EOS]"],
    )
    model = Olmo3ForCausalLM(config)
    model.save_pretrained(directory)
    return model

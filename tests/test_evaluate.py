"""Multiple-choice evaluation: log-likelihoods and metrics match hand computation on a tiny model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from capatlas.benchmarks import evaluate
from capatlas.benchmarks.items import load_all_items, render_items
from capatlas.cli import main as cli_main
from capatlas.errors import CapatlasError
from helpers_unlearning import make_config, tiny_model_dir, write_benchmarks

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model", seed=1)


@pytest.fixture(scope="module")
def loaded(model_dir):
    return evaluate.load_model(str(model_dir)), evaluate.load_tokenizer(str(model_dir))


def by_hand(model, tokenizer, context: str, continuation: str, prefix: int | None) -> float:
    """One unpadded forward pass over the tokens of context + continuation, summed over the continuation.

    As lm-evaluation-harness: trailing context spaces belong to the continuation.
    """
    stripped = context.rstrip(" ")
    context, continuation = stripped, context[len(stripped) :] + continuation
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    n_context = len(tokenizer(context, add_special_tokens=False)["input_ids"])
    ids = ([prefix] if prefix is not None else []) + whole
    start = n_context + (prefix is not None)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    logprobs = torch.log_softmax(logits, dim=-1)
    return sum(float(logprobs[pos - 1, ids[pos]]) for pos in range(start, len(ids)))


def test_batched_loglikelihoods_equal_unpadded_forward_passes(loaded):
    model, tokenizer = loaded
    prefix = evaluate.prefix_id(tokenizer, "eos")
    pairs = [
        ("Question: the cat sat\nAnswer:", " on a mat"),
        ("Question: dogs ran far away from red boxes and blue hats\nAnswer:", " owls"),
        ("the", " cat"),
        ("Question: every answer is here\nAnswer: ", "question choice"),  # trailing space moves over
    ]
    requests = [evaluate.encode_pair(tokenizer, c, x, prefix) for c, x in pairs]
    got = evaluate.loglikelihoods(model, requests, batch_size=3)
    for (context, continuation), value in zip(pairs, got):
        assert value == pytest.approx(by_hand(model, tokenizer, context, continuation, prefix), abs=1e-4)
    without = evaluate.loglikelihoods(
        model, [evaluate.encode_pair(tokenizer, c, x, None) for c, x in pairs], batch_size=2
    )
    assert without[0] == pytest.approx(by_hand(model, tokenizer, *pairs[0], None), abs=1e-4)
    assert not np.allclose(got, without)  # the prefix token is really there


def test_left_truncation_keeps_the_continuation(loaded):
    model, tokenizer = loaded
    request = evaluate.encode_pair(tokenizer, "the cat sat on a mat while dogs ran far away", " owls", None)
    width = len(request.continuation) + 3
    got = evaluate.loglikelihoods(model, [request], batch_size=1, max_length=width)[0]
    ids = list(request.context + request.continuation)[-width:]
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), dim=-1)
    start = width - len(request.continuation)
    assert got == pytest.approx(sum(float(logprobs[p - 1, ids[p]]) for p in range(start, width)), abs=1e-4)


def test_metrics_follow_lm_eval_definitions():
    # item 1: raw favours choice 1, per char the long gold choice 0; item 2: both pick gold 1;
    # item 3: a tie between choices 0 and 1 goes to 0, not to gold 1.
    scores = [[-4.0, -3.0], [-9.0, -1.0], [-2.0, -2.0, -5.0]]
    chars = [[10, 2], [3, 3], [4, 4, 4]]
    golds = [0, 1, 1]
    m = evaluate.mc_metrics(scores, golds, chars)
    assert m["acc"] == pytest.approx(1 / 3)  # ties go to the first choice, as np.argmax
    assert m["acc_norm"] == pytest.approx(2 / 3)
    assert m["logprob"] == pytest.approx((-4.0 - 1.0 - 2.0) / 3)
    assert m["logprob_per_char"] == pytest.approx((-0.4 - 1 / 3 - 0.5) / 3)
    assert m["chance"] == pytest.approx((0.5 + 0.5 + 1 / 3) / 3)
    assert evaluate.choice_chars(" Paris") == 5 and evaluate.choice_chars(" A") == 1


def test_evaluate_model_matches_hand_scores_on_rendered_benchmarks(tmp_path, model_dir, loaded):
    model, tokenizer = loaded
    config = make_config(write_benchmarks(tmp_path / "bench"))
    result = evaluate.evaluate_model(config, str(model_dir))
    prefix = evaluate.prefix_id(tokenizer, "eos")
    for bench in config["benchmarks"]:
        items = load_all_items(bench)
        rendered = render_items(items, bench, seed=config["seed"])
        acc = logprob = 0.0
        for shown in rendered:
            lls = [by_hand(model, tokenizer, shown.prompt, c, prefix) for c in shown.continuations]
            acc += int(np.argmax(lls) == shown.gold)
            logprob += lls[shown.gold]
        got = result["benchmarks"][bench["name"]]
        assert got["n_items"] == len(items)
        assert got["acc"] == pytest.approx(acc / len(items))
        assert got["logprob"] == pytest.approx(logprob / len(items), abs=1e-4)
        assert got["prompt_format"] == bench["prompt_format"]


def test_adapter_is_applied_and_a_missing_one_is_named(tmp_path, model_dir):
    from peft import LoraConfig, get_peft_model

    config = make_config(write_benchmarks(tmp_path / "bench", names=("bench_a",)))
    base = evaluate.evaluate_model(config, str(model_dir))["benchmarks"]["bench_a"]
    peft_model = get_peft_model(
        evaluate.load_model(str(model_dir)), LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    peft_model.save_pretrained(tmp_path / "adapter")
    adapted = evaluate.evaluate_model(config, str(model_dir), adapter=str(tmp_path / "adapter"))
    assert adapted["adapter"] == str(tmp_path / "adapter")
    assert adapted["benchmarks"]["bench_a"]["logprob"] != pytest.approx(base["logprob"], abs=1e-6)
    with pytest.raises(CapatlasError, match="nowhere"):
        evaluate.evaluate_model(config, str(model_dir), adapter=str(tmp_path / "nowhere"))


def test_cli_writes_eval_json_and_rejects_unknown_benchmark(tmp_path, model_dir):
    import yaml

    config = make_config(write_benchmarks(tmp_path / "bench"))
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    out = tmp_path / "eval" / "base.json"
    assert cli_main(["evaluate", "--config", str(config_path), "--model", str(model_dir), "--out", str(out)]) == 0
    written = json.loads(out.read_text())
    assert set(written["benchmarks"]) == {"bench_a", "bench_b"}
    assert {"acc", "acc_norm", "logprob", "n_items"} <= set(written["benchmarks"]["bench_a"])
    code = cli_main(
        ["evaluate", "--config", str(config_path), "--model", str(model_dir), "--benchmark", "nope", "--out", str(out)]
    )
    assert code == 2

"""The demo model: trains reproducibly, loads offline, feeds Bergson, learns the planted structure."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from capatlas.demo import model as demo_model
from capatlas.demo import world as demo_world
from capatlas.cli import main as cli_main
from capatlas.config import load_config
from capatlas.errors import CapatlasError

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG = REPO_ROOT / "config" / "config.yaml"

# A few steps of a very small model: enough to check files and reproducibility.
TINY = {
    "seed": 5,
    "demo": {
        "docs_per_bin": 1,
        "small_bin_fraction": 0.0,
        "items_per_benchmark": 8,
        "planted_docs_per_bin": 2,
        "model": {
            "vocab_size": 512,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 64,
            "sliding_window": 16,
        },
        "train": {"steps": 6, "batch_size": 4, "seq_len": 64, "lr": 3e-3, "warmup_steps": 2, "threads": 2},
    },
}

def build(tmp: Path, overrides: dict, name: str) -> tuple[dict, Path]:
    config = load_config(CONFIG, overrides)
    world = tmp / f"{name}-world"
    if not world.exists():
        demo_world.build_world(config, world)
    return config, world


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tiny")
    config, world = build(tmp, TINY, "tiny")
    metrics = demo_model.train_demo_model(config, world, tmp / "model-a")
    return config, world, tmp / "model-a", metrics


def test_training_is_deterministic(tiny, tmp_path):
    config, world, first, _ = tiny
    demo_model.train_demo_model(config, world, tmp_path / "model-b")
    a, b = load_file(first / "model.safetensors"), load_file(tmp_path / "model-b" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert (first / "tokenizer.json").read_bytes() == (tmp_path / "model-b" / "tokenizer.json").read_bytes()
    assert (first / "train_log.csv").read_text() == (tmp_path / "model-b" / "train_log.csv").read_text()


def test_model_and_tokenizer_load_offline(tiny):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config, _, out, _ = tiny
    tokenizer = AutoTokenizer.from_pretrained(out, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    assert type(model).__name__ == "Olmo3ForCausalLM"
    assert set(model.config.layer_types) == {"sliding_attention", "full_attention"}
    assert model.config.vocab_size == len(tokenizer) <= config["demo"]["model"]["vocab_size"]
    assert model.config.eos_token_id == tokenizer.eos_token_id == tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert model.config.pad_token_id == tokenizer.pad_token_id != tokenizer.eos_token_id
    assert model.config.sliding_window == config["demo"]["model"]["sliding_window"]
    assert not getattr(tokenizer, "chat_template", None)
    ids = tokenizer("Question: What is the unit of heat?\nAnswer:", return_tensors="pt").input_ids
    assert tokenizer.decode(ids[0]) == "Question: What is the unit of heat?\nAnswer:"
    with torch.no_grad():
        assert model(input_ids=ids).logits.shape == (1, ids.shape[1], len(tokenizer))


def test_outputs_and_train_log(tiny):
    config, _, out, metrics = tiny
    for name in ("config.json", "model.safetensors", "tokenizer.json", "optimizer.pt", "train_summary.json"):
        assert (out / name).is_file(), name
    with open(out / "train_log.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == list(range(config["demo"]["train"]["steps"]))
    assert all(float(r["loss"]) > 0 and float(r["lr"]) > 0 for r in rows)
    accuracy = json.loads((out / "demo_accuracy.json").read_text())
    assert set(accuracy) == {"socialiqa", "mmlu_social_sciences", "arc_challenge", "mmlu_stem"}
    for scores in accuracy.values():
        assert set(scores) == {"acc", "acc_norm", "n_items", "chance"}
        assert scores["n_items"] == config["demo"]["items_per_benchmark"]
    assert accuracy["socialiqa"]["chance"] == pytest.approx(1 / 3)
    assert metrics["accuracy"] == accuracy and metrics["loss"]["last"] > 0
    assert not list(out.parent.glob(".model-a.tmp-*"))


def test_optimizer_state_feeds_bergson(tiny):
    from bergson.gradients import AdamNormalizer
    from bergson.utils.load_from_optimizer import load_from_optimizer
    from transformers import AutoModelForCausalLM

    _, _, out, _ = tiny
    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    state = torch.load(out / "optimizer.pt", weights_only=False)
    names = [name for name, _ in model.named_parameters()]
    assert len(state["param_groups"]) == 1
    assert sorted(state["state"]) == list(range(len(names)))
    for index, entry in state["state"].items():
        assert entry["param_name"] == names[index]
        assert {"step", "exp_avg", "exp_avg_sq"} <= set(entry)

    normalizers = load_from_optimizer(model, str(out))
    linear = {
        name for name, module in model.base_model.named_modules() if isinstance(module, torch.nn.Linear)
    }
    assert linear and linear <= set(normalizers)
    assert "layers.0.self_attn.q_proj" in normalizers
    for name in linear:
        module = model.base_model.get_submodule(name)
        assert isinstance(normalizers[name], AdamNormalizer)
        assert normalizers[name].weight_avg_sq.shape == module.weight.shape


def test_missing_world_is_a_user_error(tmp_path):
    config = load_config(CONFIG, TINY)
    (tmp_path / "world").mkdir()
    with pytest.raises(CapatlasError, match="corpus/"):
        demo_model.read_corpus(tmp_path / "world")
    with pytest.raises(CapatlasError, match="ground_truth.json"):
        demo_model.train_demo_model(config, tmp_path / "world", tmp_path / "model")
    assert not (tmp_path / "model").exists()


def test_cli_trains_the_model(tiny, tmp_path):
    _, world, _, _ = tiny
    raw = yaml.safe_load(CONFIG.read_text())
    raw["seed"] = TINY["seed"]
    raw["demo"] = {**raw.get("demo", {}), **TINY["demo"]}
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    args = ["demo-model", "--config", str(config_path), "--world", str(world), "--out", str(tmp_path / "m")]
    assert cli_main(args) == 0
    assert (tmp_path / "m" / "model.safetensors").is_file()
    missing = ["demo-model", "--config", str(config_path), "--world", str(tmp_path / "nope"), "--out", str(tmp_path / "n")]
    assert cli_main(missing) == 2
    assert not (tmp_path / "n").exists()

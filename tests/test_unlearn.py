"""Unlearning methods: each one's loss and update direction on a tiny model; LoRA vs full; stopping; errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

from capatlas.benchmarks import evaluate
from capatlas.plan import PlannedRun
from capatlas.unlearning import forget_sets, unlearn
from capatlas.errors import CapatlasError
from helpers_unlearning import make_config, sentences, tiny_model_dir, write_benchmarks

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model", seed=2)


@pytest.fixture
def model(model_dir):
    return evaluate.load_model(str(model_dir)).train()


@pytest.fixture(scope="module")
def batches(model_dir):
    tokenizer = evaluate.load_tokenizer(str(model_dir))
    forget = unlearn.chunk_documents(tokenizer, sentences(4, seed=10), 24, tokenizer.eos_token_id)
    retain = unlearn.chunk_documents(tokenizer, sentences(4, seed=11), 24, tokenizer.eos_token_id)
    return [unlearn.collate(forget[:2]), unlearn.collate(forget[2:4])], [unlearn.collate(retain[:3])]


def no_dropout(model):
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


def grads_of(model, loss_fn) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss_fn().backward()
    grads = [p.grad.detach().clone() for p in unlearn.trainable(model)]
    model.zero_grad(set_to_none=True)
    return grads


def mean_over(batches, fn):
    return sum(fn(b) for b in batches) / len(batches)


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def test_ga_and_graddiff_directions(model, batches):
    forget, retain = batches
    g_f = grads_of(model, lambda: mean_over(forget, lambda b: model(**b).loss))
    g_r = grads_of(model, lambda: mean_over(retain, lambda b: model(**b).loss))
    result = unlearn.compute_update(model, "ga", forget, retain)
    assert torch.allclose(flat(p.grad for p in unlearn.trainable(model)), -flat(g_f), atol=1e-6)
    assert result.loss == pytest.approx(-result.forget_loss)
    result = unlearn.compute_update(model, "graddiff", forget, retain, retain_weight=0.5)
    expected = -flat(g_f) + 0.5 * flat(g_r)
    assert torch.allclose(flat(p.grad for p in unlearn.trainable(model)), expected, atol=1e-6)
    assert result.loss == pytest.approx(-result.forget_loss + 0.5 * result.retain_loss)


def test_ngdiff_direction_is_the_difference_of_normalised_gradients(model, batches):
    forget, retain = batches
    g_f = flat(grads_of(model, lambda: mean_over(forget, lambda b: model(**b).loss)))
    g_r = flat(grads_of(model, lambda: mean_over(retain, lambda b: model(**b).loss)))
    before = flat(p.detach().clone() for p in unlearn.trainable(model))
    result = unlearn.compute_update(model, "ngdiff", forget, retain)
    direction = g_r / g_r.norm() - g_f / g_f.norm()
    assert torch.allclose(flat(p.grad for p in unlearn.trainable(model)), direction, atol=1e-6)
    assert result.forget_grad_norm == pytest.approx(float(g_f.norm()), rel=1e-5)
    # An SGD step moves the parameters by -lr * direction: up the forget loss, down the retain loss.
    torch.optim.SGD(unlearn.trainable(model), lr=0.1).step()
    after = flat(p.detach() for p in unlearn.trainable(model))
    assert torch.allclose(after - before, -0.1 * direction, atol=1e-6)
    with torch.no_grad():
        assert mean_over(forget, lambda b: model(**b).loss) > result.forget_loss
        assert mean_over(retain, lambda b: model(**b).loss) < result.retain_loss


def test_npo_loss_and_its_gradient_at_the_reference(model, batches):
    forget, _ = batches
    logp = torch.tensor([-10.0, -3.0])
    ref = torch.tensor([-8.0, -3.0])
    beta = 0.5
    by_hand = -(2 / beta) * np.mean([np.log(1 / (1 + np.exp(beta * (lp - r)))) for lp, r in zip(logp.tolist(), ref.tolist())])
    assert float(unlearn.npo_loss(logp, ref, beta)) == pytest.approx(by_hand)
    with torch.no_grad():
        refs = [unlearn.sequence_logprobs(model, b) for b in forget]
    # At the reference, NPO's gradient is that of the mean sequence log-likelihood: it pushes the likelihood down.
    g_logp = grads_of(model, lambda: mean_over(forget, lambda b: unlearn.sequence_logprobs(model, b).mean()))
    unlearn.compute_update(model, "npo", forget, [], retain_weight=0.0, npo_beta=beta, ref_logps=refs)
    assert torch.allclose(flat(p.grad for p in unlearn.trainable(model)), flat(g_logp), atol=1e-5)
    # The summed log-likelihood is the negative of the per-token loss times the number of predicted tokens.
    b = forget[0]
    n_predicted = (b["labels"][:, 1:] != -100).sum()
    with torch.no_grad():
        assert float(unlearn.sequence_logprobs(model, b).sum()) == pytest.approx(
            -float(model(**b).loss) * int(n_predicted), rel=1e-4
        )


def test_npo_takes_policy_and_reference_in_the_same_mode(tmp_path, model_dir, monkeypatch):
    # With LoRA dropout, a policy taken in train mode against an eval-mode reference would compare
    # dropped-out log-likelihoods with whole ones. Every NPO log-likelihood is taken in one mode.
    sec = section(tmp_path, method="npo", npo_beta=0.5, retain_weight=0.0, train={"max_steps": 2},
                  lora={"enabled": True, "r": 2, "alpha": 4, "dropout": 0.5})  # fmt: skip
    modes = []
    original = unlearn.sequence_logprobs

    def recording(model, batch):
        modes.append(model.training)
        return original(model, batch)

    monkeypatch.setattr(unlearn, "sequence_logprobs", recording)
    torch.manual_seed(0)
    model = unlearn.prepare_model(evaluate.load_model(str(model_dir)), sec)
    rows = unlearn.train_unlearning(model, run_data(model_dir), sec, seed=0).rows
    assert len(modes) > 3 and set(modes) == {False}
    # At the first step the policy is the reference: NPO's loss is (2 / beta) log 2.
    assert rows[0]["loss"] == pytest.approx((2 / 0.5) * np.log(2), rel=1e-5)


def test_unknown_method_and_missing_retain_are_errors(model, batches):
    forget, _ = batches
    with pytest.raises(CapatlasError, match="unknown unlearning.method"):
        unlearn.compute_update(model, "ascent", forget, [])
    with pytest.raises(CapatlasError, match="needs retain data"):
        unlearn.compute_update(model, "ngdiff", forget, [])


def run_data(model_dir, n_forget=3):
    tokenizer = evaluate.load_tokenizer(str(model_dir))
    forget = unlearn.chunk_documents(tokenizer, sentences(n_forget, seed=20), 24, tokenizer.eos_token_id)
    retain = unlearn.chunk_documents(tokenizer, sentences(6, seed=21), 24, tokenizer.eos_token_id)
    return unlearn.RunData(forget, [retain], n_forget, 0)


def section(tmp_path, **over):
    return make_config(write_benchmarks(tmp_path / "b", names=("bench_a",)), **over)["unlearning"]


def test_lora_trains_only_adapters_and_full_trains_everything(tmp_path, model_dir):
    data = run_data(model_dir)
    lora_section = section(tmp_path, lora={"enabled": True, "r": 2, "alpha": 4, "dropout": 0.0})
    base = evaluate.load_model(str(model_dir))
    original = {k: v.clone() for k, v in base.state_dict().items()}
    lora = unlearn.prepare_model(base, lora_section)
    names = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    assert all(any(m in n for m in ("q_proj", "k_proj", "v_proj", "o_proj")) for n in names)
    unlearn.train_unlearning(lora, data, lora_section, seed=0)
    merged = {k.replace("base_model.model.", "").replace(".base_layer", ""): v for k, v in lora.state_dict().items()}
    assert all(torch.equal(original[k], merged[k]) for k in original)  # the base weights never move
    full_section = section(tmp_path, lora={"enabled": False})
    full = unlearn.prepare_model(evaluate.load_model(str(model_dir)), full_section)
    unlearn.train_unlearning(full, data, full_section, seed=0)
    changed = [k for k, v in full.state_dict().items() if not torch.equal(v, original[k])]
    assert len(changed) == len(original)


def test_training_is_deterministic_and_raises_the_forget_loss(tmp_path, model_dir):
    data = run_data(model_dir)
    sec = section(tmp_path, method="ngdiff", train={"max_steps": 6, "lr": 3e-2})

    def once(seed):
        torch.manual_seed(seed)
        model = unlearn.prepare_model(evaluate.load_model(str(model_dir)), sec)
        outcome = unlearn.train_unlearning(model, data, sec, seed=seed)
        return [p.detach().clone() for p in unlearn.trainable(model)], outcome, model

    first, outcome, model = once(0)
    second, _, _ = once(0)
    third, _, _ = once(1)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not all(torch.equal(a, b) for a, b in zip(first, third))
    assert outcome.steps == 6 and outcome.stop_reason == "max_steps"
    with torch.no_grad():
        start_model = unlearn.prepare_model(evaluate.load_model(str(model_dir)), sec).eval()
        chunks = unlearn.collate(data.forget_chunks)
        assert model(**chunks).loss > start_model(**chunks).loss


def test_guard_stops_and_keeps_the_last_passing_parameters(tmp_path, model_dir):
    data = run_data(model_dir)
    sec = section(tmp_path, train={"max_steps": 10}, stop={"guard_every": 2})
    torch.manual_seed(0)
    model = unlearn.prepare_model(evaluate.load_model(str(model_dir)), sec)
    checks = []

    def guard(m):
        checks.append([p.detach().clone() for p in unlearn.trainable(m)])
        return 0.5, len(checks) < 2  # the second check fails

    outcome = unlearn.train_unlearning(model, data, sec, seed=0, guard=guard)
    assert outcome.stop_reason == "guard" and outcome.steps == 4
    assert all(torch.equal(p, q) for p, q in zip(unlearn.trainable(model), checks[0]))
    sec = section(tmp_path, train={"max_steps": 10, "lr": 0.1}, stop={"forget_loss_threshold": 0.0})
    model = unlearn.prepare_model(evaluate.load_model(str(model_dir)), sec)
    outcome = unlearn.train_unlearning(model, data, sec, seed=0)
    assert outcome.stop_reason == "forget_loss" and outcome.steps == 1


def test_learning_rate_fit_is_the_parabolas_minimiser_clamped():
    # L(lr) = 3 (lr - 2e-4)^2 + 1 sampled at 1e-4 -/+ 1e-5: the parabola is L itself, its minimiser 2e-4.
    def loss(lr):
        return 3 * (lr - 2e-4) ** 2 + 1

    lr, delta = 1e-4, 1e-5
    losses = [loss(lr - delta), loss(lr), loss(lr + delta)]
    assert unlearn.fit_learning_rate(lr, delta, losses, 1e-7, 1e-3) == pytest.approx(2e-4, rel=1e-6)
    assert unlearn.fit_learning_rate(lr, delta, losses, 1e-7, 1.5e-4) == 1.5e-4  # clamped above
    assert unlearn.fit_learning_rate(lr, delta, [loss(x) + 5e-3 * x for x in (lr - delta, lr, lr + delta)], 1e-7, 1e-3) == (
        pytest.approx(1e-7)  # minimiser 2e-4 - 5e-3 / 6 < 0: clamped below
    )
    concave = [-v for v in losses]
    assert unlearn.fit_learning_rate(lr, delta, concave, 1e-7, 1e-3) == lr  # no minimiser: the lr stays
    assert unlearn.fit_learning_rate(lr, delta, [1.0, 1.0, 1.0], 1e-7, 1e-3) == lr


def test_learning_rate_probe_undoes_its_trial_steps():
    # One weight w = 1, loss (w - 3)^2, gradient -4: an SGD step of size lr gives loss (4 lr - 2)^2,
    # a parabola in lr with its minimum at lr = 0.5.
    w = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    w.grad = torch.tensor([-4.0], dtype=torch.float64)
    optimizer = torch.optim.SGD([w], lr=0.1, momentum=0.9)
    auto_lr = {"delta": 0.01, "min": 1e-7, "max": 10.0}
    new_lr, losses = unlearn.probe_learning_rate([w], optimizer, lambda: float((w - 3) ** 2), auto_lr)
    assert losses == pytest.approx([(4 * x - 2) ** 2 for x in (0.09, 0.1, 0.11)])
    assert new_lr == pytest.approx(0.5) and optimizer.param_groups[0]["lr"] == pytest.approx(0.5)
    assert float(w) == 1.0 and optimizer.state_dict()["state"] == {}  # parameters and momentum untouched
    optimizer.step()  # the real step then uses the fitted lr: w = 1 + 0.5 * 4 = 3, the minimum
    assert float(w) == pytest.approx(3.0)


def test_forget_perplexity_and_its_shuffled_threshold(model_dir):
    model = evaluate.load_model(str(model_dir))
    data = run_data(model_dir)
    # By hand: every chunk's next-token cross-entropy summed over its tokens, over all tokens.
    nll, count = 0.0, 0
    with torch.no_grad():
        for chunk in data.forget_chunks:
            ids = torch.tensor([chunk])
            logits = model(input_ids=ids).logits[0, :-1].float()
            nll += float(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum"))
            count += len(chunk) - 1
    for batch_size in (1, 2):
        assert unlearn.forget_perplexity(model, data.forget_chunks, batch_size, "cpu") == pytest.approx(
            math.exp(nll / count), rel=1e-5
        )
    shuffled = unlearn.shuffled_chunks(data.forget_chunks, seed=0)
    assert [c[0] for c in shuffled] == [c[0] for c in data.forget_chunks]
    assert [sorted(c) for c in shuffled] == [sorted(c) for c in data.forget_chunks]
    assert shuffled == unlearn.shuffled_chunks(data.forget_chunks, seed=0) != unlearn.shuffled_chunks(data.forget_chunks, 1)


def test_perplexity_stop_and_auto_lr_in_a_run(tmp_path, model_dir):
    data = run_data(model_dir)
    # Threshold 1: any perplexity reaches it, so the run stops at the first check (step 3 of 10).
    sec = section(tmp_path, train={"max_steps": 10}, stop={"perplexity": {"every": 3, "threshold": 1.0}})
    model = unlearn.prepare_model(evaluate.load_model(str(model_dir)), sec)
    outcome = unlearn.train_unlearning(model, data, sec, seed=0)
    assert (outcome.steps, outcome.stop_reason) == (3, "perplexity")
    assert [math.isnan(r["forget_ppl"]) for r in outcome.rows] == [True, True, False]
    # `shuffled`: the base model's perplexity on the shuffled forget set, recorded.
    sec = section(tmp_path, train={"max_steps": 2}, stop={"perplexity": {"every": 1, "threshold": "shuffled"}})
    base = evaluate.load_model(str(model_dir))
    expected = unlearn.forget_perplexity(base, unlearn.shuffled_chunks(data.forget_chunks, 0), 2, "cpu")
    outcome = unlearn.train_unlearning(unlearn.prepare_model(base, sec), data, sec, seed=0)
    assert outcome.perplexity_threshold == pytest.approx(expected)
    # Auto-LR every 2 steps: the lr logged from step 3 on is the fitted one, within its bounds.
    sec = section(tmp_path, train={"max_steps": 4, "lr": 1e-4, "auto_lr": {"enabled": True, "every": 2}})
    model = unlearn.prepare_model(evaluate.load_model(str(model_dir)), sec)
    rows = unlearn.train_unlearning(model, data, sec, seed=0).rows
    assert [r["lr"] for r in rows[:2]] == [1e-4, 1e-4]
    assert rows[2]["lr"] == rows[3]["lr"] and 1e-7 <= rows[2]["lr"] <= 1e-3


def test_retain_set_is_resampled_every_few_steps(tmp_path, model_dir):
    tokenizer = evaluate.load_tokenizer(str(model_dir))
    forget = unlearn.chunk_documents(tokenizer, sentences(3, seed=20), 24, tokenizer.eos_token_id)
    rounds = [unlearn.chunk_documents(tokenizer, sentences(4, seed=50 + r), 24, tokenizer.eos_token_id) for r in range(3)]
    sec = section(tmp_path, train={"max_steps": 7}, retain={"docs_per_unit": 2, "resample_every": 2})
    model = unlearn.prepare_model(evaluate.load_model(str(model_dir)), sec)
    rows = unlearn.train_unlearning(model, unlearn.RunData(forget, rounds, 3, 0), sec, seed=0).rows
    # Round r from step 2r + 1 on; the last round stays once the pool's rounds are used up.
    assert [r["retain_round"] for r in rows] == [0, 0, 1, 1, 2, 2, 2]


def write_run_inputs(tmp_path, texts, seed=0, condition="influence"):
    forget = pd.DataFrame({"doc_id": [f"f{k}" for k in range(len(texts))], "n_tokens": 10, "text": texts})
    run = PlannedRun("bench_a", "top1", condition, seed)
    run_dir = tmp_path / "unlearning" / "bench_a" / "top1" / condition / f"seed{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    # Through the forget sets' own writer, with the metadata forget-sets records.
    forget_set = forget_sets.ForgetSet(run, "literature", forget, int(forget["n_tokens"].sum()), len(forget), "topic")
    forget_sets.write_forget_set(forget_set, pa.Table.from_pandas(forget, preserve_index=False), run_dir / "forget_set.parquet")
    pool = pd.DataFrame(
        {"doc_id": ["r0", "r1", "r2", "f0"], "unit": ["art_and_design", "games", "literature", "literature"],
         "round": 0, "n_tokens": 10, "text": sentences(4, seed=30)}
    )  # fmt: skip
    forget_sets.write_retain_pool(pa.Table.from_pandas(pool), seed, 1, tmp_path / f"retain{seed}.parquet")
    return run_dir


def test_run_writes_adapter_log_and_eval(tmp_path, model_dir):
    # Held-out items: the guard runs on bench_a's guard items, which are never evaluated.
    config = make_config(write_benchmarks(tmp_path / "b"), item_roles={"queries": 0.3, "guard": 0.3},
                         stop={"guard_benchmark": "bench_a", "guard_every": 2, "guard_fraction": 0.0})  # fmt: skip
    run_dir = write_run_inputs(tmp_path, sentences(3, seed=40))
    baseline = evaluate.evaluate_model(config, str(model_dir))
    (tmp_path / "base.json").write_text(json.dumps(baseline))
    [summary] = unlearn.run_unlearning(
        config, str(model_dir), [(run_dir / "forget_set.parquet", run_dir)], [tmp_path / "retain0.parquet"],
        tmp_path / "base.json",
    )  # fmt: skip
    assert (run_dir / "adapter" / "adapter_config.json").is_file()
    log = pd.read_csv(run_dir / "train_log.csv")
    assert list(log["step"]) == [1, 2, 3] and log["guard"].notna().sum() == 1
    written = json.loads((run_dir / "eval.json").read_text())
    assert written == json.loads(json.dumps(summary))
    assert written["run"]["target"] == "bench_a" and set(written["benchmarks"]) == {"bench_a", "bench_b"}
    assert written["benchmarks"]["bench_a"]["n_items"] == 2  # 6 items: 2 queries, 2 guard, 2 evaluated
    # The saved adapter evaluates to what the run reported.
    again = evaluate.evaluate_model(config, str(model_dir), adapter=str(run_dir / "adapter"))
    assert again["benchmarks"]["bench_a"]["logprob"] == pytest.approx(written["benchmarks"]["bench_a"]["logprob"])


def test_runs_sharing_a_job_equal_runs_alone(tmp_path, model_dir):
    """A job's runs each start from the base model, the run's seed and its seed's pool: same bytes as alone.

    With each run's own stop rules (dose independent): under a matched dose a
    control run takes its influence run's steps, so it is never run alone.
    """
    config = make_config(write_benchmarks(tmp_path / "b"), stop={"dose": "independent"})
    influence = write_run_inputs(tmp_path, sentences(3, seed=40))
    random = write_run_inputs(tmp_path, sentences(3, seed=42), condition="random")
    other_seed = write_run_inputs(tmp_path, sentences(3, seed=43), seed=1, condition="random")
    (tmp_path / "base.json").write_text(json.dumps(evaluate.evaluate_model(config, str(model_dir))))
    pools, base = [tmp_path / "retain0.parquet", tmp_path / "retain1.parquet"], tmp_path / "base.json"
    runs = [(d / "forget_set.parquet", d) for d in (influence, random, other_seed)]
    together = unlearn.run_unlearning(config, str(model_dir), runs, pools, base)
    adapters = [(d / "adapter" / "adapter_model.safetensors").read_bytes() for d in (influence, random, other_seed)]
    alone = [unlearn.run_unlearning(config, str(model_dir), [run], pools[::-1], base)[0] for run in reversed(runs)][::-1]
    # The diagnostics need the paired run's forget set, which a run alone does not have.
    for joint, single, adapter, directory in zip(together, alone, adapters, (influence, random, other_seed)):
        kept = {k: v for k, v in joint.items() if k not in ("seconds", "diagnostics")}
        assert kept == {k: v for k, v in single.items() if k not in ("seconds", "diagnostics")}
        assert (directory / "adapter" / "adapter_model.safetensors").read_bytes() == adapter
    assert [s["diagnostics"] is None for s in together] == [False, False, True] and alone[0]["diagnostics"] is None
    influence_diag = together[0]["diagnostics"]
    assert "paired random run" in influence_diag["heldout"]
    # Unlearning raised the forget set's perplexity (lr 1e-2, 3 steps of gradient difference).
    assert influence_diag["after"]["forget_ppl"] > influence_diag["before"]["forget_ppl"]
    assert together[0]["benchmarks"] != together[1]["benchmarks"]  # two different runs, not one twice
    assert [s["run"]["seed"] for s in together] == [0, 0, 1]
    with pytest.raises(CapatlasError, match=r"no retain pool for seed\(s\) \[1\].*given seeds \[0\]"):
        unlearn.run_unlearning(config, str(model_dir), runs, pools[:1], base)
    with pytest.raises(CapatlasError, match=r"two retain pools of seed 0"):
        unlearn.run_unlearning(config, str(model_dir), runs, [pools[0], pools[0]], base)
    pd.read_parquet(pools[1]).to_parquet(tmp_path / "plain.parquet")  # the pool without the seed it was drawn with
    with pytest.raises(CapatlasError, match=r"plain.parquet does not say which seed drew it"):
        unlearn.run_unlearning(config, str(model_dir), runs, [pools[0], tmp_path / "plain.parquet"], base)


def test_a_control_run_takes_exactly_its_influence_runs_steps(tmp_path, model_dir):
    # The influence run's forget-loss rule stops it after one step of at most three.
    config = make_config(write_benchmarks(tmp_path / "b"), stop={"forget_loss_threshold": 0.0},
                         train={"lr": 0.1})  # fmt: skip
    assert config["unlearning"]["stop"]["dose"] == "matched"  # the default
    influence = write_run_inputs(tmp_path, sentences(3, seed=40))
    random = write_run_inputs(tmp_path, sentences(3, seed=42), condition="random")
    (tmp_path / "base.json").write_text(json.dumps(evaluate.evaluate_model(config, str(model_dir))))
    pools, base = [tmp_path / "retain0.parquet"], tmp_path / "base.json"
    # The control listed first still runs second: it needs its partner's step count.
    runs = [(d / "forget_set.parquet", d) for d in (random, influence)]
    control, treated = unlearn.run_unlearning(config, str(model_dir), runs, pools, base)
    assert (treated["steps"], treated["stop_reason"]) == (1, "forget_loss")
    assert (control["steps"], control["stop_reason"], control["dose"]) == (1, "matched_dose", "matched")
    assert len(pd.read_csv(random / "train_log.csv")) == 1
    # A fixed dose overrides the run's own rules both ways: more steps than its forget-loss rule allows.
    data = run_data(model_dir)
    sec = section(tmp_path, train={"max_steps": 10, "lr": 0.1}, stop={"forget_loss_threshold": 0.0})
    model = unlearn.prepare_model(evaluate.load_model(str(model_dir)), sec)
    outcome = unlearn.train_unlearning(model, data, sec, seed=0, guard=lambda m: (0.0, False), fixed_steps=2)
    assert (outcome.steps, outcome.stop_reason) == (2, "matched_dose")
    # A control without its influence run in the job cannot be dosed.
    with pytest.raises(CapatlasError, match=r"the random run of target bench_a, unit top1, seed 0 has a matched dose"):
        unlearn.run_unlearning(config, str(model_dir), runs[:1], pools, base)


def test_membership_and_perplexity_diagnostics_by_hand():
    from capatlas.unlearning import diagnostics

    logprobs = [np.log([0.5, 0.25, 0.125, 0.5, 0.5]), np.log([0.9, 0.8])]
    # 20% of 5 tokens is 1, of 2 tokens 1: each chunk's lowest log-probability.
    np.testing.assert_allclose(diagnostics.min_k_scores(logprobs), [np.log(0.125), np.log(0.8)])
    np.testing.assert_allclose(diagnostics.min_k_scores(logprobs, k=0.5), [np.mean(np.log([0.125, 0.25, 0.5])), np.log(0.8)])
    assert diagnostics.perplexity(logprobs) == pytest.approx(np.exp(-np.mean(np.concatenate(logprobs))))
    forget, heldout = np.array([-3.0, -2.0, -1.0]), np.array([-2.0, 0.0])
    pairs = [(h > f) + 0.5 * (h == f) for h in heldout for f in forget]  # every (held-out, forget) pair
    assert diagnostics.membership_auc(forget, heldout) == pytest.approx(np.mean(pairs))


def test_empty_forget_set_and_missing_inputs_name_the_run(tmp_path, model_dir):
    config = make_config(write_benchmarks(tmp_path / "b", names=("bench_a",)))
    run_dir = write_run_inputs(tmp_path, [])
    (tmp_path / "base.json").write_text(json.dumps({"benchmarks": {}}))
    retain, base = [tmp_path / "retain0.parquet"], tmp_path / "base.json"
    with pytest.raises(CapatlasError, match=r"bench_a/top1/influence/seed0.*is empty"):
        unlearn.run_unlearning(config, str(model_dir), [(run_dir / "forget_set.parquet", run_dir)], retain, base)
    with pytest.raises(CapatlasError, match=r"bench_a/top1/influence/seed0.*does not exist"):
        unlearn.run_unlearning(config, str(model_dir), [(run_dir / "nope.parquet", run_dir)], retain, base)
    write_run_inputs(tmp_path, sentences(2, seed=41))
    with pytest.raises(CapatlasError, match=r"bench_a/top1/influence/seed0.*retain pool"):
        unlearn.run_unlearning(
            config, str(model_dir), [(run_dir / "forget_set.parquet", run_dir)], [tmp_path / "nope.parquet"], base
        )

"""Unlearning summary: gamma, paired differences and every statistic against brute force; missing runs named."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from capatlas.unlearning import summary as us
from capatlas.errors import CapatlasError
from capatlas.plan import planned_runs
from helpers_unlearning import make_config, write_benchmarks

BENCHES = ("bench_a", "bench_b", "bench_c")


def exact_wilcoxon_greater(d: np.ndarray) -> float:
    """P(W+ >= observed) over all 2^n sign assignments (no ties, no zeros)."""
    ranks = pd.Series(np.abs(d)).rank().to_numpy()
    observed = ranks[d > 0].sum()
    count = sum(
        ranks[np.array(signs, dtype=bool)].sum() >= observed - 1e-9
        for signs in itertools.product([0, 1], repeat=len(d))
    )
    return count / 2 ** len(d)


def test_wilcoxon_and_t_match_brute_force():
    d = np.array([0.9, -0.2, 1.7, 0.4, 2.3, -0.65, 1.1])
    assert us.wilcoxon_greater(d) == pytest.approx(exact_wilcoxon_greater(d))
    t = d.mean() / (d.std(ddof=1) / np.sqrt(len(d)))
    from scipy.stats import t as t_dist

    assert us.ttest_greater(d) == pytest.approx(t_dist.sf(t, len(d) - 1))
    assert us.cohens_dz(d) == pytest.approx(d.mean() / d.std(ddof=1))
    assert np.isnan(us.wilcoxon_greater(np.array([1.0]))) and np.isnan(us.ttest_greater(np.array([2.0, 2.0])))


def test_bh_matches_hand_computation_and_skips_nan():
    p = [0.01, 0.04, np.nan, 0.03, 0.5]
    # Valid p sorted: 0.01, 0.03, 0.04, 0.5 (m = 4); p * m / rank = 0.04, 0.06, 0.0533, 0.5;
    # then the running minimum from the largest: 0.04, 0.0533, 0.0533, 0.5.
    expected = {0.01: 0.04, 0.03: 0.16 / 3, 0.04: 0.16 / 3, 0.5: 0.5}
    got = us.bh(p)
    assert np.isnan(got[2])
    for value, adjusted in zip([0.01, 0.04, 0.03, 0.5], got[[0, 1, 3, 4]]):
        assert adjusted == pytest.approx(expected[value])


def test_cluster_bootstrap_agrees_with_a_hand_two_stage_bootstrap():
    rng = np.random.default_rng(3)
    cells = pd.DataFrame(
        # Each unit shifts its three seeds together (sd 1) over seed noise (sd 0.3).
        {"unit_slot": np.repeat([f"top{u}" for u in range(6)], 3),
         "d": 0.5 + np.repeat(rng.normal(0, 1.0, 6), 3) + rng.normal(0, 0.3, 18)}  # fmt: skip
    )
    # The mean: its bootstrap distribution is smooth, so two samplers' quantiles agree closely.
    low, high = us.cluster_bootstrap_ci(cells, np.mean, confidence=0.9, n_resamples=4000, seed=0)
    groups = [g["d"].to_numpy() for _, g in cells.groupby("unit_slot")]
    hand = np.random.default_rng(1)
    means = [
        np.mean(np.concatenate([groups[u][hand.integers(0, 3, 3)] for u in hand.integers(0, 6, 6)]))
        for _ in range(20000)
    ]
    assert low == pytest.approx(np.quantile(means, 0.05), abs=0.05)
    assert high == pytest.approx(np.quantile(means, 0.95), abs=0.05)
    # Wider than resampling the 18 cells as if independent: the units carry shared noise.
    flat = cells["d"].to_numpy()
    naive = np.mean(flat[hand.integers(0, 18, (20000, 18))], axis=1)
    assert high - low > np.quantile(naive, 0.95) - np.quantile(naive, 0.05)
    # One value per unit: the ordinary percentile bootstrap of independent values.
    single = pd.DataFrame({"unit_slot": np.arange(10), "d": [0.5, 1.2, -0.3, 2.0, 0.8, 1.5, 0.1, 0.9, 1.1, -0.2]})
    low, high = us.cluster_bootstrap_ci(single, np.median, confidence=0.9, n_resamples=4000, seed=0)
    d = single["d"].to_numpy()
    plain = np.median(d[hand.integers(0, len(d), (20000, len(d)))], axis=1)
    assert low == pytest.approx(np.quantile(plain, 0.05), abs=0.1)
    assert high == pytest.approx(np.quantile(plain, 0.95), abs=0.1)


def test_unit_level_test_holds_its_level_under_correlated_cells_and_detects_an_effect():
    """Simulated studies (8 units x 3 seeds, within-unit correlation 0.6): the primary test over unit means
    rejects a true null at most 7% of the time at alpha 0.05; the cell-level Wilcoxon, which treats the
    correlated cells as independent, rejects it more often; a real effect is found."""
    rng = np.random.default_rng(2026)
    n_studies, n_units, n_seeds, rho = 600, 8, 3, 0.6

    def study(effect: float) -> pd.DataFrame:
        unit = rng.normal(0.0, np.sqrt(rho), n_units)
        d = effect + np.repeat(unit, n_seeds) + rng.normal(0.0, np.sqrt(1 - rho), n_units * n_seeds)
        return pd.DataFrame({"unit_slot": np.repeat([f"top{u}" for u in range(n_units)], n_seeds), "d": d})

    def rejections(effect: float) -> tuple[float, float]:
        units, cells = 0, 0
        for _ in range(n_studies):
            frame = study(effect)
            units += us.ttest_greater(frame.groupby("unit_slot")["d"].mean().to_numpy()) < 0.05
            cells += us.wilcoxon_greater(frame["d"].to_numpy()) < 0.05
        return units / n_studies, cells / n_studies

    null_units, null_cells = rejections(0.0)
    assert null_units <= 0.07, null_units
    assert null_cells > null_units + 0.03, (null_cells, null_units)
    power, _ = rejections(1.0)
    assert power > 0.8, power


def synthetic_summary(effect: dict[str, float], n_units=4, seeds=(0, 1, 2), seed=0) -> pd.DataFrame:
    """Long gamma table; the influence condition damages its target by `effect[target]` more than random."""
    rng = np.random.default_rng(seed)
    rows = []
    for target in BENCHES:
        for unit in range(n_units):
            for s in seeds:
                for condition in ("influence", "random"):
                    for bench in BENCHES:
                        for metric in us.METRICS:
                            gamma = rng.normal(0, 0.1) + (
                                effect.get(target, 0.0) if condition == "influence" and bench == target else 0.0
                            )
                            rows.append({"target": target, "unit_slot": f"top{unit + 1}", "unit": f"u{unit}",
                                         "condition": condition, "seed": s, "benchmark": bench,
                                         "is_target": bench == target, "metric": metric, "gamma": gamma})  # fmt: skip
    return pd.DataFrame(rows)


def test_paired_statistics_against_brute_force():
    summary = synthetic_summary({"bench_a": 1.0})
    cells = us.paired_differences(summary, "logprob", "influence", "random")
    assert len(cells) == 3 * 4 * 3
    one = cells.iloc[0]
    on = summary[(summary["target"] == one["target"]) & (summary["unit_slot"] == one["unit_slot"])
                 & (summary["seed"] == one["seed"]) & (summary["benchmark"] == one["target"])
                 & (summary["metric"] == "logprob")]  # fmt: skip
    by_condition = on.set_index("condition")["gamma"]
    assert one["d"] == pytest.approx(by_condition["influence"] - by_condition["random"])

    table = us.paired_stats(summary, ["logprob"], confidence=0.95, n_resamples=999, seed=0)
    table = table[table["pair"] == "influence-random"].set_index("target")
    a = cells[cells["target"] == "bench_a"]
    d = a["d"].to_numpy()
    row = table.loc["bench_a"]
    assert row["n_cells"] == 12 and row["n_units"] == 4 and row["primary_test"] == "over 4 unit means"
    assert row["median_d"] == pytest.approx(np.median(d)) and row["d_z"] == pytest.approx(d.mean() / d.std(ddof=1))
    from scipy import stats

    unit_means = a.groupby("unit_slot")["d"].mean().to_numpy()
    assert row["t_p"] == pytest.approx(stats.ttest_1samp(unit_means, 0, alternative="greater").pvalue)
    assert row["wilcoxon_p"] == pytest.approx(stats.wilcoxon(unit_means, alternative="greater").pvalue)
    assert row["cells_wilcoxon_p"] == pytest.approx(stats.wilcoxon(d, alternative="greater").pvalue)
    assert row["d_z_units"] == pytest.approx(unit_means.mean() / unit_means.std(ddof=1))
    assert row["median_ci_low"] <= row["median_d"] <= row["median_ci_high"]
    assert row["mean_ci_low"] <= row["mean_d"] <= row["mean_ci_high"]
    # One BH family: every p-value of every target (the global pair has no runs here).
    keys = ["t_p", "wilcoxon_p", "cells_wilcoxon_p"]
    raw = np.concatenate([table[k].to_numpy() for k in keys])
    assert np.allclose(np.concatenate([table[f"{k}_bh"] for k in keys]), stats.false_discovery_control(raw))
    assert row["t_p_bh"] < 0.05 and table.loc["bench_b", "t_p_bh"] > 0.05
    sub = summary[(summary["metric"] == "logprob") & (summary["target"] == "bench_a")
                  & (summary["condition"] == "influence")]  # fmt: skip
    expected = sub.loc[sub["is_target"], "gamma"].mean() - sub.loc[~sub["is_target"], "gamma"].mean()
    assert row["selectivity_influence"] == pytest.approx(expected)
    assert row["selectivity_influence"] > row["selectivity_random"]
    assert np.isnan(row["selectivity_influence_chance"])  # log-probabilities have no chance level


def test_fewer_than_three_units_report_no_test_instead_of_testing_cells():
    summary = synthetic_summary({"bench_a": 1.0}, n_units=2)
    row = us.paired_stats(summary, ["logprob"], confidence=0.95, n_resamples=99, seed=0).iloc[0]
    assert row["primary_test"] == "not possible: 2 unit(s), a test over units needs 3"
    assert np.isnan(row["t_p"]) and np.isnan(row["wilcoxon_p"]) and np.isfinite(row["cells_wilcoxon_p"])


def test_selectivity_is_signed_and_chance_normalised():
    rows = []
    # Target (4-way, baseline 0.75, chance 0.25) loses 0.25; one other (3-way, 0.5 vs 1/3) loses 0.05,
    # the other improves by 0.05: signed, the improvement offsets; per chance, 0.25/0.5 - (0.05/(1/6) - 0.05/0.25)/2.
    for bench, gamma, base, chance in (("t", 0.25, 0.75, 0.25), ("o1", 0.05, 0.5, 1 / 3), ("o2", -0.05, 0.5, 0.25)):
        rows.append({"target": "t", "condition": "influence", "metric": "acc", "benchmark": bench,
                     "is_target": bench == "t", "gamma": gamma, "baseline": base, "chance": chance})  # fmt: skip
    summary = pd.DataFrame(rows)
    assert us.selectivity(summary, "acc", "influence", "t") == pytest.approx(0.25 - 0.0)
    expected = 0.25 / 0.5 - (0.05 / (0.5 - 1 / 3) + -0.05 / 0.25) / 2
    assert us.selectivity(summary, "acc", "influence", "t", per_chance=True) == pytest.approx(expected)


def test_mean_damage_is_each_targets_mean_gamma_per_benchmark():
    summary = synthetic_summary({"bench_a": 1.0})
    damage = us.mean_damage(summary, "logprob", "influence")
    assert list(damage.index) == list(BENCHES) and list(damage.columns) == list(BENCHES)
    for target in BENCHES:
        for bench in BENCHES:
            rows = summary[(summary["metric"] == "logprob") & (summary["condition"] == "influence")
                           & (summary["target"] == target) & (summary["benchmark"] == bench)]  # fmt: skip
            assert damage.loc[target, bench] == pytest.approx(rows["gamma"].mean())
    # bench_a's forget sets (effect 1.0 on bench_a, noise sd 0.1 elsewhere) cost their own target most.
    assert (damage.loc["bench_a", "bench_a"] > damage.loc["bench_a"].drop("bench_a")).all()

def fake_runs(tmp_path, config, *, skip_eval=None, skip_adapter=None):
    base = {b: {m: 0.0 for m in us.METRICS} for b in ("bench_a", "bench_b")}
    (tmp_path / "base.json").write_text(json.dumps({"benchmarks": base}))
    rng = np.random.default_rng(0)
    for run in planned_runs(config):
        run_dir = tmp_path / "unlearning" / run.path
        (run_dir / "adapter").mkdir(parents=True)
        if run.path != skip_adapter:
            (run_dir / "adapter" / "adapter_config.json").write_text("{}")
        if run.path == skip_eval:
            continue
        bump = 0.5 if run.condition == "influence" else 0.0
        after = {b: {m: -(bump if b == run.target else 0) - rng.random() * 0.1 for m in us.METRICS} for b in base}
        record = {"run": {"unit": "literature"}, "steps": 3, "stop_reason": "max_steps", "benchmarks": after}
        (run_dir / "eval.json").write_text(json.dumps(record))


def test_summarise_writes_tables_and_figures(tmp_path):
    config = make_config(write_benchmarks(tmp_path / "b"), stats={"bootstrap_resamples": 200})
    fake_runs(tmp_path, config)
    result = us.summarise(config, tmp_path / "base.json", tmp_path / "unlearning", tmp_path / "figures")
    summary = pd.read_parquet(tmp_path / "unlearning" / "summary.parquet")
    assert len(summary) == len(planned_runs(config)) * 2 * len(us.METRICS)
    row = summary.iloc[0]
    assert row["gamma"] == pytest.approx(row["baseline"] - row["after"])
    paired = pd.read_parquet(tmp_path / "unlearning" / "paired_stats.parquet")
    assert set(paired["metric"]) == {"acc", "logprob"}
    logprob = paired[(paired["metric"] == "logprob") & (paired["pair"] == "influence-random")]
    assert (logprob["median_d"] > 0.3).all() and (logprob["n_positive"] == 2).all()
    for path in result["figures"]:
        with Image.open(path) as image:
            assert image.size[0] > 200


def test_missing_eval_or_adapter_names_the_run(tmp_path):
    config = make_config(write_benchmarks(tmp_path / "b"))
    fake_runs(tmp_path, config, skip_eval="bench_b/top1/random/seed1")
    with pytest.raises(CapatlasError, match=r"bench_b/top1/random/seed1: .*eval.json does not exist"):
        us.summarise(config, tmp_path / "base.json", tmp_path / "unlearning", tmp_path / "figures")
    other = tmp_path / "other"
    other.mkdir()
    fake_runs(other, config, skip_adapter="bench_a/top1/influence/seed0")
    with pytest.raises(CapatlasError, match=r"bench_a/top1/influence/seed0: its adapter .* is missing"):
        us.summarise(config, other / "base.json", other / "unlearning", other / "figures")


def test_constant_differences_up_to_rounding_are_not_significant():
    from capatlas.unlearning.summary import cohens_dz, ttest_greater

    # Two cells whose accuracy differences are both 2/24 - 0/24, computed two ways.
    d = np.array([2 / 24 - 0 / 24, (1 / 24 + 1 / 24) - 0.0])
    assert np.isnan(cohens_dz(d))
    assert np.isnan(ttest_greater(d))
    assert cohens_dz(np.array([0.1, 0.3])) == pytest.approx(0.2 / np.std([0.1, 0.3], ddof=1))

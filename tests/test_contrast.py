"""`capatlas contrast` and `capatlas figures`: statistics against brute force, the study's matrix."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from capatlas.analysis import figures as analysis_figures
from capatlas.analysis import contrast
from capatlas.errors import CapatlasError
from capatlas.taxonomy import FORMAT_NAMES, FORMAT_SLUGS, N_BINS, TOPIC_SLUGS

NAMES = ("socialiqa", "mmlu_social_sciences", "arc_challenge", "mmlu_stem")
SOC_R, SOC_K, STEM_R, STEM_K = range(4)


def random_matrix(seed=0, n_docs=None) -> contrast.BinMatrix:
    rng = np.random.default_rng(seed)
    shared = rng.normal(0, 1, N_BINS)
    means = np.stack([shared + rng.normal(0, 0.7, N_BINS) for _ in NAMES]) * 1e-3
    counts = np.full((4, N_BINS), 10) if n_docs is None else n_docs
    return contrast.BinMatrix(list(NAMES), means, counts, "random", "test", {})


def design():
    return contrast.design_for(NAMES, None)


def brute_z(x):
    return (x - x.mean()) / x.std(ddof=1)


def brute_statistics(means, bins):
    """Straight from the definitions, one loop per quantity."""
    z = [brute_z(m) for m in means]
    out = {}
    for i in range(4):
        for j in range(i + 1, 4):
            out[f"pearson/{NAMES[i]}/{NAMES[j]}"] = stats.pearsonr(z[i], z[j])[0]
            out[f"spearman/{NAMES[i]}/{NAMES[j]}"] = stats.spearmanr(means[i], means[j])[0]
    dz = {"reasoning": z[SOC_R] - z[STEM_R], "knowledge": z[SOC_K] - z[STEM_K]}
    per_level = {}
    for facet, unit_of in (("topic", bins // 24), ("format", bins % 24)):
        slugs = TOPIC_SLUGS if facet == "topic" else FORMAT_SLUGS
        for level in ("reasoning", "knowledge"):
            soc, stem = (SOC_R, STEM_R) if level == "reasoning" else (SOC_K, STEM_K)
            values = []
            for u in range(24):
                members = unit_of == u
                values.append(np.mean(z[soc][members]) - np.mean(z[stem][members]))
                out[f"{facet}_contrast/{level}/{slugs[u]}"] = values[-1]
            per_level[(facet, level)] = np.array(values)
    for level in ("reasoning", "knowledge"):
        per_level[("bin", level)] = dz[level]
    for facet in ("topic", "format", "bin"):
        r, k = per_level[(facet, "reasoning")], per_level[(facet, "knowledge")]
        out[f"sharpness/{facet}/max_abs/ratio"] = np.max(np.abs(r)) / np.max(np.abs(k))
        out[f"sharpness/{facet}/sd/ratio"] = np.std(r, ddof=1) / np.std(k, ddof=1)
        out[f"sharpness/{facet}/range/ratio"] = np.ptp(r) / np.ptp(k)
    return out


def test_statistics_match_brute_force_on_a_random_matrix():
    matrix = random_matrix(1)
    bins = np.arange(N_BINS)
    got = contrast.statistics(matrix.means, bins // 24, bins % 24, design())
    expected = brute_statistics(matrix.means, bins)
    assert set(expected) <= set(got)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_leave_one_bin_out_and_median_marginals_match_brute_force():
    matrix = random_matrix(2)
    matrix.means[SOC_R, 387] += 0.05  # one dominant bin, as in the study
    summary, tables = contrast.analyse(matrix, design(), n_bootstrap=0, n_permutations=0)
    keep = np.arange(N_BINS) != 387
    without = brute_statistics(matrix.means[:, keep], np.arange(N_BINS)[keep])
    loo = tables["leave_one_bin_out"].set_index("statistic")
    key = "topic_contrast/reasoning/literature"
    assert loo.loc[key, "most_influential_bin_id"] == 387
    assert loo.loc[key, "value_without"] == pytest.approx(without[key], rel=1e-9)
    assert summary["robustness"]["leave_one_bin_out"][key]["most_influential_bin"]["bin_id"] == 387
    z = [brute_z(m) for m in matrix.means]
    topic = np.arange(N_BINS) // 24
    medians = summary["robustness"]["median_marginals"]["topic_contrast"]["reasoning"]
    for u in (0, 16, 23):
        brute = np.median(z[SOC_R][topic == u]) - np.median(z[STEM_R][topic == u])
        assert medians[TOPIC_SLUGS[u]] == pytest.approx(brute, rel=1e-9)


def test_interaction_table_p_and_q_values():
    matrix = random_matrix(3)
    matrix.means[SOC_R, 40] += 0.02  # a strong interaction at bin 40
    summary, tables = contrast.analyse(matrix, design(), n_bootstrap=0, n_permutations=300, seed=1)
    table = tables["interaction"].set_index("bin_id")
    z = [brute_z(m) for m in matrix.means]
    brute = (z[SOC_R] - z[STEM_R]) - (z[SOC_K] - z[STEM_K])
    np.testing.assert_allclose(table.loc[np.arange(N_BINS), "interaction"], brute, rtol=1e-9)
    assert table["p_value"].idxmin() == 40
    assert table.loc[40, "q_value"] < 0.05
    assert ((table["p_value"] > 0) & (table["p_value"] <= 1)).all()
    np.testing.assert_allclose(table["q_value"], stats.false_discovery_control(table["p_value"].to_numpy()), rtol=1e-12)
    assert summary["interaction"]["top"][0]["bin_id"] == 40


def test_sharpness_permutation_p_detects_a_sharper_reasoning_contrast():
    matrix = random_matrix(4)
    bins = np.arange(N_BINS)
    sharp = contrast.sharpness_permutation_p(matrix.means, bins // 24, bins % 24, design(), 400, 0)
    matrix.means[SOC_R, bins // 24 == 16] += 0.004  # the whole literature topic
    sharper = contrast.sharpness_permutation_p(matrix.means, bins // 24, bins % 24, design(), 400, 0)
    assert sharper["topic/max_abs"] < 0.05 < sharp["topic/max_abs"]
    assert all(0 < p <= 1 for p in [*sharp.values(), *sharper.values()])


def test_bootstrap_cis_bracket_the_estimate_and_document_replicates_are_used():
    matrix = random_matrix(5)
    reps = matrix.means[:, None, :] + np.random.default_rng(0).normal(0, 1e-5, (4, 30, N_BINS))
    matrix.replicates = {"documents": reps}
    summary, _ = contrast.analyse(matrix, design(), n_bootstrap=200, n_permutations=0)
    entry = summary["pearson"]["ci"]["socialiqa"]["arc_challenge"]
    value = summary["pearson"]["matrix"]["socialiqa"]["arc_challenge"]
    assert entry["ci_bins"][0] < value < entry["ci_bins"][1]
    # Tiny document noise: a narrow CI around the estimate, much narrower than over bins.
    low, high = entry["ci_documents"]
    assert low <= value + 1e-3 and high >= value - 1e-3
    assert high - low < (entry["ci_bins"][1] - entry["ci_bins"][0]) / 5
    ratio = summary["sharpness"]["topic"]["max_abs"]
    assert ratio["ratio_ci_bins"][0] <= ratio["ratio"] <= ratio["ratio_ci_bins"][1]


def test_empty_bins_are_left_out_and_roles_come_from_config():
    counts = np.full((4, N_BINS), 10)
    counts[:, [5, 6]] = 0
    matrix = random_matrix(6, counts)
    matrix.means[counts == 0] = np.nan
    swapped = [
        {"name": "socialiqa", "domain": "stem", "capability": "reasoning"},
        {"name": "arc_challenge", "domain": "social", "capability": "reasoning"},
    ]
    d = contrast.design_for(NAMES, swapped)
    assert d.roles["socialiqa"] == ("stem", "reasoning") and d.roles["mmlu_stem"] == ("stem", "knowledge")
    summary, _ = contrast.analyse(matrix, d, n_bootstrap=0, n_permutations=0)
    assert summary["input"]["bins_left_out"] == [5, 6]
    default, _ = contrast.analyse(matrix, design(), n_bootstrap=0, n_permutations=0)
    assert summary["topic_contrast"]["reasoning"]["literature"]["value"] == pytest.approx(
        -default["topic_contrast"]["reasoning"]["literature"]["value"]
    )
    partial = contrast.design_for(NAMES[:3], None)
    matrix3 = contrast.BinMatrix(list(NAMES[:3]), matrix.means[:3], counts[:3], "r", "test", {})
    summary3, _ = contrast.analyse(matrix3, partial, n_bootstrap=0, n_permutations=0)
    assert summary3["topic_contrast"] is None and summary3["pearson"]["matrix"]["socialiqa"]["arc_challenge"]


def test_demo_recovery_precision_at_k():
    matrix = random_matrix(7)
    planted = {"socialiqa": [10, 20, 30, 40], "mmlu_stem": [1, 2, 3, 4]}
    matrix.means[0, planted["socialiqa"][:3]] += 1.0
    matrix.means[3, planted["mmlu_stem"]] += 1.0
    truth = {"benchmarks": {n: {"planted_bins": [{"bin_id": b} for b in bins]} for n, bins in planted.items()}}
    result = contrast.demo_recovery(matrix, truth, "truth.json")
    assert result["benchmarks"]["socialiqa"]["precision_at_k"] == 0.75
    assert result["benchmarks"]["mmlu_stem"]["precision_at_k"] == 1.0
    assert result["benchmarks"]["socialiqa"]["k"] == 4
    truth["benchmarks"]["gsm8k"] = {"planted_bins": [{"bin_id": 1}]}
    with pytest.raises(CapatlasError, match="gsm8k"):
        contrast.demo_recovery(matrix, truth, "truth.json")


def write_csvs(directory, matrix, names_as=lambda t, f: (TOPIC_SLUGS[t], FORMAT_SLUGS[f])):
    directory.mkdir()
    for j, name in enumerate(matrix.benchmarks):
        rows = []
        for b in range(N_BINS):
            topic, fmt = names_as(b // 24, b % 24)
            rows.append({"topic_label": topic, "format_label": fmt, "mean_score": matrix.means[j, b], "doc_count": 10})
        pd.DataFrame(rows).to_csv(directory / f"zscored_{name}.csv", index=False)


def test_csv_directory_accepts_names_ids_and_slugs(tmp_path):
    matrix = random_matrix(8)
    write_csvs(tmp_path / "slugs", matrix)
    write_csvs(tmp_path / "names", matrix, lambda t, f: (t, FORMAT_NAMES[f]))
    a, b = contrast.read_any(tmp_path / "slugs"), contrast.read_any(tmp_path / "names")
    assert a.benchmarks == sorted(NAMES)
    np.testing.assert_array_equal(a.means, b.means)
    frame = pd.read_csv(tmp_path / "slugs" / "zscored_socialiqa.csv")
    frame.loc[1, ["topic_label", "format_label"]] = frame.loc[0, ["topic_label", "format_label"]].to_numpy()
    frame.to_csv(tmp_path / "slugs" / "zscored_socialiqa.csv", index=False)
    with pytest.raises(CapatlasError, match=r"zscored_socialiqa\.csv, row 3: bin .* appears twice"):
        contrast.read_any(tmp_path / "slugs")


@pytest.fixture(scope="module")
def paper(shared_dir, tmp_path_factory, repo_root):
    """`capatlas contrast` on the study's released bin matrix, plus that matrix read with pandas."""
    fixture = shared_dir / "fixtures" / "paper-bin-matrix"
    out = tmp_path_factory.mktemp("paper")
    done = subprocess.run(
        [sys.executable, "-m", "capatlas.cli", "contrast", "--bin-matrix", str(fixture), "--out", str(out)],
        env={"PYTHONPATH": str(repo_root / "workflow"), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    frames = {p.stem.removeprefix("zscored_"): pd.read_csv(p) for p in sorted(fixture.glob("*.csv"))}
    return json.loads((out / "summary.json").read_text()), frames, out


def test_paper_matrix_profile_correlations(paper):
    summary, frames, _ = paper
    pearson = summary["pearson"]["matrix"]
    others = ["arc_challenge", "mmlu_social_science", "mmlu_stem"]
    for a in others:
        assert pearson["socialiqa"][a] < 0.25
        for b in others:
            if a != b:
                assert pearson[a][b] > 0.7
                assert pearson[a][b] == pytest.approx(
                    np.corrcoef(frames[a]["zscore"], frames[b]["zscore"])[0, 1], abs=1e-9
                )
    assert summary["spearman"]["matrix"]["mmlu_stem"]["mmlu_social_science"] == pytest.approx(
        stats.spearmanr(frames["mmlu_stem"]["zscore"], frames["mmlu_social_science"]["zscore"])[0], abs=1e-9
    )


def test_bin_level_sd_ratio_restates_the_correlations(paper):
    """Issue 18: the bin-level sharpness of the study's matrix is sqrt((1 - r_SIQA,ARC) / (1 - r_SS,STEM))."""
    summary, frames, _ = paper
    sd = summary["sharpness"]["bin"]["sd"]
    pearson = summary["pearson"]["matrix"]
    by_hand = np.sqrt((1 - pearson["socialiqa"]["arc_challenge"]) / (1 - pearson["mmlu_social_science"]["mmlu_stem"]))
    assert sd["ratio"] == pytest.approx(by_hand, abs=1e-9) == pytest.approx(2.3971, abs=1e-4)
    assert sd["from_correlations"] == pytest.approx(sd["ratio"], abs=1e-9) and "restated" in sd["note"]


def test_paper_matrix_top_bin_carries_the_topic_contrast(paper):
    summary, frames, _ = paper
    top = summary["top_bins"]["socialiqa"]["top"][0]
    assert (top["topic"], top["format"]) == ("literature", "customer_support")
    assert top["zscore"] == pytest.approx(16.0022, abs=1e-3)
    assert top["n_docs"] == 10000
    reasoning = summary["topic_contrast"]["reasoning"]
    assert max(reasoning, key=lambda t: abs(reasoning[t]["value"])) == "literature"
    loo = summary["robustness"]["leave_one_bin_out"]["topic_contrast/reasoning/literature"]
    assert loo["most_influential_bin"]["bin_id"] == 16 * 24 + 3
    assert loo["most_influential_bin"]["relative_shift"] < -0.5  # most of it goes with one bin


def test_paper_matrix_marginals_contrasts_and_sharpness(paper):
    summary, frames, out = paper
    for name, frame in frames.items():
        for facet, column in (("topic", "topic_label"), ("format", "format_label")):
            expected = frame.groupby(column)["zscore"].mean()
            got = summary[f"{facet}_marginals"][name]
            for slug, value in expected.items():
                assert got[slug] == pytest.approx(value, abs=1e-9), (name, slug)
    topic = {n: f.groupby("topic_label")["zscore"].mean() for n, f in frames.items()}
    reasoning = topic["socialiqa"] - topic["arc_challenge"]
    knowledge = topic["mmlu_social_science"] - topic["mmlu_stem"]
    assert summary["topic_contrast"]["knowledge"]["politics"]["value"] == pytest.approx(knowledge["politics"], abs=1e-9)
    sharp = summary["sharpness"]["topic"]["max_abs"]
    assert sharp["reasoning"] == pytest.approx(reasoning.abs().max(), abs=1e-9)
    assert sharp["ratio"] == pytest.approx(reasoning.abs().max() / knowledge.abs().max(), abs=1e-9)
    assert sharp["ratio"] > 1  # "sharper at the reasoning level"
    assert sharp["ratio_ci_bins"][0] < sharp["ratio"] < sharp["ratio_ci_bins"][1]
    assert 0 < sharp["p_permutation"] <= 1
    interaction = pd.read_parquet(out / "interaction.parquet")
    assert len(interaction) == N_BINS and interaction.iloc[0]["bin_id"] == 387


def test_figures_are_drawn_for_the_paper_matrix(paper, shared_dir, tmp_path):
    _, _, out = paper
    written = analysis_figures.draw(
        shared_dir / "fixtures" / "paper-bin-matrix", tmp_path, heatmaps=["socialiqa"], contrast_dir=out
    )
    assert {p.name for p in written} == {
        "heatmap_socialiqa.png", "correlations.png", "contrast_bars.png", "verdict.png", "standardised_effects.png"
    }
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000
    with pytest.raises(CapatlasError, match="no benchmark 'gsm8k'"):
        analysis_figures.draw(shared_dir / "fixtures" / "paper-bin-matrix", tmp_path, heatmaps=["gsm8k"])


def test_permutation_p_values_converge_to_the_exact_null_on_a_tiny_matrix():
    import itertools

    rng = np.random.default_rng(9)
    n = 10
    means = rng.normal(0, 1, (4, n))
    bins = np.arange(n)
    z = np.array([brute_z(m) for m in means])
    d = design()
    # Interaction: at a position, the four cells' bins are independent and uniform; bin b's own values are left out.
    interaction = (z[SOC_R] - z[STEM_R]) - (z[SOC_K] - z[STEM_K])
    table = contrast.interaction_table(means, bins, d, 6000, seed=2).set_index("bin_id")
    for b in (0, int(np.argmax(np.abs(interaction)))):
        others = [i for i in range(n) if i != b]
        null = [
            z[SOC_R][i] - z[STEM_R][j] - z[SOC_K][k] + z[STEM_K][m]
            for i, j, k, m in itertools.product(others, repeat=4)
        ]
        exact = np.mean(np.abs(null) >= abs(interaction[b]))
        assert table.loc[b, "p_value"] == pytest.approx(exact, abs=0.01)
    # Sharpness at bin level: every one of the 2^n swaps of reasoning and knowledge contrasts.
    dz_r, dz_k = z[SOC_R] - z[STEM_R], z[SOC_K] - z[STEM_K]
    observed = np.max(np.abs(dz_r)) / np.max(np.abs(dz_k))
    ratios = []
    for swap in itertools.product((False, True), repeat=n):
        swap = np.array(swap)
        r, k = np.where(swap, dz_k, dz_r), np.where(swap, dz_r, dz_k)
        ratios.append(np.max(np.abs(r)) / np.max(np.abs(k)))
    exact = np.mean(np.array(ratios) >= observed)
    got = contrast.sharpness_permutation_p(means, bins % 3, bins % 4, d, 6000, 0)["bin/max_abs"]
    assert got == pytest.approx(exact, abs=0.02)


def test_paper_matrix_standardised_effects_reverse_the_headline(paper):
    """Cohen's d_z of the study's topic contrasts (issue 18's figures), each checked by brute force on the CSVs."""
    summary, frames, out = paper
    effects = pd.read_parquet(out / "facet_effects.parquet")
    by_topic = {n: f.set_index(["topic_label", "format_label"])["zscore"] for n, f in frames.items()}
    dz = by_topic["socialiqa"] - by_topic["arc_challenge"]
    literature = dz.xs("literature", level="topic_label")
    row = effects.query("facet == 'topic' and level == 'reasoning' and unit == 'literature'").iloc[0]
    assert row["n_bins"] == 24
    assert row["mean_dz"] == pytest.approx(literature.mean(), abs=1e-9) == pytest.approx(0.905, abs=5e-4)
    assert row["sd_dz"] == pytest.approx(literature.std(ddof=1), abs=1e-9) == pytest.approx(3.81, abs=5e-3)
    assert row["d_z"] == pytest.approx(literature.mean() / literature.std(ddof=1), abs=1e-9) == pytest.approx(0.24, abs=5e-3)
    half = stats.t.ppf(0.975, 23) * literature.std(ddof=1) / np.sqrt(24)
    assert (row["mean_dz_ci_low"], row["mean_dz_ci_high"]) == pytest.approx((-0.70, 2.52), abs=5e-3)
    assert row["mean_dz_ci_high"] - row["mean_dz_ci_low"] == pytest.approx(2 * half, abs=1e-9)
    # The noncentral-t interval: the observed t sits at the 2.5% tail of each end's distribution.
    t = row["d_z"] * np.sqrt(24)
    assert stats.nct.sf(t, 23, row["d_z_ci_low"] * np.sqrt(24)) == pytest.approx(0.025, abs=1e-8)
    assert stats.nct.cdf(t, 23, row["d_z_ci_high"] * np.sqrt(24)) == pytest.approx(0.025, abs=1e-8)
    assert row["median_dz"] == pytest.approx(literature.median(), abs=1e-9)
    assert row["trimmed_mean_dz"] == pytest.approx(stats.trim_mean(literature, 0.2), abs=1e-9)
    # Standardised, the sharpness headline reverses: knowledge has the larger max |d_z|.
    largest = summary["standardised_effects"]["largest_abs_d_z"]["topic"]
    assert largest["reasoning"]["unit"] == "science_math_and_technology"
    assert largest["reasoning"]["d_z"] == pytest.approx(0.65, abs=5e-3) or largest["reasoning"]["d_z"] == pytest.approx(-0.65, abs=5e-3)
    assert largest["knowledge"]["unit"] == "software_development"
    assert abs(largest["knowledge"]["d_z"]) == pytest.approx(1.51, abs=5e-3)
    assert largest["ratio_max_abs_d_z"] == pytest.approx(0.43, abs=5e-3)
    # Which topic has the largest reasoning contrast, over bins resampled: shares that sum to one.
    shares = summary["standardised_effects"]["argmax_probability"]["topic"]["bins"]["reasoning"]
    assert sum(shares.values()) == pytest.approx(1.0) and "literature" in shares


def test_argmax_probabilities_and_unit_effects_by_brute_force():
    from capatlas.analysis import effects

    rng = np.random.default_rng(5)
    reps = rng.normal(size=(400, 5))
    reps[:, 2] += 0.8
    reps[3] = np.nan  # a replicate with no value is not counted
    shares = effects.argmax_probabilities(reps, list("abcde"))
    counted = reps[np.isfinite(reps).any(axis=1)]
    for k, unit in enumerate("abcde"):
        assert shares.get(unit, 0.0) == pytest.approx(np.mean(np.argmax(counted, axis=1) == k))
    assert list(shares)[0] == "c"
    dz = rng.normal(0.3, 1.0, size=9)
    got = effects.unit_effect(dz, 0.9)
    assert got["d_z"] == pytest.approx(dz.mean() / dz.std(ddof=1))
    # The interval by brute force: the noncentralities whose 5% tails meet the observed t, on a fine grid.
    t, grid = got["d_z"] * 3, np.linspace(-5, 8, 26001)
    low = grid[np.argmin(np.abs(stats.nct.sf(t, 8, grid) - 0.05))] / 3
    high = grid[np.argmin(np.abs(stats.nct.cdf(t, 8, grid) - 0.05))] / 3
    assert (got["d_z_ci_low"], got["d_z_ci_high"]) == pytest.approx((low, high), abs=1e-3)
    assert np.isnan(effects.unit_effect(dz[:1], 0.9)["d_z"])


def test_joint_interaction_null_holds_its_level_where_independent_permutation_does_not():
    """Profiles that correlate at 0.8 and no interaction: p_joint rejects ~5% at 0.05, the permutation null far less."""
    rng = np.random.default_rng(11)
    cov = np.full((4, 4), 0.8) + 0.2 * np.eye(4)
    d = contrast.Design(("a", "b", "c", "e"), {"a": ("social", "reasoning"), "b": ("stem", "reasoning"),
                                               "c": ("social", "knowledge"), "e": ("stem", "knowledge")})  # fmt: skip
    joint, permuted = [], []
    for _ in range(20):
        means = rng.multivariate_normal(np.zeros(4), cov, size=N_BINS).T
        table = contrast.interaction_table(means, np.arange(N_BINS), d, 40, seed=int(rng.integers(1 << 30)))
        joint.append((table["p_joint"] < 0.05).mean())
        permuted.append((table["p_value"] < 0.05).mean())
    assert 0.04 <= np.mean(joint) <= 0.06, np.mean(joint)
    assert np.mean(permuted) < 0.01, np.mean(permuted)
    # By hand for one bin: its interaction against the others' spread (ddof 1).
    inter = table.sort_values("bin_id")["interaction"].to_numpy()
    others = np.delete(inter, 7)
    expected = 2 * stats.norm.sf(abs(inter[7]) / others.std(ddof=1))
    assert table.set_index("bin_id").loc[7, "p_joint"] == pytest.approx(expected, rel=1e-9)


def test_paper_matrix_verdict_reads_each_claim(paper):
    summary, _, out = paper
    verdict = {v["claim"]: v for v in summary["verdict"]}
    assert [v["claim"] for v in summary["verdict"]] == [
        "profile_apart", "profile_apart_spearman", "sharper_at_reasoning", "top_reasoning_topic"
    ]  # fmt: skip
    assert verdict["profile_apart_spearman"]["reading"] == "supported"
    # BCa beside the bins' percentile interval (the leave-one-bin-out values its jackknife): it includes 1 too.
    assert verdict["sharper_at_reasoning"]["intervals"]["bins_bca"][0] < 1 < verdict["sharper_at_reasoning"]["intervals"]["bins_bca"][1]
    # SocialIQA apart: r 0.76 among the other three against at most 0.21 with SocialIQA, robust to any one bin.
    assert verdict["profile_apart"]["reading"] == "supported" and verdict["profile_apart"]["estimate"] > 0.5
    sharper = verdict["sharper_at_reasoning"]
    assert sharper["estimate"] == pytest.approx(summary["sharpness"]["topic"]["max_abs"]["ratio"], abs=1e-12)
    assert sharper["intervals"]["bins"] == pytest.approx(summary["sharpness"]["topic"]["max_abs"]["ratio_ci_bins"])
    assert sharper["reading"] == "fragile" and "bins interval includes no effect" in sharper["why"]
    literature = verdict["top_reasoning_topic"]
    assert "literature" in literature["statement"] and literature["reading"] == "fragile"
    loo = summary["robustness"]["leave_one_bin_out"]["topic_contrast/reasoning/literature"]
    assert literature["leave_one_bin_out"] == pytest.approx([loo["min"], loo["max"]])


def test_verdict_readings_by_hand():
    from capatlas.analysis import verdict

    claim = verdict.Claim("c", "x is positive", "x", 0.0, False, lambda values: values.get("x", np.nan))
    keys = ["x"]
    reps = np.linspace(0.5, 1.5, 101)[:, None]  # percentile interval [0.525, 1.475]: excludes 0
    supported = verdict.assess(claim, {"x": 1.0}, keys, {"bins": reps}, np.full((5, 1), 0.9), 0.95)
    assert supported["reading"] == "supported" and supported["leave_one_bin_out"] == [0.9, 0.9]
    crossing_loo = verdict.assess(claim, {"x": 1.0}, keys, {"bins": reps}, np.array([[0.9], [-0.1]]), 0.95)
    assert crossing_loo["reading"] == "fragile" and crossing_loo["why"] == "leaving out one bin crosses no effect"
    wide = verdict.assess(claim, {"x": 1.0}, keys, {"bins": reps - 1.0}, np.full((5, 1), 0.9), 0.95)
    assert wide["reading"] == "fragile" and wide["intervals"]["bins"][0] < 0
    assert verdict.assess(claim, {"x": -0.2}, keys, {}, np.full((5, 1), -0.2), 0.95)["reading"] == "not supported"
    ratio = verdict.Claim("r", "ratio above 1", "r", 1.0, True, lambda values: values["x"])
    assert verdict.assess(ratio, {"x": 0.8}, keys, {}, np.full((2, 1), 0.8), 0.95)["reading"] == "not supported"
    assert verdict.assess(ratio, {"x": 1.3}, keys, {"bins": reps + 0.6}, np.full((2, 1), 1.2), 0.95)["reading"] == "supported"


def test_crossed_draw_by_hand_and_its_wider_interval_on_the_study_matrix(paper):
    # All 576 bins used except two: a drawn (topic, format) pair brings its bin once per draw, if used.
    used = np.ones(N_BINS, dtype=bool)
    used[[5, 100]] = False
    bins = np.flatnonzero(used)
    topic_ids, format_ids = bins // 24, bins % 24
    idx = contrast.crossed_draw(topic_ids, format_ids, np.random.default_rng(9))
    rng = np.random.default_rng(9)
    topics, formats = rng.integers(0, 24, 24), rng.integers(0, 24, 24)
    expected = [int(np.flatnonzero(bins == t * 24 + f)[0]) for t in topics for f in formats if used[t * 24 + f]]
    assert idx.tolist() == expected
    # Topics and formats resampled: r(SocialIQA, ARC)'s interval widens (issue 18: [-0.03, 0.50] -> [-0.18, 0.63]).
    summary, _, _ = paper
    ci = summary["pearson"]["ci"]["socialiqa"]["arc_challenge"]
    assert ci["ci_bins"] == pytest.approx([-0.03, 0.50], abs=0.02)
    assert ci["ci_crossed"][0] < ci["ci_bins"][0] - 0.08 and ci["ci_crossed"][1] > ci["ci_bins"][1] + 0.08


def test_bca_interval_agrees_with_scipys_and_is_named_in_the_summary(paper):
    from capatlas.analysis.influence import bca_interval

    rng = np.random.default_rng(3)
    x = rng.lognormal(0, 1, size=40)  # skewed: BCa moves away from the percentile interval
    reps = x[rng.integers(0, 40, size=(40_000, 40))].mean(axis=1)
    jackknife = (x.sum() - x) / 39
    ours = bca_interval(x.mean(), reps, jackknife, 0.95)
    theirs = stats.bootstrap((x,), np.mean, method="BCa", n_resamples=40_000, random_state=rng).confidence_interval
    width = theirs.high - theirs.low
    assert ours == pytest.approx((theirs.low, theirs.high), abs=0.03 * width)
    percentile = np.quantile(reps, [0.025, 0.975])
    assert ours[1] > percentile[1]  # right skew: BCa reaches further up
    summary, _, _ = paper
    sharp = summary["sharpness"]["topic"]["max_abs"]
    assert summary["input"]["interval_methods"]["ci_bins_bca"].startswith("BCa")
    assert sharp["ratio_ci_bins_bca"] is None or sharp["ratio_ci_bins_bca"][0] < sharp["ratio_ci_bins_bca"][1]


def test_verdict_forest_draws_every_resampling(tmp_path):
    claim = {"claim": "c", "statement": "x is positive", "statistic": "x", "estimate": 1.0, "null": 0.0,
             "log_scale": False, "leave_one_bin_out": [0.5, 1.2], "reading": "supported", "why": ""}  # fmt: skip
    kinds = ("bins", "bins_bca", "crossed", "documents", "queries")
    claim["intervals"] = {kind: [0.2 + 0.01 * k, 1.8] for k, kind in enumerate(kinds)}
    analysis_figures.verdict_forest([claim, {**claim, "claim": "r", "log_scale": True, "null": 1.0}], tmp_path / "v.png", 0.95)
    assert (tmp_path / "v.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

"""`capatlas unlearning-summary`: damage per run and paired statistics per target benchmark.

For every run and every evaluated benchmark, gamma = baseline - after on
each metric (acc, acc_norm, logprob, logprob_per_char): positive gamma is
damage. ``unlearning/summary.parquet`` holds them in long form.

Paired statistics (``unlearning/paired_stats.parquet``), per target
benchmark, metric in ``unlearning.stats.metrics`` and pair of conditions
(influence vs random within the unit; global_influence vs global_random):

- d = gamma_target(influence-ranked) - gamma_target(random), paired by unit
  and seed (a *cell*): d > 0 means the influence-ranked documents carried
  more of the capability than size-matched random documents of the same
  region. The unit is the independent replicate: its influence forget set
  is the same in every seed, so a unit's cells are correlated.
- Primary tests, over the per-unit means of d (the study's test over
  topics): ``t_p``, a one-sided one-sample t-test, and ``wilcoxon_p``, a
  one-sided Wilcoxon signed-rank test. With fewer than 3 units neither is
  computed and ``primary_test`` says so; there is no fallback to cells.
- Secondary, labelled so: ``cells_wilcoxon_p`` over the (unit, seed) cells,
  which treats correlated cells as independent (pseudo-replication).
- ``*_p_bh``: Benjamini-Hochberg over every p-value reported (all targets,
  metrics, condition pairs and the three tests) as one family.
- ``mean_d`` and ``median_d`` with percentile CIs from a cluster bootstrap
  (units, then seeds within each drawn unit; ``ci_method``); Cohen's
  ``d_z`` = mean(d) / sd(d) over cells and ``d_z_units`` over unit means.
- selectivity: mean signed gamma on the target minus mean signed gamma on
  the other benchmarks, over the pair's influence runs (and its random
  runs); > 0 is selective, and an improvement elsewhere does not count as
  damage. ``*_chance`` divides each gamma by the benchmark's baseline minus
  chance first (accuracy metrics), so 3-way and 4-way benchmarks compare.

Figures (``figures/unlearning_paired_<metric>.png``: d per unit with each
seed and a 95% t interval; ``figures/unlearning_damage_<metric>.png``:
mean gamma on every benchmark per target and condition).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from scipy import stats

from capatlas.command import Command
from capatlas.errors import CapatlasError
from capatlas.plan import PAIRS, PlannedRun, planned_runs
from capatlas.fileio import atomic_path, write_json, write_parquet

log = logging.getLogger(__name__)

COMMAND = Command(config_help="capatlas config (key unlearning)")

METRICS = ("acc", "acc_norm", "logprob", "logprob_per_char")


# ------------------------------------------------------------------ gamma


def run_record(run: PlannedRun, unlearning_dir: Path, lora: bool) -> dict:
    """A run's eval.json; missing outputs are errors naming the run."""
    run_dir = unlearning_dir / run.path
    eval_path = run_dir / "eval.json"
    if not eval_path.is_file():
        raise CapatlasError(f"{run.name}: {eval_path} does not exist (the run has not finished)")
    model_dir = run_dir / ("adapter" if lora else "checkpoint")
    marker = "adapter_config.json" if lora else "config.json"
    if not (model_dir / marker).is_file():
        raise CapatlasError(f"{run.name}: its {'adapter' if lora else 'checkpoint'} {model_dir} is missing")
    return json.loads(eval_path.read_text())


def gamma_table(runs: Sequence[PlannedRun], records: Sequence[dict], baseline: dict) -> pd.DataFrame:
    """Long table: one row per (run, benchmark, metric) with baseline, after and gamma."""
    rows = []
    for run, record in zip(runs, records):
        for bench, after in record["benchmarks"].items():
            if bench not in baseline:
                raise CapatlasError(f"{run.name}: benchmark '{bench}' is not in the baseline evaluation")
            for metric in METRICS:
                before = float(baseline[bench][metric])
                rows.append(
                    {
                        "target": run.target,
                        "unit_slot": run.unit,
                        "unit": record["run"].get("unit") or run.unit,
                        "condition": run.condition,
                        "seed": run.seed,
                        "benchmark": bench,
                        "is_target": bench == run.target,
                        "metric": metric,
                        "baseline": before,
                        "chance": float(baseline[bench].get("chance", float("nan"))),
                        "after": float(after[metric]),
                        "gamma": before - float(after[metric]),
                        "steps": int(record.get("steps", 0)),
                        "stop_reason": record.get("stop_reason", ""),
                        "dose": record.get("dose", "independent"),
                    }
                )
    return pd.DataFrame(rows)


def paired_differences(summary: pd.DataFrame, metric: str, influence: str, random: str) -> pd.DataFrame:
    """d per (target, unit slot, seed) on the target benchmark: gamma(influence) - gamma(random)."""
    on_target = summary[(summary["is_target"]) & (summary["metric"] == metric)]
    keys = ["target", "unit_slot", "seed"]
    left = on_target[on_target["condition"] == influence].set_index(keys)
    right = on_target[on_target["condition"] == random].set_index(keys)
    joined = left[["unit", "gamma"]].rename(columns={"gamma": "gamma_influence"})
    joined = joined.join(right[["gamma"]].rename(columns={"gamma": "gamma_random"}), how="inner").reset_index()
    joined["d"] = joined["gamma_influence"] - joined["gamma_random"]
    return joined.sort_values(keys, kind="mergesort").reset_index(drop=True)


def mean_damage(summary: pd.DataFrame, metric: str, condition: str) -> pd.DataFrame:
    """Mean gamma of `condition`'s runs on every benchmark (columns), per target (rows): a target's own
    column against the others says whether its forget sets cost it most."""
    rows = summary[(summary["metric"] == metric) & (summary["condition"] == condition)]
    return rows.groupby(["target", "benchmark"])["gamma"].mean().unstack("benchmark")


# ------------------------------------------------------------------ tests


def wilcoxon_greater(d: np.ndarray) -> float:
    d = np.asarray(d, dtype=np.float64)
    if len(d) < 2 or np.all(d == 0):
        return float("nan")
    return float(stats.wilcoxon(d, alternative="greater").pvalue)


def _constant(values: np.ndarray) -> bool:
    # Accuracy differences such as 2/24 - 1/24 repeat up to rounding; an sd of
    # 1e-17 would turn into a t of 1e15 and a p of 1e-16.
    return bool(np.ptp(values) <= 1e-9 * max(1.0, float(np.abs(values).max())))


def ttest_greater(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2 or _constant(values):
        return float("nan")
    return float(stats.ttest_1samp(values, 0.0, alternative="greater").pvalue)


def cohens_dz(d: np.ndarray) -> float:
    d = np.asarray(d, dtype=np.float64)
    if len(d) < 2:
        return float("nan")
    if _constant(d):
        return float("nan")
    return float(np.mean(d) / np.std(d, ddof=1))


MIN_UNITS = 3  # fewer units than this: no test over units is reported
CI_METHOD = "cluster bootstrap (units, then seeds within each drawn unit), percentile"


def cluster_bootstrap_ci(
    cells: pd.DataFrame, statistic, *, confidence: float, n_resamples: int, seed: int
) -> tuple[float, float]:
    """CI of `statistic` over cells, resampling units and then each drawn unit's seeds (both with replacement).

    The unit is what is independent: a unit's influence forget set is the
    same in every seed, so its cells are correlated, and resampling cells
    alone would understate the uncertainty. Percentile interval.
    """
    groups = [g["d"].to_numpy(dtype=np.float64) for _, g in cells.groupby("unit_slot", sort=True)]
    values = np.concatenate(groups) if groups else np.array([])
    if len(values) < 2:
        return float("nan"), float("nan")
    if np.all(values == values[0]):
        return float(values[0]), float(values[0])
    rng = np.random.default_rng(seed)
    replicates = np.empty(n_resamples)
    for r in range(n_resamples):
        drawn = rng.integers(0, len(groups), size=len(groups))
        replicates[r] = statistic(np.concatenate([groups[u][rng.integers(0, len(groups[u]), len(groups[u]))] for u in drawn]))
    alpha = (1.0 - confidence) / 2.0
    return float(np.quantile(replicates, alpha)), float(np.quantile(replicates, 1.0 - alpha))


def bh(pvalues: Sequence[float]) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values; NaN (untestable) entries stay NaN and do not count."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full_like(p, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = stats.false_discovery_control(p[ok], method="bh")
    return out


def selectivity(summary: pd.DataFrame, metric: str, condition: str, target: str, *, per_chance: bool = False) -> float:
    """Mean signed damage on the target minus mean signed damage on the other benchmarks (> 0: selective).

    Signed: an improvement elsewhere is not damage. With `per_chance`,
    each gamma is first divided by its benchmark's baseline minus chance
    (the share of above-chance accuracy lost), so 3-way and 4-way
    benchmarks compare; accuracy metrics only.
    """
    rows = summary[(summary["metric"] == metric) & (summary["condition"] == condition) & (summary["target"] == target)]
    damage = rows["gamma"]
    if per_chance:
        if metric not in ("acc", "acc_norm"):
            return float("nan")
        above = rows["baseline"] - rows["chance"]
        damage = damage / above.where(above > 0)
    on, off = damage[rows["is_target"]].mean(), damage[~rows["is_target"]].mean()
    if not np.isfinite(on) or not np.isfinite(off):
        return float("nan")
    return float(on - off)


def _target_row(cells: pd.DataFrame, summary: pd.DataFrame, pair: tuple[str, str], target: str, metric: str,
                *, confidence: float, n_resamples: int, seed: int) -> dict:  # fmt: skip
    influence, random = pair
    d = cells["d"].to_numpy()
    unit_means = cells.groupby("unit_slot")["d"].mean().to_numpy()
    testable = len(unit_means) >= MIN_UNITS
    bootstrap = {"confidence": confidence, "n_resamples": n_resamples, "seed": seed}
    median_low, median_high = cluster_bootstrap_ci(cells, np.median, **bootstrap)
    mean_low, mean_high = cluster_bootstrap_ci(cells, np.mean, **bootstrap)
    return {
        "pair": f"{influence}-{random}",
        "target": target,
        "metric": metric,
        "n_cells": len(d),
        "n_units": len(unit_means),
        "n_positive": int((d > 0).sum()),
        "mean_d": float(np.mean(d)),
        "mean_ci_low": mean_low,
        "mean_ci_high": mean_high,
        "median_d": float(np.median(d)),
        "median_ci_low": median_low,
        "median_ci_high": median_high,
        "ci_method": CI_METHOD,
        "d_z": cohens_dz(d),
        "d_z_units": cohens_dz(unit_means),
        "primary_test": (
            f"over {len(unit_means)} unit means"
            if testable
            else f"not possible: {len(unit_means)} unit(s), a test over units needs {MIN_UNITS}"
        ),
        "t_p": ttest_greater(unit_means) if testable else float("nan"),
        "wilcoxon_p": wilcoxon_greater(unit_means) if testable else float("nan"),
        "cells_wilcoxon_p": wilcoxon_greater(d),
        "selectivity_influence": selectivity(summary, metric, influence, target),
        "selectivity_random": selectivity(summary, metric, random, target),
        "selectivity_influence_chance": selectivity(summary, metric, influence, target, per_chance=True),
        "selectivity_random_chance": selectivity(summary, metric, random, target, per_chance=True),
    }


P_VALUES = ("t_p", "wilcoxon_p", "cells_wilcoxon_p")


def paired_stats(summary: pd.DataFrame, metrics: Sequence[str], *, confidence: float, n_resamples: int, seed: int):
    """One row per (pair, target, metric); every reported p-value BH-adjusted in one family."""
    rows = []
    for pair in PAIRS:
        for metric in metrics:
            cells = paired_differences(summary, metric, *pair)
            for target, group in cells.groupby("target", sort=False):
                rows.append(
                    _target_row(group, summary, pair, target, metric,
                                confidence=confidence, n_resamples=n_resamples, seed=seed)
                )  # fmt: skip
    adjusted = bh([row[key] for key in P_VALUES for row in rows])
    for k, key in enumerate(P_VALUES):
        for j, row in enumerate(rows):
            row[f"{key}_bh"] = float(adjusted[k * len(rows) + j])
    columns = [
        "pair", "target", "metric", "n_cells", "n_units", "n_positive", "mean_d", "mean_ci_low", "mean_ci_high",
        "median_d", "median_ci_low", "median_ci_high", "ci_method", "d_z", "d_z_units", "primary_test",
        "t_p", "t_p_bh", "wilcoxon_p", "wilcoxon_p_bh", "cells_wilcoxon_p", "cells_wilcoxon_p_bh",
        "selectivity_influence", "selectivity_random", "selectivity_influence_chance", "selectivity_random_chance",
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


# ---------------------------------------------------------------- figures


METRIC_LABELS = {
    "acc": "accuracy",
    "acc_norm": "accuracy (per char)",
    "logprob": "answer log-prob",
    "logprob_per_char": "answer log-prob per char",
}


def plot_paired(cells: pd.DataFrame, metric: str, path: Path, confidence: float) -> None:
    """d per unit: each seed as a dot, the unit mean with a t interval over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = list(dict.fromkeys(cells["target"]))
    fig, axes = plt.subplots(1, max(1, len(targets)), figsize=(3.2 * max(1, len(targets)), 3.6), squeeze=False)
    for ax, target in zip(axes[0], targets):
        group = cells[cells["target"] == target]
        units = list(dict.fromkeys(group["unit"]))
        for x, unit in enumerate(units):
            d = group.loc[group["unit"] == unit, "d"].to_numpy()
            # Seeds in a short strip left of the mean, so neither hides the other.
            ax.scatter(np.full(len(d), x - 0.2) + np.linspace(-0.05, 0.05, len(d)), d, s=14, color="0.55", zorder=2)
            mean = d.mean()
            half = (
                stats.t.ppf(0.5 + confidence / 2, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else 0
            )
            ax.errorbar(x, mean, yerr=half, fmt="o", color="C3", capsize=4, zorder=3)
        ax.axhline(0, color="black", lw=0.8)
        # Without explicit limits one unit's axis spans only its seed strip.
        ax.set_xlim(-0.6, len(units) - 0.4)
        ax.set_xticks(range(len(units)), units, rotation=45, ha="right", fontsize=7)
        ax.set_title(target, fontsize=9)
    axes[0][0].set_ylabel(f"d = gamma(influence)\n- gamma(random)\n{METRIC_LABELS[metric]}")
    if targets:
        axes[0][-1].legend(
            handles=[
                plt.Line2D([], [], ls="", marker="o", ms=4, color="0.55", label="seeds"),
                plt.Line2D([], [], ls="-", marker="o", color="C3", label=f"mean, {confidence:.0%} CI"),
            ],
            fontsize=7,
            loc="best",
        )
    if not targets:
        axes[0][0].text(0.5, 0.5, "no paired runs", ha="center", va="center", transform=axes[0][0].transAxes)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=130)
    plt.close(fig)


def plot_damage(summary: pd.DataFrame, metric: str, path: Path) -> None:
    """Mean gamma on every benchmark, per target (panel) and condition (bar colour); the target is outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary[summary["metric"] == metric]
    targets = list(dict.fromkeys(rows["target"]))
    benches = list(dict.fromkeys(rows["benchmark"]))
    conditions = list(dict.fromkeys(rows["condition"]))
    fig, axes = plt.subplots(1, max(1, len(targets)), figsize=(3.4 * max(1, len(targets)), 3.6), squeeze=False)
    width = 0.8 / max(1, len(conditions))
    for ax, target in zip(axes[0], targets):
        sub = rows[rows["target"] == target]
        for c, condition in enumerate(conditions):
            part = sub[sub["condition"] == condition].groupby("benchmark")["gamma"]
            means = part.mean().reindex(benches)
            sems = part.sem().reindex(benches).fillna(0)
            xs = np.arange(len(benches)) + (c - (len(conditions) - 1) / 2) * width
            bars = ax.bar(xs, means, width, yerr=sems, capsize=2, color=f"C{c}", label=condition)
            for bar, bench in zip(bars, benches):
                if bench == target:
                    bar.set_edgecolor("black")
                    bar.set_linewidth(1.5)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(range(len(benches)), benches, rotation=45, ha="right", fontsize=7)
        ax.set_title(f"unlearn for {target}", fontsize=9)
    axes[0][0].set_ylabel(f"gamma = baseline - after\n{METRIC_LABELS[metric]}")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=130)
    plt.close(fig)


# -------------------------------------------------------------------- run


def summarise(config: dict, baseline_path: Path, unlearning_dir: Path, figures_dir: Path) -> dict:
    if not baseline_path.is_file():
        raise CapatlasError(f"baseline evaluation {baseline_path} does not exist (run capatlas evaluate)")
    baseline = json.loads(baseline_path.read_text())["benchmarks"]
    section = config["unlearning"]
    runs = planned_runs(config)
    if not runs:
        raise CapatlasError("the config plans no unlearning runs (unlearning.forget.conditions / targets)")
    records = [run_record(run, unlearning_dir, section["lora"]["enabled"]) for run in runs]
    summary = gamma_table(runs, records, baseline)
    stats_cfg = section["stats"]
    paired = paired_stats(
        summary,
        stats_cfg["metrics"],
        confidence=stats_cfg["confidence"],
        n_resamples=stats_cfg["bootstrap_resamples"],
        seed=int(config["seed"]),
    )
    write_parquet(pa.Table.from_pandas(summary, preserve_index=False), unlearning_dir / "summary.parquet")
    write_parquet(pa.Table.from_pandas(paired, preserve_index=False), unlearning_dir / "paired_stats.parquet")
    figures = []
    for metric in stats_cfg["metrics"]:
        cells = paired_differences(summary, metric, "influence", "random")
        figures.append(figures_dir / f"unlearning_paired_{metric}.png")
        plot_paired(cells, metric, figures[-1], stats_cfg["confidence"])
        figures.append(figures_dir / f"unlearning_damage_{metric}.png")
        plot_damage(summary, metric, figures[-1])
    result = {
        "runs": len(runs),
        "paired": json.loads(paired.to_json(orient="records")),
        "figures": [str(f) for f in figures],
    }
    write_json(result, unlearning_dir / "summary.json")
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--baseline", required=True, help="eval/base.json")
    parser.add_argument("--unlearning-dir", required=True, help="the unlearning/ directory holding every run")
    parser.add_argument("--figures", required=True, help="directory for the figures")


def run(args: argparse.Namespace, config: dict | None) -> None:
    result = summarise(config, Path(args.baseline), Path(args.unlearning_dir), Path(args.figures))
    for row in result["paired"]:
        log.info(
            "%s %s %s: median d %.4g [%.4g, %.4g], t over units p_BH %.3g (%s), %d/%d cells > 0",
            row["pair"], row["target"], row["metric"], row["median_d"], row["median_ci_low"],
            row["median_ci_high"], row["t_p_bh"], row["primary_test"], row["n_positive"], row["n_cells"],
        )  # fmt: skip

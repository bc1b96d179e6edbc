"""Standardised and robust effects of the 2 x 2 contrast, and how sure the "largest" unit is.

The study's topic (format) contrast is the mean over the unit's bins of
dz_b = z_social,b - z_stem,b at a capability level: a mean difference in
z units (`mean_dz`), not a standardised effect. Beside it, for every topic
and format at each level, over the unit's bins:

* ``d_z`` = mean(dz) / sd(dz) (ddof 1), Cohen's d_z of the paired bin
  differences, with the exact interval from the noncentral t distribution
  (the noncentrality that puts the observed t at each tail, divided by
  sqrt(n); it assumes normal bin differences, which heavy-tailed profiles
  violate: read it beside the robust centres);
* the t interval of ``mean_dz`` (mean +- t_{n-1} sd / sqrt(n));
* ``median_dz`` and ``trimmed_mean_dz`` (20% cut from each end,
  scipy.stats.trim_mean): centres that one extreme bin cannot carry.

`argmax_probabilities` turns bootstrap replicates of a contrast into the
share of replicates in which each unit is the largest: the selection
uncertainty a reported maximum of 24 hides.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import optimize, stats

TRIM = 0.2


def _solve_noncentrality(t: float, df: int, tail: float, upper: bool) -> float:
    """The noncentrality lam with P(T >= t | lam) = tail (lower end) or P(T <= t | lam) = tail (upper end)."""

    def gap(lam: float) -> float:
        return (stats.nct.cdf(t, df, lam) if upper else stats.nct.sf(t, df, lam)) - tail

    # gap rises (lower end) or falls (upper end) with lam; widen a bracket around t until it holds the root.
    width = 2.0 + abs(t)
    low, high = t - width, t + width
    while gap(low) * gap(high) > 0 and width < 1e4:
        width *= 2
        low, high = t - width, t + width
    return float(optimize.brentq(gap, low, high, xtol=1e-10))


def d_z_interval(d_z: float, n: int, level: float) -> tuple[float, float]:
    """The exact `level` interval of Cohen's d_z from n paired differences (noncentral t inversion)."""
    if n < 2 or not np.isfinite(d_z):
        return (np.nan, np.nan)
    t, tail = d_z * np.sqrt(n), (1 - level) / 2
    low = _solve_noncentrality(t, n - 1, tail, upper=False)
    high = _solve_noncentrality(t, n - 1, tail, upper=True)
    return (low / np.sqrt(n), high / np.sqrt(n))


def unit_effect(dz: np.ndarray, level: float) -> dict:
    """Every effect of one unit from its bins' differences dz."""
    n = len(dz)
    mean = float(np.mean(dz)) if n else np.nan
    sd = float(np.std(dz, ddof=1)) if n > 1 else np.nan
    d_z = mean / sd if n > 1 and sd > 0 else np.nan
    half = stats.t.ppf((1 + level) / 2, n - 1) * sd / np.sqrt(n) if n > 1 else np.nan
    d_low, d_high = d_z_interval(d_z, n, level)
    return {
        "n_bins": n,
        "mean_dz": mean,
        "mean_dz_ci_low": mean - half,
        "mean_dz_ci_high": mean + half,
        "sd_dz": sd,
        "d_z": d_z,
        "d_z_ci_low": d_low,
        "d_z_ci_high": d_high,
        "median_dz": float(np.median(dz)) if n else np.nan,
        "trimmed_mean_dz": float(stats.trim_mean(dz, TRIM)) if n else np.nan,
    }


def facet_effects(
    level_contrasts: Mapping[str, np.ndarray], facets: Mapping[str, tuple[Sequence[str], np.ndarray]], level: float
) -> pd.DataFrame:
    """One row per (facet, capability level, unit).

    `level_contrasts`: {level: dz per bin}; `facets`: {facet: (unit slugs, each bin's unit index)}.
    """
    rows = []
    for facet, (slugs, groups) in facets.items():
        for capability, dz in level_contrasts.items():
            for u, slug in enumerate(slugs):
                members = dz[groups == u]
                rows.append({"facet": facet, "level": capability, "unit": slug, **unit_effect(members, level)})
    return pd.DataFrame(rows)


def largest_d_z(effects: pd.DataFrame) -> dict:
    """Per facet: the unit of largest |d_z| at each level, and reasoning's over knowledge's (the study's ratio, standardised)."""
    out = {}
    for facet, part in effects.groupby("facet", sort=False):
        entry = {}
        for capability, rows in part.groupby("level", sort=False):
            rows = rows[np.isfinite(rows["d_z"])]
            if rows.empty:
                entry[capability] = None
                continue
            top = rows.loc[rows["d_z"].abs().idxmax()]
            entry[capability] = {"unit": top["unit"], "d_z": float(top["d_z"]), "mean_dz": float(top["mean_dz"])}
        both = entry.get("reasoning") and entry.get("knowledge")
        entry["ratio_max_abs_d_z"] = abs(entry["reasoning"]["d_z"]) / abs(entry["knowledge"]["d_z"]) if both else None
        out[facet] = entry
    return out


def argmax_probabilities(replicates: np.ndarray, units: Sequence[str]) -> dict[str, float]:
    """{unit: share of replicates ([B, n_units]) in which it is the largest}, largest share first; rows without a finite value are skipped."""
    finite = np.isfinite(replicates).any(axis=1)
    if not finite.any():
        return {}
    winners = np.nanargmax(np.where(np.isfinite(replicates[finite]), replicates[finite], -np.inf), axis=1)
    counts = np.bincount(winners, minlength=len(units)) / finite.sum()
    order = np.argsort(-counts, kind="stable")
    return {units[i]: float(counts[i]) for i in order if counts[i] > 0}

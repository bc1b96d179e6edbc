"""The verdict: each of the study's analysis claims, our estimate with its intervals, and a plain reading.

A claim is a statistic of the contrast analysis, the value that means "no
effect", and the side the study claims. Its estimate, its interval under
every resampling the contrast ran (bins; documents and queries for our own
matrix) and its range when each bin is left out in turn give the reading:

* supported: the estimate is on the claimed side, every interval excludes
  the null, and no single bin's removal crosses it;
* fragile: the estimate is on the claimed side, but an interval includes
  the null or leaving out one bin crosses it;
* not supported: the estimate is not on the claimed side.

The bins bootstrap's interval is read both as percentile and as BCa
(`bins_bca`, its jackknife the leave-one-bin-out values). Ratios are read (and drawn) on a log scale, where "no effect" is 0 as for
the differences.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from capatlas.analysis.influence import bca_interval, percentile_ci


@dataclass(frozen=True)
class Claim:
    name: str
    statement: str  # the study's reading, in its words where it has them
    statistic: str  # what our estimate is
    null: float
    log_scale: bool
    # statistic values (by key) -> the claim's estimate; NaN where a key is missing
    value: Callable[[Mapping[str, float]], float]


def study_claims(benchmarks: Mapping[tuple[str, str], Sequence[str]], top_reasoning_topic: str) -> list[Claim]:
    """The study's three analysis claims for a 2 x 2 design ({(domain, capability): benchmark names})."""
    (sr,) = benchmarks[("social", "reasoning")][:1]
    others = [b for cell, names in benchmarks.items() if cell != ("social", "reasoning") for b in names[:1]]

    def apart(kind: str) -> Callable[[Mapping[str, float]], float]:
        def r(values: Mapping[str, float], a: str, b: str) -> float:
            return values.get(f"{kind}/{a}/{b}", values.get(f"{kind}/{b}/{a}", np.nan))

        def gap(values: Mapping[str, float]) -> float:
            among = [r(values, a, b) for i, a in enumerate(others) for b in others[i + 1 :]]
            return min(among) - max(r(values, sr, o) for o in others)

        return gap

    return [
        Claim(
            "profile_apart",
            f"{sr}'s bin profile stands apart; the other three correlate strongly",
            f"lowest Pearson r among the other three minus highest r of {sr} with them",
            0.0,
            False,
            apart("pearson"),
        ),
        Claim(
            "profile_apart_spearman",
            f"the same, in ranks ({sr}'s bin z are heavy-tailed)",
            f"lowest Spearman rho among the other three minus highest rho of {sr} with them",
            0.0,
            False,
            apart("spearman"),
        ),
        Claim(
            "sharper_at_reasoning",
            "the social-STEM contrast is sharper at the reasoning level (max |dz| over topics)",
            "topic max |mean_dz|, reasoning over knowledge",
            1.0,
            True,
            lambda values: values.get("sharpness/topic/max_abs/ratio", np.nan),
        ),
        Claim(
            "top_reasoning_topic",
            f"{top_reasoning_topic} carries the social reasoning contrast",
            f"topic contrast (mean_dz) of {top_reasoning_topic} at the reasoning level",
            0.0,
            False,
            lambda values: values.get(f"topic_contrast/reasoning/{top_reasoning_topic}", np.nan),
        ),
    ]


def _on_axis(claim: Claim, value: float) -> float:
    """The value on the claim's axis, where the null is 0 and the claimed side positive."""
    if not np.isfinite(value):
        return np.nan
    if claim.log_scale:
        return float(np.log(value / claim.null)) if value > 0 else -np.inf
    return float(value - claim.null)


def _column(claim: Claim, keys: Sequence[str], rows: np.ndarray) -> np.ndarray:
    return np.array([claim.value(dict(zip(keys, row))) for row in rows])


def assess(
    claim: Claim,
    observed: Mapping[str, float],
    keys: Sequence[str],
    resampled: Mapping[str, np.ndarray],
    leave_one_out: np.ndarray,
    ci_level: float,
) -> dict:
    """The claim's estimate, percentile intervals per resampling, leave-one-bin-out range and reading."""
    estimate = claim.value(observed)
    intervals = {}
    columns = {kind: _column(claim, keys, reps) for kind, reps in resampled.items()}
    for kind, column in columns.items():
        if np.isfinite(column).any():
            low, high = percentile_ci(column, ci_level)
            intervals[kind] = [float(low), float(high)]
    loo = _column(claim, keys, leave_one_out)
    loo_range = [float(np.nanmin(loo)), float(np.nanmax(loo))] if np.isfinite(loo).any() else None
    if "bins" in columns:
        # BCa beside the bins' percentile interval: the leave-one-bin-out values are its jackknife.
        low, high = bca_interval(estimate, columns["bins"], loo, ci_level)
        if np.isfinite(low) and np.isfinite(high):
            intervals["bins_bca"] = [low, high]
    axis = _on_axis(claim, estimate)
    if not axis > 0:
        reading, why = "not supported", "the estimate is not on the claimed side"
    else:
        crossing = [kind for kind, (low, _) in intervals.items() if not _on_axis(claim, low) > 0]
        loo_crosses = loo_range is not None and not _on_axis(claim, loo_range[0]) > 0
        if crossing or loo_crosses:
            reasons = [f"the {kind} interval includes no effect" for kind in crossing]
            reasons += ["leaving out one bin crosses no effect"] if loo_crosses else []
            reading, why = "fragile", "; ".join(reasons)
        else:
            reading, why = "supported", "every interval and every leave-one-bin-out value on the claimed side"
    return {
        "claim": claim.name,
        "statement": claim.statement,
        "statistic": claim.statistic,
        "estimate": float(estimate),
        "null": claim.null,
        "log_scale": claim.log_scale,
        "intervals": intervals,
        "leave_one_bin_out": loo_range,
        "reading": reading,
        "why": why,
    }

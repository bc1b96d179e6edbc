"""`capatlas contrast`: the 2 x 2 analysis of a bin-level influence matrix.

Input (``--bin-matrix``): our ``influence/bin_matrix.parquet`` (with its
``bin_bootstrap.npz`` beside it, when present, for document- and
query-level CIs), or a directory of CSVs in the study's released layout
(``zscored_<benchmark>.csv``: topic_label, format_label, mean_score,
zscore, doc_count; labels may be slugs, names or ids).

Every statistic starts from the bin means of each benchmark, z-scored
across the bins used (ddof = 1). Bins empty in any benchmark are left out.
The 2 x 2 roles (domain social/stem, capability reasoning/knowledge) come
from the config's ``benchmarks`` entries, else from defaults for the
study's four benchmarks; a cell held by several benchmarks uses the mean
of their z profiles.

Definitions (README, "Analysis"):

* profile correlations: Pearson and Spearman between benchmarks' bin z;
* contrast at a capability level: dz = z(social) - z(stem) per bin;
  its topic (format) value = mean over the topic's (format's) bins, which
  equals the difference of the topic marginals (mean of bin z);
* sharpness: reasoning over knowledge for max |dz|, sd (ddof = 1) and
  range of the contrast at topic, format and bin level;
* interaction per bin: dz(reasoning) - dz(knowledge).

Uncertainty: ``ci_bins`` resamples the bins with replacement and recomputes
everything (z included); ``ci_crossed`` resamples topics and formats;
``ci_combined`` (documents and queries resampled together: the primary
interval of our own matrices), ``ci_documents`` and ``ci_queries`` (its
one-way components) recompute every statistic on each bootstrap replicate
of the bin means written by `capatlas influence`. Permutation p-values: sharpness swaps each bin's
reasoning and knowledge contrast at random (one-sided, reasoning sharper);
the per-bin interaction is compared with a null pooled over bins in which
each cell's z profile is permuted across bins independently (two-sided),
and Benjamini-Hochberg q-values are taken over the bins. Robustness: each
statistic is recomputed leaving out each bin in turn, and with median
instead of mean marginals.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats
from tqdm import tqdm

from capatlas.command import Command
from capatlas.errors import CapatlasError
from capatlas.analysis import effects, verdict
from capatlas.analysis.influence import bca_interval, percentile_ci, zscore
from capatlas.artifacts.bin_matrix import (
    BOOTSTRAP_FILE,
    REPLICATE_KINDS,
    read_bin_matrix,
    read_bootstrap,
    read_influence_provenance,
)
from capatlas.fileio import write_json, write_parquet
from capatlas.taxonomy import FORMAT_SLUGS, N_BINS, N_FORMATS, N_TOPICS, TOPIC_SLUGS, resolve_format, resolve_topic

log = logging.getLogger(__name__)

COMMAND = Command(config="optional", config_help="capatlas config: benchmark roles, seed, analysis settings (default: the schema's, the study's roles)")

SUMMARY_FILE = "summary.json"
INTERACTION_FILE = "interaction.parquet"
TOPIC_CONTRAST_FILE = "topic_contrast.parquet"
FACET_EFFECTS_FILE = "facet_effects.parquet"
FORMAT_CONTRAST_FILE = "format_contrast.parquet"
LOO_FILE = "leave_one_bin_out.parquet"
RECOVERY_FILE = "demo_recovery.json"

DOMAINS = ("social", "stem")
LEVELS = ("reasoning", "knowledge")
MEASURES = ("max_abs", "sd", "range")
FACETS = {"topic": (TOPIC_SLUGS, N_TOPICS), "format": (FORMAT_SLUGS, N_FORMATS)}

# The study's benchmarks under the names used by our configs and by its released CSVs.
DEFAULT_ROLES: dict[str, tuple[str, str]] = {
    "socialiqa": ("social", "reasoning"),
    "social_i_qa": ("social", "reasoning"),
    "siqa": ("social", "reasoning"),
    "mmlu_social_sciences": ("social", "knowledge"),
    "mmlu_social_science": ("social", "knowledge"),
    "arc_challenge": ("stem", "reasoning"),
    "mmlu_stem": ("stem", "knowledge"),
}


# --------------------------------------------------------------------------- input


@dataclass
class BinMatrix:
    """Bin means of each benchmark over the 576 bins (NaN = empty), plus what came with them."""

    benchmarks: list[str]
    means: np.ndarray  # [nb, 576]
    n_docs: np.ndarray  # [nb, 576] (-1 where unknown)
    source: str
    kind: str  # "capatlas" or "paper_csv"
    replicates: dict[str, np.ndarray]  # kind -> [nb, B, 576]
    table: pd.DataFrame | None = None  # our parquet, for CIs in top_bins


def _csv_benchmark(path: Path) -> str:
    return re.sub(r"^zscored_", "", path.stem)


def read_paper_csvs(directory: Path) -> BinMatrix:
    files = sorted(directory.glob("*.csv"))
    if not files:
        raise CapatlasError(f"{directory} holds no *.csv bin matrices (expected zscored_<benchmark>.csv)")
    names, means, counts = [], [], []
    for path in files:
        frame = pd.read_csv(path)
        if "topic_label" not in frame or "format_label" not in frame:
            raise CapatlasError(f"{path} lacks the columns topic_label and format_label")
        value_column = "mean_score" if "mean_score" in frame else "zscore" if "zscore" in frame else None
        if value_column is None:
            raise CapatlasError(f"{path} has neither a mean_score nor a zscore column")
        row_means = np.full(N_BINS, np.nan)
        row_counts = np.full(N_BINS, -1, dtype=np.int64)
        seen = set()
        for i, row in enumerate(frame.itertuples(index=False)):
            try:
                b = resolve_topic(row.topic_label) * N_FORMATS + resolve_format(row.format_label)
            except CapatlasError as exc:
                raise CapatlasError(f"{path}, row {i + 2}: {exc}") from None
            if b in seen:
                raise CapatlasError(f"{path}, row {i + 2}: bin {row.topic_label} x {row.format_label} appears twice")
            seen.add(b)
            row_means[b] = float(getattr(row, value_column))
            if "doc_count" in frame:
                row_counts[b] = int(row.doc_count)
        if "doc_count" in frame:
            row_means[row_counts == 0] = np.nan
        names.append(_csv_benchmark(path))
        means.append(row_means)
        counts.append(row_counts)
    return BinMatrix(names, np.array(means), np.array(counts), str(directory), "paper_csv", {})


def read_bin_matrix_parquet(path: Path) -> BinMatrix:
    frame = read_bin_matrix(path)
    names = list(dict.fromkeys(frame["benchmark"]))
    means = np.full((len(names), N_BINS), np.nan)
    counts = np.zeros((len(names), N_BINS), dtype=np.int64)
    for j, name in enumerate(names):
        part = frame[frame["benchmark"] == name]
        bins = part["bin_id"].to_numpy()
        if len(np.unique(bins)) != len(bins) or bins.min() < 0 or bins.max() >= N_BINS:
            raise CapatlasError(f"{path}: benchmark {name!r} has repeated or invalid bin_id values")
        means[j, bins] = part["mean"].to_numpy(dtype=np.float64)
        counts[j, bins] = part["n_docs"].to_numpy()
    means[counts == 0] = np.nan
    replicates = {}
    boot_path = path.parent / BOOTSTRAP_FILE
    if boot_path.is_file():
        boot = read_bootstrap(boot_path, read_influence_provenance(path))
        if set(boot) >= set(names):
            for kind in REPLICATE_KINDS:
                stack = np.stack([boot[n][kind] for n in names])
                if stack.shape[1]:
                    replicates[kind] = stack
        else:
            log.warning("%s lacks benchmarks of %s; no document/query CIs", boot_path, path)
    return BinMatrix(names, means, counts, str(path), "capatlas", replicates, frame)


def read_any(path: str | os.PathLike) -> BinMatrix:
    path = Path(path)
    if path.is_dir():
        return read_paper_csvs(path)
    if path.is_file():
        return read_bin_matrix_parquet(path)
    raise CapatlasError(f"--bin-matrix {path} does not exist (a bin_matrix.parquet or a directory of CSVs)")


# --------------------------------------------------------------------------- design


@dataclass(frozen=True)
class Design:
    benchmarks: tuple[str, ...]
    roles: dict[str, tuple[str, str]]  # name -> (domain, capability)

    def cell(self, domain: str, capability: str) -> list[int]:
        return [i for i, b in enumerate(self.benchmarks) if self.roles.get(b) == (domain, capability)]

    @property
    def complete(self) -> bool:
        return all(self.cell(d, c) for d in DOMAINS for c in LEVELS)


def design_for(benchmarks: Sequence[str], config_benchmarks: Sequence[Mapping] | None) -> Design:
    roles = {}
    configured = {b["name"]: (b["domain"], b["capability"]) for b in config_benchmarks or []}
    for name in benchmarks:
        if name in configured:
            roles[name] = configured[name]
        elif name in DEFAULT_ROLES:
            roles[name] = DEFAULT_ROLES[name]
    return Design(tuple(benchmarks), roles)


# --------------------------------------------------------------------------- statistics


def _facet_center(z: np.ndarray, groups: np.ndarray, size: int, center: str) -> np.ndarray:
    """Per-group mean (or median) of z over the last axis; NaN for a group without bins."""
    if center == "median":
        out = np.full(z.shape[:-1] + (size,), np.nan)
        for g in range(size):
            members = groups == g
            if members.any():
                out[..., g] = np.median(z[..., members], axis=-1)
        return out
    onehot = np.zeros((len(groups), size))
    onehot[np.arange(len(groups)), groups] = 1.0
    with np.errstate(invalid="ignore", divide="ignore"):
        return (z @ onehot) / onehot.sum(axis=0)


def _spread(values: np.ndarray) -> dict[str, np.ndarray]:
    """max |x|, sd (ddof = 1) and range along the last axis, ignoring NaN."""
    with np.errstate(invalid="ignore"):
        return {
            "max_abs": np.nanmax(np.abs(values), axis=-1),
            "sd": np.nanstd(values, axis=-1, ddof=1),
            "range": np.nanmax(values, axis=-1) - np.nanmin(values, axis=-1),
        }


def cell_profiles(z: np.ndarray, design: Design) -> dict[tuple[str, str], np.ndarray]:
    return {(d, c): z[..., design.cell(d, c), :].mean(axis=-2) for d in DOMAINS for c in LEVELS}


def level_contrasts(z: np.ndarray, design: Design) -> dict[str, np.ndarray]:
    """dz = z(social) - z(stem) per bin at each capability level."""
    cells = cell_profiles(z, design)
    return {level: cells[("social", level)] - cells[("stem", level)] for level in LEVELS}


def statistics(
    means: np.ndarray, topic_ids: np.ndarray, format_ids: np.ndarray, design: Design, *, center: str = "mean"
) -> dict[str, float]:
    """Every scalar statistic of one bin matrix ([nb, n_bins] means; bins as columns)."""
    z = zscore(means)
    out: dict[str, float] = {}
    names = design.benchmarks
    pearson = np.corrcoef(z)
    spearman = np.corrcoef(stats.rankdata(z, axis=1))
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            out[f"pearson/{names[i]}/{names[j]}"] = pearson[i, j]
            out[f"spearman/{names[i]}/{names[j]}"] = spearman[i, j]
    if not design.complete:
        return out
    cells = cell_profiles(z, design)
    contrasts = {}
    for facet, groups in (("topic", topic_ids), ("format", format_ids)):
        slugs, size = FACETS[facet]
        marginal = {key: _facet_center(profile, groups, size, center) for key, profile in cells.items()}
        for level in LEVELS:
            values = marginal[("social", level)] - marginal[("stem", level)]
            contrasts[(facet, level)] = values
            for u, slug in enumerate(slugs):
                out[f"{facet}_contrast/{level}/{slug}"] = values[u]
    for level in LEVELS:
        contrasts[("bin", level)] = cells[("social", level)] - cells[("stem", level)]
    for facet in ("topic", "format", "bin"):
        spread = {level: _spread(contrasts[(facet, level)]) for level in LEVELS}
        for measure in MEASURES:
            r, k = spread["reasoning"][measure], spread["knowledge"][measure]
            out[f"sharpness/{facet}/{measure}/reasoning"] = r
            out[f"sharpness/{facet}/{measure}/knowledge"] = k
            with np.errstate(invalid="ignore", divide="ignore"):
                out[f"sharpness/{facet}/{measure}/ratio"] = r / k
    return {k: float(v) for k, v in out.items()}


def bins_bootstrap(
    means: np.ndarray, topic_ids, format_ids, design: Design, names: list[str], n: int, seed: int
) -> np.ndarray:
    """[n, len(names)] statistics over bins resampled with replacement."""
    rng = np.random.default_rng([seed, 2])
    n_bins = means.shape[1]
    out = np.full((n, len(names)), np.nan)
    for r in tqdm(range(n), desc="contrast: bins bootstrap", unit="rep", mininterval=2):
        idx = rng.integers(0, n_bins, n_bins)
        values = statistics(means[:, idx], topic_ids[idx], format_ids[idx], design)
        out[r] = [values.get(k, np.nan) for k in names]
    return out


def crossed_draw(topic_ids: np.ndarray, format_ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Column indices of one crossed draw: topics and formats resampled with replacement, their bins crossed.

    Each drawn (topic, format) pair contributes its bin if the matrix uses it;
    a topic (format) drawn twice brings its bins twice, as the bins bootstrap
    repeats a bin.
    """
    column = np.full((N_TOPICS, N_FORMATS), -1)
    column[topic_ids, format_ids] = np.arange(len(topic_ids))
    topics = rng.integers(0, N_TOPICS, N_TOPICS)
    formats = rng.integers(0, N_FORMATS, N_FORMATS)
    picked = column[np.ix_(topics, formats)].ravel()
    return picked[picked >= 0]


def crossed_bootstrap(
    means: np.ndarray, topic_ids, format_ids, design: Design, names: list[str], n: int, seed: int
) -> np.ndarray:
    """[n, len(names)] statistics over crossed draws of topics and formats (`crossed_draw`).

    Bins of one topic (or format) share its influence, so they are not
    independent draws: resampling topics and formats keeps that dependence
    and gives wider, honest intervals for statistics whose unit is the bin.
    """
    rng = np.random.default_rng([seed, 5])
    out = np.full((n, len(names)), np.nan)
    for r in tqdm(range(n), desc="contrast: crossed bootstrap", unit="rep", mininterval=2):
        idx = crossed_draw(topic_ids, format_ids, rng)
        if len(idx) < 3:
            continue
        values = statistics(means[:, idx], topic_ids[idx], format_ids[idx], design)
        out[r] = [values.get(k, np.nan) for k in names]
    return out


def replicate_statistics(
    replicates: np.ndarray, used: np.ndarray, topic_ids, format_ids, design: Design, names: list[str]
) -> np.ndarray:
    """[B, len(names)] statistics of each bootstrap replicate ([nb, B, 576]) of the bin means."""
    n = replicates.shape[1]
    out = np.full((n, len(names)), np.nan)
    for r in tqdm(range(n), desc="contrast: replicate statistics", unit="rep", mininterval=2):
        values = statistics(replicates[:, r][:, used], topic_ids, format_ids, design)
        out[r] = [values.get(k, np.nan) for k in names]
    return out


def leave_one_bin_out(means: np.ndarray, topic_ids, format_ids, design: Design, names: list[str]) -> np.ndarray:
    """[n_bins, len(names)]: each statistic without bin i."""
    n_bins = means.shape[1]
    out = np.full((n_bins, len(names)), np.nan)
    keep = np.ones(n_bins, dtype=bool)
    for i in tqdm(range(n_bins), desc="contrast: leave one bin out", unit="bin", mininterval=2):
        keep[i] = False
        values = statistics(means[:, keep], topic_ids[keep], format_ids[keep], design)
        out[i] = [values.get(k, np.nan) for k in names]
        keep[i] = True
    return out


def sharpness_permutation_p(
    means: np.ndarray, topic_ids, format_ids, design: Design, n_permutations: int, seed: int
) -> dict[str, float]:
    """One-sided p that reasoning is at least this much sharper, swapping each bin's two contrasts at random."""
    z = zscore(means)
    dz = level_contrasts(z, design)
    rng = np.random.default_rng([seed, 3])
    swap = rng.random((n_permutations, z.shape[1])) < 0.5
    perm_r = np.where(swap, dz["knowledge"], dz["reasoning"])
    perm_k = np.where(swap, dz["reasoning"], dz["knowledge"])
    out = {}
    for facet, groups in (("topic", topic_ids), ("format", format_ids), ("bin", None)):
        if groups is None:
            pr, pk, r, k = perm_r, perm_k, dz["reasoning"], dz["knowledge"]
        else:
            size = FACETS[facet][1]
            pr, pk = _facet_center(perm_r, groups, size, "mean"), _facet_center(perm_k, groups, size, "mean")
            r = _facet_center(dz["reasoning"], groups, size, "mean")
            k = _facet_center(dz["knowledge"], groups, size, "mean")
        null_r, null_k = _spread(pr), _spread(pk)
        obs_r, obs_k = _spread(r), _spread(k)
        for measure in MEASURES:
            with np.errstate(invalid="ignore", divide="ignore"):
                observed = obs_r[measure] / obs_k[measure]
                null = null_r[measure] / null_k[measure]
            out[f"{facet}/{measure}"] = float((1 + np.sum(null >= observed)) / (1 + n_permutations))
    return out


def interaction_table(
    means: np.ndarray, bin_ids: np.ndarray, design: Design, n_permutations: int, seed: int
) -> pd.DataFrame:
    """Per bin: dz at each level, interaction = dz(reasoning) - dz(knowledge), permutation p, BH q."""
    z = zscore(means)
    cells = cell_profiles(z, design)
    dz = {level: cells[("social", level)] - cells[("stem", level)] for level in LEVELS}
    observed = dz["reasoning"] - dz["knowledge"]
    frame = pd.DataFrame(
        {
            "bin_id": bin_ids.astype(np.int32),
            "topic": [TOPIC_SLUGS[b // N_FORMATS] for b in bin_ids],
            "format": [FORMAT_SLUGS[b % N_FORMATS] for b in bin_ids],
            "dz_reasoning": dz["reasoning"],
            "dz_knowledge": dz["knowledge"],
            "interaction": observed,
        }
    )
    if n_permutations:
        p = _interaction_p_values(cells, observed, n_permutations, seed)
        frame["p_value"] = p
        frame["q_value"] = stats.false_discovery_control(p, method="bh")
    else:
        frame["p_value"] = np.nan
        frame["q_value"] = np.nan
    frame["p_joint"] = interaction_joint_p(observed)
    frame["q_joint"] = stats.false_discovery_control(frame["p_joint"].to_numpy(), method="bh")
    return frame.sort_values("interaction", key=np.abs, ascending=False, kind="stable").reset_index(drop=True)


def interaction_joint_p(interaction: np.ndarray) -> np.ndarray:
    """Two-sided p per bin under a null that keeps the four profiles' joint structure.

    Profiles drawn from a normal with the four cell profiles' fitted
    covariance S give interactions ~ N(0, a'Sa), a = (1, -1, -1, 1), and a'Sa
    is the observed interactions' own variance; each bin's is taken without
    the bin (ddof 1), so an extreme bin does not widen its own null. The
    permutation p (`p_value`) aligns the profiles independently, which
    destroys their correlation, inflates the null and is conservative.
    """
    n = len(interaction)
    if n < 3:
        return np.full(n, np.nan)
    total, squares = interaction.sum(), (interaction**2).sum()
    mean_without = (total - interaction) / (n - 1)
    var_without = (squares - interaction**2 - (n - 1) * mean_without**2) / (n - 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        return 2 * stats.norm.sf(np.abs(interaction) / np.sqrt(var_without))


def _interaction_p_values(
    cells: dict[tuple[str, str], np.ndarray], observed: np.ndarray, n_permutations: int, seed: int
) -> np.ndarray:
    """Two-sided p per bin against interactions of the four cell profiles aligned at random.

    Each permutation shuffles each cell's z profile across bins on its own;
    every (permutation, position) gives one null interaction. The null of
    bin b leaves out the draws that used b's own value in any cell, so a bin
    that is extreme in one benchmark is not its own null.
    """
    rng = np.random.default_rng([seed, 4])
    keys = [("social", "reasoning"), ("stem", "reasoning"), ("social", "knowledge"), ("stem", "knowledge")]
    signs = (1.0, -1.0, -1.0, 1.0)
    n_bins = len(observed)
    order = np.stack([rng.permuted(np.tile(np.arange(n_bins), (n_permutations, 1)), axis=1) for _ in keys])
    null = sum(sign * cells[key][order[c]] for c, (key, sign) in enumerate(zip(keys, signs)))
    magnitude = np.abs(observed) * (1 - 1e-12)
    sorted_null = np.sort(np.abs(null).ravel())
    exceed = len(sorted_null) - np.searchsorted(sorted_null, magnitude, side="left")
    # Where bin b sits in each permuted row of each cell: [4, P, n_bins].
    position = np.argsort(order, axis=2)
    rows = np.arange(n_permutations)[None, :, None]
    own = np.abs(null[rows, position])
    first = np.ones_like(position, dtype=bool)
    for c in range(1, len(keys)):
        first[c] = ~np.any(position[:c] == position[c], axis=0)
    own_count = first.sum(axis=(0, 1))
    own_exceed = (first & (own >= magnitude[None, None, :])).sum(axis=(0, 1))
    return (1 + exceed - own_exceed) / (1 + null.size - own_count)


# --------------------------------------------------------------------------- the analysis


def _ci(values: dict[str, np.ndarray], j: int, level: float) -> dict[str, list[float] | None]:
    out = {}
    for kind, reps in values.items():
        column = reps[:, j]
        if not np.isfinite(column).any():
            out[f"ci_{kind}"] = None
            continue
        low, high = percentile_ci(column, level)
        out[f"ci_{kind}"] = [float(low), float(high)]
    return out


def _bin_label(b: int) -> dict:
    return {"bin_id": int(b), "topic": TOPIC_SLUGS[b // N_FORMATS], "format": FORMAT_SLUGS[b % N_FORMATS]}


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


@dataclass
class _Estimates:
    """Every statistic's point estimate (by key) and its resampled values, for summary entries with CIs."""

    observed: dict[str, float]
    keys: list[str]
    uncertainty: dict[str, np.ndarray]
    ci_level: float
    # [n_bins, len(keys)]: each statistic without each bin, the jackknife of the bins bootstrap
    leave_one_out: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.index = {k: j for j, k in enumerate(self.keys)}

    def entry(self, key: str) -> dict:
        j = self.index[key]
        out = {"value": _finite(self.observed[key]), **_ci(self.uncertainty, j, self.ci_level)}
        if "bins" in self.uncertainty and self.leave_one_out is not None:
            low, high = bca_interval(self.observed[key], self.uncertainty["bins"][:, j], self.leave_one_out[:, j], self.ci_level)
            out["ci_bins_bca"] = [low, high] if np.isfinite(low) and np.isfinite(high) else None
        return out

    def correlation_matrix(self, kind: str, names: list[str]) -> dict:
        out: dict = {"matrix": {}, "ci": {}}
        for a in names:
            out["matrix"][a] = {}
            out["ci"][a] = {}
            for b in names:
                if a == b:
                    out["matrix"][a][b] = 1.0
                    continue
                key = f"{kind}/{a}/{b}" if f"{kind}/{a}/{b}" in self.index else f"{kind}/{b}/{a}"
                e = self.entry(key)
                out["matrix"][a][b] = e.pop("value")
                out["ci"][a][b] = e
        return out


# What each resampling draws, as summary.json names it beside its interval.
RESAMPLED = {
    "bins": "bins with replacement, independently (the statistic recomputed, z included)",
    "crossed": "topics and formats with replacement, crossed (a bin enters once per draw of its topic and format)",
    "combined": "documents and queries at once (two-way Poisson product weights, from `capatlas influence`)",
    "documents": "documents alone (Poisson weights, from `capatlas influence`)",
    "queries": "queries alone (with replacement, from `capatlas influence`)",
}


def _input_summary(matrix: BinMatrix, design: Design, used: np.ndarray, uncertainty, **settings) -> dict:
    return {
        "source": matrix.source,
        "kind": matrix.kind,
        "benchmarks": list(design.benchmarks),
        "roles": {b: {"domain": r[0], "capability": r[1]} for b, r in design.roles.items()},
        "complete_2x2": design.complete,
        "n_bins_used": int(used.sum()),
        "bins_left_out": [int(b) for b in np.flatnonzero(~used)],
        "uncertainty": sorted(uncertainty),
        "interval_methods": {
            **{f"ci_{kind}": f"percentile; {RESAMPLED.get(kind, kind)}" for kind in sorted(uncertainty)},
            **({"ci_bins_bca": "BCa: bins bootstrap, acceleration from the leave-one-bin-out jackknife"}
               if "bins" in uncertainty else {}),
        },
        "n_bootstrap": settings["n_bootstrap"],
        "n_replicates": {k: int(v.shape[1]) for k, v in matrix.replicates.items()},
        "n_permutations": settings["n_permutations"],
        "ci_level": settings["ci_level"],
        "seed": settings["seed"],
    }


def _contrasts(est: _Estimates, summary: dict, tables: dict, means, bin_ids, design, n_permutations, top_k, seed) -> None:
    """The 2 x 2 sections: topic/format contrasts, sharpness with permutation p, the per-bin interaction."""
    topic_ids, format_ids = bin_ids // N_FORMATS, bin_ids % N_FORMATS
    for facet in ("topic", "format"):
        slugs, _ = FACETS[facet]
        block: dict = {}
        rows = []
        for level in LEVELS:
            block[level] = {}
            for slug in slugs:
                e = est.entry(f"{facet}_contrast/{level}/{slug}")
                block[level][slug] = e
                rows.append({"level": level, facet: slug, **_flat_ci(e)})
        summary[f"{facet}_contrast"] = block
        tables[f"{facet}_contrast"] = pd.DataFrame(rows)
    p_values = (
        sharpness_permutation_p(means, topic_ids, format_ids, design, n_permutations, seed) if n_permutations else {}
    )
    sharpness: dict = {}
    for facet in ("topic", "format", "bin"):
        sharpness[facet] = {}
        for measure in MEASURES:
            e = est.entry(f"sharpness/{facet}/{measure}/ratio")
            sharpness[facet][measure] = {
                "reasoning": _finite(est.observed[f"sharpness/{facet}/{measure}/reasoning"]),
                "knowledge": _finite(est.observed[f"sharpness/{facet}/{measure}/knowledge"]),
                "ratio": e.pop("value"),
                **{f"ratio_{k}": v for k, v in e.items()},
                "p_permutation": p_values.get(f"{facet}/{measure}"),
            }
    _note_bin_sd_identity(est.observed, sharpness, design)
    summary["sharpness"] = sharpness
    _standardised(est, summary, tables, means, topic_ids, format_ids, design)
    interaction = interaction_table(means, bin_ids, design, n_permutations, seed)
    tables["interaction"] = interaction
    summary["interaction"] = {
        "definition": "(z_social - z_stem) at reasoning minus at knowledge, per bin",
        "table": INTERACTION_FILE,
        "n_bins": int(len(interaction)),
        "n_q_below_0.05": int((interaction["q_value"] < 0.05).sum()),
        "n_q_joint_below_0.05": int((interaction["q_joint"] < 0.05).sum()),
        "nulls": "p_value / q_value: the four z profiles aligned across bins independently (conservative when they "
        "correlate); p_joint / q_joint: normal null with the profiles' fitted joint covariance, each bin left out",
        "top": [
            {k: (_finite(v) if isinstance(v, float) else v) for k, v in row.items()}
            for row in interaction.head(top_k).to_dict("records")
        ],
    }


def _note_bin_sd_identity(observed: Mapping[str, float], sharpness: dict, design: Design) -> None:
    """Say what the bin-level sd ratio is: with one benchmark per cell, sd(z_a - z_b) = sqrt(2 (1 - r_ab)) for
    z-scored profiles, so the ratio is sqrt((1 - r_reasoning) / (1 - r_knowledge)), the two Pearson correlations
    restated, not a finding of its own (its permutation p tests the correlations' difference)."""
    cells = {(d, c): design.cell(d, c) for d in DOMAINS for c in LEVELS}
    if any(len(members) != 1 for members in cells.values()):
        return
    r = {}
    for level in LEVELS:
        a, b = (design.benchmarks[cells[(d, level)][0]] for d in DOMAINS)
        r[level] = observed.get(f"pearson/{a}/{b}", observed.get(f"pearson/{b}/{a}", np.nan))
    with np.errstate(invalid="ignore", divide="ignore"):
        restated = np.sqrt((1 - r["reasoning"]) / (1 - r["knowledge"]))
    sharpness["bin"]["sd"]["from_correlations"] = _finite(float(restated))
    sharpness["bin"]["sd"]["note"] = (
        "equals sqrt((1 - r_reasoning) / (1 - r_knowledge)) of the Pearson correlations between the social and "
        "STEM profiles at each level: the correlations restated, not a separate finding"
    )


def _standardised(est: _Estimates, summary: dict, tables: dict, means, topic_ids, format_ids, design) -> None:
    """Cohen's d_z and robust centres of every topic and format contrast; how often each unit is the largest."""
    facets = {"topic": (TOPIC_SLUGS, topic_ids), "format": (FORMAT_SLUGS, format_ids)}
    table = effects.facet_effects(level_contrasts(zscore(means), design), facets, est.ci_level)
    tables["facet_effects"] = table
    argmax: dict = {}
    for facet, (slugs, _) in facets.items():
        argmax[facet] = {
            kind: {
                level: effects.argmax_probabilities(
                    reps[:, [est.index[f"{facet}_contrast/{level}/{slug}"] for slug in slugs]], list(slugs)
                )
                for level in LEVELS
            }
            for kind, reps in est.uncertainty.items()
        }
    summary["standardised_effects"] = {
        "definition": "per unit over its bins, dz = z_social - z_stem: mean_dz (the study's contrast, a mean "
        "difference in z units) with its t interval; Cohen's d_z = mean / sd (ddof 1) with the noncentral-t "
        "interval; median and 20% trimmed mean",
        "table": FACET_EFFECTS_FILE,
        "largest_abs_d_z": effects.largest_d_z(table),
        "argmax_probability": argmax,
    }


def _verdict(observed, keys, uncertainty, loo, design: Design, ci_level: float) -> list[dict]:
    """The study's three analysis claims read against our estimates (analysis/verdict.py)."""
    cells = {(d, c): [design.benchmarks[i] for i in design.cell(d, c)] for d in DOMAINS for c in LEVELS}
    reasoning = {slug: observed[f"topic_contrast/reasoning/{slug}"] for slug in TOPIC_SLUGS}
    top = max((s for s in reasoning if np.isfinite(reasoning[s])), key=lambda s: reasoning[s])
    claims = verdict.study_claims(cells, top)
    return [verdict.assess(claim, observed, keys, uncertainty, loo, ci_level) for claim in claims]


def analyse(
    matrix: BinMatrix,
    design: Design,
    *,
    n_bootstrap: int = 1000,
    n_permutations: int = 1000,
    ci_level: float = 0.95,
    top_k: int = 10,
    seed: int = 42,
) -> tuple[dict, dict[str, pd.DataFrame]]:
    """The summary (JSON-ready) and the tables of the 2 x 2 analysis."""
    used = np.isfinite(matrix.means).all(axis=0)
    if used.sum() < 3:
        raise CapatlasError(f"{matrix.source}: fewer than 3 bins have scores in every benchmark")
    bin_ids = np.flatnonzero(used)
    topic_ids, format_ids = bin_ids // N_FORMATS, bin_ids % N_FORMATS
    means = matrix.means[:, used]
    names_b = list(design.benchmarks)
    observed = statistics(means, topic_ids, format_ids, design)
    keys = list(observed)

    uncertainty: dict[str, np.ndarray] = {}
    if n_bootstrap:
        uncertainty["bins"] = bins_bootstrap(means, topic_ids, format_ids, design, keys, n_bootstrap, seed)
        uncertainty["crossed"] = crossed_bootstrap(means, topic_ids, format_ids, design, keys, n_bootstrap, seed)
    for kind, reps in matrix.replicates.items():
        uncertainty[kind] = replicate_statistics(reps, used, topic_ids, format_ids, design, keys)
    loo = leave_one_bin_out(means, topic_ids, format_ids, design, keys)
    est = _Estimates(observed, keys, uncertainty, ci_level, loo)

    settings = dict(n_bootstrap=n_bootstrap, n_permutations=n_permutations, ci_level=ci_level, seed=seed)
    summary: dict = {
        "input": _input_summary(matrix, design, used, uncertainty, **settings),
        "pearson": est.correlation_matrix("pearson", names_b),
        "spearman": est.correlation_matrix("spearman", names_b),
    }
    zu = zscore(means)
    for facet, ids in (("topic", topic_ids), ("format", format_ids)):
        slugs, size = FACETS[facet]
        summary[f"{facet}_marginals"] = {
            name: {s: _finite(v) for s, v in zip(slugs, _facet_center(zu[j], ids, size, "mean"))}
            for j, name in enumerate(names_b)
        }

    tables: dict[str, pd.DataFrame] = {}
    if design.complete:
        _contrasts(est, summary, tables, means, bin_ids, design, n_permutations, top_k, seed)
    else:
        summary["topic_contrast"] = summary["format_contrast"] = summary["sharpness"] = None
        summary["interaction"] = None
        summary["input"]["note"] = "the 2 x 2 design needs a benchmark in each of the four cells; contrasts skipped"
        log.warning("%s: the 2 x 2 design is incomplete (a cell has no benchmark); contrasts skipped", matrix.source)

    z = zscore(matrix.means)  # all bins with a score, per benchmark (the study's z)
    summary["top_bins"] = _top_bins(matrix, z, top_k)
    summary["robustness"] = _robustness(observed, keys, loo, bin_ids, design, means, topic_ids, format_ids)
    summary["verdict"] = _verdict(observed, keys, uncertainty, loo, design, ci_level) if design.complete else None
    tables["leave_one_bin_out"] = _loo_table(observed, keys, loo, bin_ids)
    return summary, tables


def _flat_ci(e: dict) -> dict:
    out = {"value": e["value"]}
    for key, ci in e.items():
        if key.startswith("ci_"):
            out[f"{key}_low"] = ci[0] if ci else np.nan
            out[f"{key}_high"] = ci[1] if ci else np.nan
    return out


def _top_bins(matrix: BinMatrix, z: np.ndarray, top_k: int) -> dict:
    out = {}
    for j, name in enumerate(matrix.benchmarks):
        finite = np.flatnonzero(np.isfinite(z[j]))
        order = finite[np.argsort(-z[j][finite], kind="stable")]

        def row(b: int) -> dict:
            item = {
                **_bin_label(b),
                "zscore": float(z[j][b]),
                "mean": float(matrix.means[j][b]),
                "n_docs": int(matrix.n_docs[j][b]) if matrix.n_docs[j][b] >= 0 else None,
            }
            if matrix.table is not None:
                hit = matrix.table[(matrix.table["benchmark"] == name) & (matrix.table["bin_id"] == b)]
                # The z's interval beside the z, the mean's beside the mean (both from the combined bootstrap).
                for key, (low, high) in (("z_ci", ("z_ci_low", "z_ci_high")), ("mean_ci", ("ci_low", "ci_high"))):
                    if low in hit and high in hit:
                        item[key] = [_finite(float(hit[low].iloc[0])), _finite(float(hit[high].iloc[0]))]
            return item

        out[name] = {"top": [row(b) for b in order[:top_k]], "bottom": [row(b) for b in order[::-1][:top_k]]}
    return out


def _headline_keys(observed: dict, keys: list[str]) -> list[str]:
    """Correlations, sharpness ratios and the largest topic/format contrast at each level."""
    chosen = [
        k
        for k in keys
        if k.startswith(("pearson/", "spearman/")) or (k.startswith("sharpness/") and k.endswith("/ratio"))
    ]
    for facet in ("topic", "format"):
        for level in LEVELS:
            prefix = f"{facet}_contrast/{level}/"
            candidates = [k for k in keys if k.startswith(prefix) and np.isfinite(observed[k])]
            if candidates:
                chosen.append(max(candidates, key=lambda k: abs(observed[k])))
    return chosen


def _robustness(observed, keys, loo, bin_ids, design, means, topic_ids, format_ids) -> dict:
    index = {k: j for j, k in enumerate(keys)}
    leave_one_out = {}
    for key in _headline_keys(observed, keys):
        column = loo[:, index[key]]
        shift = column - observed[key]
        if not np.isfinite(shift).any():
            continue
        worst = int(np.nanargmax(np.abs(shift)))
        leave_one_out[key] = {
            "value": _finite(observed[key]),
            "min": _finite(np.nanmin(column)),
            "max": _finite(np.nanmax(column)),
            "most_influential_bin": {
                **_bin_label(int(bin_ids[worst])),
                "value_without": _finite(column[worst]),
                "shift": _finite(shift[worst]),
                "relative_shift": _finite(shift[worst] / observed[key]) if observed[key] else None,
            },
        }
    out: dict = {"leave_one_bin_out": leave_one_out, "table": LOO_FILE}
    if design.complete:
        median = statistics(means, topic_ids, format_ids, design, center="median")
        out["median_marginals"] = {
            f"{facet}_contrast": {
                level: {slug: _finite(median[f"{facet}_contrast/{level}/{slug}"]) for slug in FACETS[facet][0]}
                for level in LEVELS
            }
            for facet in ("topic", "format")
        }
        out["median_marginals"]["sharpness"] = {
            facet: {m: _finite(median[f"sharpness/{facet}/{m}/ratio"]) for m in MEASURES}
            for facet in ("topic", "format")
        }
    return out


def _loo_table(observed, keys, loo, bin_ids) -> pd.DataFrame:
    rows = []
    for j, key in enumerate(keys):
        column = loo[:, j]
        shift = column - observed[key]
        if not np.isfinite(shift).any():
            continue
        worst = int(np.nanargmax(np.abs(shift)))
        rows.append(
            {
                "statistic": key,
                "value": observed[key],
                "loo_min": np.nanmin(column),
                "loo_max": np.nanmax(column),
                **{f"most_influential_{k}": v for k, v in _bin_label(int(bin_ids[worst])).items()},
                "value_without": column[worst],
                "shift": shift[worst],
            }
        )
    return pd.DataFrame(rows)


def demo_recovery(matrix: BinMatrix, ground_truth: dict, source: str) -> dict:
    """Precision at k of each benchmark's highest-z bins against the planted bins (k = number planted)."""
    z = zscore(matrix.means)
    out: dict = {"ground_truth": source, "benchmarks": {}}
    for name, entry in (ground_truth.get("benchmarks") or {}).items():
        planted = sorted(int(b["bin_id"]) for b in entry.get("planted_bins", []))
        if name not in matrix.benchmarks or not planted:
            continue
        j = matrix.benchmarks.index(name)
        finite = np.flatnonzero(np.isfinite(z[j]))
        top = finite[np.argsort(-z[j][finite], kind="stable")][: len(planted)]
        ranks = {int(b): int(np.sum(z[j][finite] > z[j][b])) + 1 for b in planted if np.isfinite(z[j][b])}
        out["benchmarks"][name] = {
            "k": len(planted),
            "precision_at_k": len(set(top.tolist()) & set(planted)) / len(planted),
            "planted_bins": planted,
            "top_bins": [int(b) for b in top],
            "planted_ranks": ranks,
        }
    missing = sorted(set(ground_truth.get("benchmarks") or {}) - set(out["benchmarks"]))
    if missing:
        raise CapatlasError(f"{matrix.source} has no scores for planted benchmark(s) {', '.join(missing)} of {source}")
    return out


def write_outputs(summary: dict, tables: dict[str, pd.DataFrame], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "interaction": INTERACTION_FILE,
        "topic_contrast": TOPIC_CONTRAST_FILE,
        "format_contrast": FORMAT_CONTRAST_FILE,
        "leave_one_bin_out": LOO_FILE,
        "facet_effects": FACET_EFFECTS_FILE,
    }
    import pyarrow as pa

    for key, name in files.items():
        if key in tables:
            write_parquet(pa.Table.from_pandas(tables[key], preserve_index=False), out_dir / name)
    write_json(_json_safe(summary), out_dir / SUMMARY_FILE)


def _json_safe(obj):
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bin-matrix", required=True, help="bin_matrix.parquet, or a directory of zscored_<benchmark>.csv"
    )
    parser.add_argument("--out", required=True, help="output directory (contrast/)")
    parser.add_argument(
        "--ground-truth", default=None, help="demo world's ground_truth.json: also write demo_recovery.json"
    )


def run(args: argparse.Namespace, config: dict | None) -> None:
    import json

    from capatlas.config import load_schema

    if config is None:
        # An external matrix needs no run config: schema defaults and the study's roles.
        schema = load_schema()["properties"]
        analysis_keys = schema["analysis"]["properties"]
        config = {
            "seed": schema["seed"]["default"],
            "analysis": {k: v["default"] for k, v in analysis_keys.items()},
            "benchmarks": [],
        }
    analysis = config["analysis"]
    matrix = read_any(args.bin_matrix)
    design = design_for(matrix.benchmarks, config.get("benchmarks"))
    unknown = [b for b in matrix.benchmarks if b not in design.roles]
    if unknown:
        log.warning("no 2 x 2 role for %s (add them to the config's benchmarks)", ", ".join(unknown))
    summary, tables = analyse(
        matrix,
        design,
        n_bootstrap=analysis["bootstrap"],
        n_permutations=analysis["permutations"],
        ci_level=analysis["ci_level"],
        top_k=analysis["top_k"],
        seed=config["seed"],
    )
    out = Path(args.out)
    write_outputs(summary, tables, out)
    if args.ground_truth:
        path = Path(args.ground_truth)
        if not path.is_file():
            raise CapatlasError(f"--ground-truth {path} does not exist")
        write_json(demo_recovery(matrix, json.loads(path.read_text()), str(path)), out / RECOVERY_FILE)
    log.info("2 x 2 analysis of %s -> %s", args.bin_matrix, out)

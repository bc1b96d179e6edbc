"""`capatlas figures`: heatmaps of the bin matrix and the 2 x 2 contrast figures (PNG, Agg).

* ``heatmap_<benchmark>.png``: bin z-scores as a 24 x 24 grid (topics as
  rows, formats as columns), diverging colours centred at 0. The colour
  scale is symmetric and stops at the 99th percentile of |z| (at least 2)
  so that one extreme bin does not wash out the rest; bins beyond it are
  outlined and their z is written in the cell; empty bins are grey.
* ``contrast_bars.png``: the reasoning and knowledge contrasts (social -
  STEM, mean of bin z) per topic and per format, side by side, with the
  CI from the widest-reaching uncertainty available (documents if the
  bin matrix came with bootstrap replicates, else resampled bins).
* ``correlations.png``: Pearson and Spearman bin-profile correlations.
* ``standardised_effects.png``: per topic and format, Cohen's d_z with its
  noncentral-t interval, and the mean, median and trimmed mean of the bins' dz.
* ``verdict.png``: a forest plot of the study's claims (analysis/verdict.py):
  each estimate with its intervals and leave-one-bin-out range, on an axis
  where 0 is no effect, coloured by the reading.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from capatlas.command import Command
from capatlas.analysis.contrast import FACET_EFFECTS_FILE, FORMAT_CONTRAST_FILE, SUMMARY_FILE, TOPIC_CONTRAST_FILE, read_any
from capatlas.errors import CapatlasError
from capatlas.analysis.influence import zscore
from capatlas.fileio import atomic_path
from capatlas.taxonomy import FORMAT_NAMES, N_FORMATS, N_TOPICS, TOPIC_NAMES

log = logging.getLogger(__name__)

COMMAND = Command(config="none")

LEVEL_COLOURS = {"reasoning": "#c0392b", "knowledge": "#2471a3"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=130, bbox_inches="tight")


def heatmap(z: np.ndarray, benchmark: str, path: Path, n_docs: np.ndarray | None = None) -> None:
    """z: [576] bin z-scores (NaN = empty bin)."""
    plt = _pyplot()
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.patches import Rectangle

    grid = z.reshape(N_TOPICS, N_FORMATS)
    finite = np.abs(grid[np.isfinite(grid)])
    limit = max(2.0, float(np.quantile(finite, 0.99))) if finite.size else 2.0
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="#bdbdbd")
    fig, ax = plt.subplots(figsize=(11, 9.5))
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, norm=TwoSlopeNorm(0.0, -limit, limit), aspect="equal")
    for t, f in zip(*np.nonzero(np.isfinite(grid) & (np.abs(grid) > limit))):
        ax.add_patch(Rectangle((f - 0.5, t - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=1.2))
        ax.text(
            f,
            t,
            f"{grid[t, f]:.0f}" if abs(grid[t, f]) >= 9.95 else f"{grid[t, f]:.1f}",
            ha="center",
            va="center",
            fontsize=6.5,
            color="white",
            weight="bold",
        )
    ax.set_xticks(range(N_FORMATS), FORMAT_NAMES, rotation=60, ha="right", rotation_mode="anchor", fontsize=8)
    ax.set_yticks(range(N_TOPICS), TOPIC_NAMES, fontsize=8)
    ax.set_xlabel("format")
    ax.set_ylabel("topic")
    n_empty = int(np.sum(~np.isfinite(grid)))
    subtitle = f"; {n_empty} empty bin(s) in grey" if n_empty else ""
    ax.set_title(f"{benchmark}: z-score of mean document influence per bin (ddof = 1){subtitle}", fontsize=10)
    bar = fig.colorbar(image, ax=ax, shrink=0.7, extend="both")
    bar.set_label(f"z (scale clipped at |z| = {limit:.1f}; outlined cells exceed it)")
    _save(fig, path)
    plt.close(fig)


RESAMPLING_LABELS = {
    "bins_bca": "bins resampled, BCa",
    "crossed": "topics x formats resampled",
    "combined": "documents and queries resampled together",
}


def _ci_columns(frame: pd.DataFrame) -> tuple[str, str] | None:
    # The combined bootstrap first: documents and queries together are the whole of our own matrix's noise.
    for kind in ("combined", "documents", "queries", "bins"):
        low, high = f"ci_{kind}_low", f"ci_{kind}_high"
        if low in frame and frame[low].notna().any():
            return low, high
    return None


def contrast_bars(topic: pd.DataFrame, format_: pd.DataFrame, path: Path, ci_level: float) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 9), sharex=False)
    for ax, (facet, frame, names) in zip(axes, (("topic", topic, TOPIC_NAMES), ("format", format_, FORMAT_NAMES))):
        columns = _ci_columns(frame)
        reasoning = frame[frame["level"] == "reasoning"].reset_index(drop=True)
        order = np.argsort(reasoning["value"].to_numpy())
        y = np.arange(len(order))
        height = 0.38
        for offset, level in ((height / 2, "reasoning"), (-height / 2, "knowledge")):
            part = frame[frame["level"] == level].reset_index(drop=True).iloc[order]
            values = part["value"].to_numpy()
            xerr = None
            if columns:
                xerr = np.abs(np.vstack([values - part[columns[0]].to_numpy(), part[columns[1]].to_numpy() - values]))
            ax.barh(
                y + offset,
                values,
                height=height,
                xerr=xerr,
                color=LEVEL_COLOURS[level],
                alpha=0.85,
                error_kw={"elinewidth": 0.8, "capsize": 1.5, "ecolor": "#333333"},
                label=f"{level} (social - STEM)",
            )
        ax.set_yticks(y, [names[i] for i in order], fontsize=8)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_xlabel("difference of mean bin z (social - STEM)")
        ax.set_title(f"per {facet}", fontsize=11)
        ax.grid(axis="x", alpha=0.3)
        if columns:
            kind = columns[0].split("_")[1]
            ax.text(
                0.99,
                0.01,
                f"{ci_level:.0%} CI: bootstrap over {'documents and queries together' if kind == 'combined' else kind}",
                transform=ax.transAxes,
                ha="right",
                va="bottom",
                fontsize=7.5,
                color="#444444",
            )
    axes[0].legend(loc="lower right", bbox_to_anchor=(1.0, 0.04), fontsize=8)
    fig.suptitle("Reasoning vs knowledge contrast (sorted by the reasoning contrast)", fontsize=12)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def correlations(summary: dict, path: Path) -> None:
    plt = _pyplot()
    names = summary["input"]["benchmarks"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.2))
    for ax, kind in zip(axes, ("pearson", "spearman")):
        block = summary[kind]
        matrix = np.array(
            [[block["matrix"][a][b] if block["matrix"][a][b] is not None else np.nan for b in names] for a in names]
        )
        image = ax.imshow(matrix, cmap="RdBu_r", vmin=-1, vmax=1)
        for i, a in enumerate(names):
            for j, b in enumerate(names):
                text = f"{matrix[i, j]:.2f}"
                ci = (block["ci"].get(a) or {}).get(b) or {}
                interval = next((ci[k] for k in ("ci_documents", "ci_queries", "ci_bins") if ci.get(k)), None)
                if i != j and interval:
                    text += f"\n[{interval[0]:.2f}, {interval[1]:.2f}]"
                ax.text(
                    j,
                    i,
                    text,
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if abs(matrix[i, j]) > 0.6 else "black",
                )
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_title(f"{kind.capitalize()} correlation of bin z profiles", fontsize=10)
        fig.colorbar(image, ax=ax, shrink=0.8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def standardised_effects(effects: pd.DataFrame, path: Path, ci_level: float) -> None:
    """Per topic and format: Cohen's d_z with its interval (left) and the robust centres of dz (right)."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(13, 16), gridspec_kw={"height_ratios": [1, 1]})
    for row, (facet, names) in enumerate((("topic", TOPIC_NAMES), ("format", FORMAT_NAMES))):
        part = effects[effects["facet"] == facet]
        reasoning = part[part["level"] == "reasoning"].reset_index(drop=True)
        order = np.argsort(reasoning["d_z"].fillna(0).to_numpy())
        y = np.arange(len(order))
        for offset, level in ((0.18, "reasoning"), (-0.18, "knowledge")):
            rows = part[part["level"] == level].reset_index(drop=True).iloc[order]
            colour = LEVEL_COLOURS[level]
            d = rows["d_z"].to_numpy()
            err = np.abs(np.vstack([d - rows["d_z_ci_low"].to_numpy(), rows["d_z_ci_high"].to_numpy() - d]))
            axes[row, 0].errorbar(d, y + offset, xerr=err, fmt="o", color=colour, markersize=3.5, elinewidth=0.9,
                                  capsize=1.5, label=f"{level}")  # fmt: skip
            for column, marker, label in (("mean_dz", "o", "mean"), ("median_dz", "x", "median"),
                                          ("trimmed_mean_dz", "+", "20% trimmed mean")):  # fmt: skip
                axes[row, 1].plot(rows[column], y + offset, marker, color=colour, markersize=5, linestyle="none",
                                  label=f"{level}: {label}")  # fmt: skip
        for ax in axes[row]:
            ax.set_yticks(y, [names[i] for i in order], fontsize=7.5)
            ax.axvline(0, color="black", linewidth=0.8)
            ax.grid(axis="x", alpha=0.3)
        axes[row, 0].set_xlabel(f"Cohen's d_z of the bins' dz ({ci_level:.0%} noncentral-t interval)")
        axes[row, 1].set_xlabel("centre of the bins' dz = z(social) - z(STEM)")
        axes[row, 0].set_title(f"standardised, per {facet}", fontsize=10)
        if row:  # the top panel's title is its legend's, above it
            axes[row, 1].set_title(f"mean and robust centres, per {facet}", fontsize=10)
    axes[0, 0].legend(fontsize=8, loc="lower right")
    # Above the panel, where no unit's markers are.
    axes[0, 1].legend(fontsize=7, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=2,
                      title="mean and robust centres, per topic", title_fontsize=9)  # fmt: skip
    fig.suptitle("Standardised and robust contrast effects (sorted by the reasoning d_z)", fontsize=12)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


READING_COLOURS = {"supported": "#1b7837", "fragile": "#e08214", "not supported": "#b2182b"}


def verdict_forest(verdict: list[dict], path: Path, ci_level: float) -> None:
    """Each claim's estimate with its intervals and leave-one-bin-out range, on an axis where 0 is no effect."""
    plt = _pyplot()

    def axis(claim: dict, value: float) -> float:
        if value is None or not np.isfinite(value):
            return np.nan
        if claim["log_scale"]:
            return float(np.log(value / claim["null"])) if value > 0 else np.nan
        return float(value - claim["null"])

    fig, ax = plt.subplots(figsize=(9, 1.3 + 1.1 * len(verdict)))
    kinds = sorted({k for claim in verdict for k in claim["intervals"]})
    # One marker per resampling: bins, its BCa, crossed, documents, queries (and room for more).
    markers = {kind: "os^Dv<>P"[k % 8] for k, kind in enumerate(kinds)}
    for row, claim in enumerate(reversed(verdict)):
        colour = READING_COLOURS[claim["reading"]]
        if claim["leave_one_bin_out"]:
            low, high = (axis(claim, v) for v in claim["leave_one_bin_out"])
            ax.plot([low, high], [row, row], color=colour, alpha=0.25, linewidth=9, solid_capstyle="butt")
        for k, kind in enumerate(kinds):
            interval = claim["intervals"].get(kind)
            if not interval:
                continue
            y = row if len(kinds) == 1 else row - 0.18 + 0.36 * k / (len(kinds) - 1)
            ax.plot([axis(claim, v) for v in interval], [y, y], color=colour, linewidth=1.6)
            ax.plot(axis(claim, claim["estimate"]), y, marker=markers[kind], color=colour, markersize=5)
        scale = "log ratio" if claim["log_scale"] else "difference"
        label = f"{claim['statement']}\n{claim['statistic']} = {claim['estimate']:.3g} ({scale}): {claim['reading']}"
        ax.text(1.02, row, label, transform=ax.get_yaxis_transform(), va="center", fontsize=7.5, color=colour)
    ax.axvline(0, color="0.3", linewidth=0.8, linestyle="--")
    ax.set_yticks([])
    ax.set_ylim(-0.7, len(verdict) - 0.3)
    ax.set_xlabel("estimate relative to no effect (ratios as log ratio)", fontsize=9)
    handles = [
        plt.Line2D([], [], color="0.3", marker=markers[k], linewidth=1.6,
                   label=f"{ci_level:.0%} CI, " + RESAMPLING_LABELS.get(k, f"{k} resampled"))  # fmt: skip
        for k in kinds
    ]
    handles.append(plt.Line2D([], [], color="0.3", alpha=0.25, linewidth=9, label="range leaving out one bin"))
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(0, -0.14), ncol=2)
    ax.set_title("The study's claims against our estimates", fontsize=10)
    _save(fig, path)
    plt.close(fig)


def draw(
    bin_matrix: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    heatmaps: list[str] | None = None,
    contrast_dir: str | os.PathLike | None = None,
) -> list[Path]:
    out = Path(out_dir)
    written = []
    if heatmaps:
        matrix = read_any(bin_matrix)
        wanted = matrix.benchmarks if heatmaps == ["all"] else heatmaps
        for name in wanted:
            if name not in matrix.benchmarks:
                raise CapatlasError(f"{bin_matrix} has no benchmark {name!r} (it has {', '.join(matrix.benchmarks)})")
            j = matrix.benchmarks.index(name)
            path = out / f"heatmap_{name}.png"
            heatmap(zscore(matrix.means[j]), name, path)
            written.append(path)
    if contrast_dir is not None:
        contrast_dir = Path(contrast_dir)
        summary_path = contrast_dir / SUMMARY_FILE
        if not summary_path.is_file():
            raise CapatlasError(f"{summary_path} does not exist: run `capatlas contrast` first")
        summary = json.loads(summary_path.read_text())
        correlations(summary, out / "correlations.png")
        written.append(out / "correlations.png")
        if summary.get("topic_contrast"):
            topic = pd.read_parquet(contrast_dir / TOPIC_CONTRAST_FILE)
            format_ = pd.read_parquet(contrast_dir / FORMAT_CONTRAST_FILE)
            contrast_bars(topic, format_, out / "contrast_bars.png", summary["input"]["ci_level"])
            written.append(out / "contrast_bars.png")
        effects_path = contrast_dir / FACET_EFFECTS_FILE
        if summary.get("standardised_effects") and effects_path.is_file():
            standardised_effects(pd.read_parquet(effects_path), out / "standardised_effects.png", summary["input"]["ci_level"])
            written.append(out / "standardised_effects.png")
        if summary.get("verdict"):
            verdict_forest(summary["verdict"], out / "verdict.png", summary["input"]["ci_level"])
            written.append(out / "verdict.png")
    if not written:
        raise CapatlasError("nothing to draw: give --heatmap NAME (or all) and/or --contrast DIR")
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bin-matrix", required=True, help="bin_matrix.parquet, or a directory of zscored_<benchmark>.csv"
    )
    parser.add_argument(
        "--heatmap", nargs="+", default=None, metavar="NAME", help="benchmarks to draw heatmaps of, or 'all'"
    )
    parser.add_argument(
        "--contrast", default=None, help="`capatlas contrast` output directory: contrast bars and correlations"
    )
    parser.add_argument("--out", required=True, help="figures directory")


def run(args: argparse.Namespace, config: dict | None) -> None:
    for path in draw(args.bin_matrix, args.out, heatmaps=args.heatmap, contrast_dir=args.contrast):
        log.info("wrote %s", path)

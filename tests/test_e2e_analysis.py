"""The demo DAG through influence, contrast and figures: planted bins are recovered."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from capatlas.taxonomy import N_BINS

pytestmark = pytest.mark.slow


def test_bin_matrix_covers_every_bin_of_every_benchmark(demo_run):
    matrix = pq.read_table(demo_run / "influence" / "bin_matrix.parquet").to_pandas()
    truth = json.loads((demo_run / "demo" / "world" / "ground_truth.json").read_text())
    assert set(matrix["benchmark"]) == set(truth["benchmarks"])
    assert len(matrix) == N_BINS * len(truth["benchmarks"])
    scored = matrix[matrix["n_docs"] > 0]
    assert (scored["ci_low"] <= scored["mean"] + 1e-12).all() and (scored["ci_high"] >= scored["mean"] - 1e-12).all()
    # The combined interval holds both sources of noise: never narrower than either one-way component by much,
    # and wider than the documents-alone one in most bins.
    width = scored["ci_high"] - scored["ci_low"]
    assert (width >= scored["doc_ci_high"] - scored["doc_ci_low"]).mean() > 0.6
    assert scored[["z_ci_low", "z_ci_high"]].notna().all().all()
    for _, part in scored.groupby("benchmark"):
        assert part["zscore"].std(ddof=1) == pytest.approx(1.0)


# What held in every cell of the grid of world seeds 42-46 x demo-training
# threads 1 and 2 (docs/DESIGN.md, "The demo world"; bench/bench_demo_recovery.py),
# asserted with the margin that grid measured, so that another machine's float
# path passes the same assertions. With items held out (issue 17) one
# benchmark of four can lose most of its planted bins in a cell (precision at
# 4 down to 0.25), so what is asserted is the whole: every benchmark's best
# planted bin ranked 3rd at worst (asserted: within the top 5%, 28 of 576
# bins); the mean precision at 4 over the four benchmarks was 0.69 at least
# (asserted: >= 0.5, 128 times chance); the mean over benchmarks of their
# planted bins' mean z was 4.24 at least (asserted: >= 3, where the strongest
# of 572 filler bins sits at z 2-3.5).


def test_planted_bins_are_recovered(demo_run):
    recovery = json.loads((demo_run / "contrast" / "demo_recovery.json").read_text())
    truth = json.loads((demo_run / "demo" / "world" / "ground_truth.json").read_text())
    matrix = pq.read_table(demo_run / "influence" / "bin_matrix.parquet").to_pandas()
    assert set(recovery["benchmarks"]) == set(truth["benchmarks"])
    precision, planted_z = [], []
    for name, entry in recovery["benchmarks"].items():
        planted = [b["bin_id"] for b in truth["benchmarks"][name]["planted_bins"]]
        assert entry["k"] == len(planted) == 4
        assert min(entry["planted_ranks"].values()) <= 0.05 * N_BINS, (name, entry["planted_ranks"])
        precision.append(entry["precision_at_k"])
        z = matrix[matrix["benchmark"] == name].set_index("bin_id")["zscore"]
        planted_z.append(z[planted].mean())
    assert np.mean(precision) >= 0.5, recovery["benchmarks"]
    assert np.mean(planted_z) >= 3.0, planted_z


def test_contrast_summary_and_figures_exist(demo_run):
    summary = json.loads((demo_run / "contrast" / "summary.json").read_text())
    for key in ("pearson", "spearman", "topic_contrast", "format_contrast", "sharpness", "top_bins", "robustness"):
        assert summary[key], key
    assert {"combined", "documents", "queries"} <= set(summary["input"]["uncertainty"])
    assert summary["input"]["interval_methods"]["ci_combined"].startswith("percentile; documents and queries at once")
    top = summary["top_bins"][summary["input"]["benchmarks"][0]]["top"][0]
    # The z's own interval beside it (not the raw mean's, as before issue 18).
    matrix = pq.read_table(demo_run / "influence" / "bin_matrix.parquet").to_pandas()
    row = matrix[(matrix["benchmark"] == summary["input"]["benchmarks"][0]) & (matrix["bin_id"] == top["bin_id"])].iloc[0]
    assert top["z_ci"] == pytest.approx([row["z_ci_low"], row["z_ci_high"]])
    assert top["mean_ci"] == pytest.approx([row["ci_low"], row["ci_high"]])
    values = [v for row in summary["pearson"]["matrix"].values() for v in row.values()]
    assert np.all(np.abs(values) <= 1 + 1e-9)
    for name in summary["input"]["benchmarks"]:
        assert (demo_run / "figures" / f"heatmap_{name}.png").stat().st_size > 10_000
    for name in ("contrast_bars.png", "correlations.png"):
        assert (demo_run / "figures" / name).stat().st_size > 10_000

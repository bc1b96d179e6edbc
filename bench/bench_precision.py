"""Does a cheaper scoring setting give the same attribution? Two finished runs' scores and bin matrices, compared.

Issue 19 asks every GPU lever (bf16 or TF32 scoring, token batching) to be
checked against fp32 single-document scores before it becomes a default.
This bench reads two finished runs of the same working set (the reference,
e.g. the demo as shipped, and a candidate rerun with one setting changed)
and prints, per benchmark:

* ``max_abs``: the largest difference of a document's score (mean TrackStar
  cosine over the benchmark's queries), and ``score_scale``: the reference
  scores' standard deviation, to read it against;
* ``doc_spearman``: rank correlation of the documents' scores;
* ``bin_spearman``: rank correlation of the bin means (the bin matrix);
* ``top10``: how many of the reference's 10 highest-z bins are among the
  candidate's 10;
* ``planted_p4`` (demo runs): precision at 4 of the planted bins, both runs.

One parseable JSON last line. Typical use, on the demo:

    snakemake --cores 2 --directory A                      # the reference (fp32)
    cp -a A B && snakemake --cores 2 --directory B --configfile config/config.yaml bf16.yaml --until influence
    python bench/bench_precision.py --reference A/results/demo --candidate B/results/demo

with ``bf16.yaml`` holding ``attribution: {precision: bf16}``. On a GPU the
same two commands with ``--configfile config/olmo3-7b.yaml ...`` and a
scale-down measure the paper model.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import yaml
from _common import machine
from scipy import stats


def scores(run: Path) -> pd.DataFrame:
    frames = [pq.read_table(p).to_pandas() for p in sorted((run / "attribution" / "scores").glob("shard-*.parquet"))]
    if not frames:
        raise SystemExit(f"{run}: no attribution/scores/shard-*.parquet (is it a finished run?)")
    return pd.concat(frames, ignore_index=True).set_index("doc_id").sort_index()


def compare(reference: Path, candidate: Path) -> dict:
    ref, cand = scores(reference), scores(candidate)
    if not ref.index.equals(cand.index):
        raise SystemExit("the two runs scored different documents: compare runs of one working set")
    ref_matrix = pd.read_parquet(reference / "influence" / "bin_matrix.parquet")
    cand_matrix = pd.read_parquet(candidate / "influence" / "bin_matrix.parquet")
    truth_path = reference / "demo" / "world" / "ground_truth.json"
    truth = json.loads(truth_path.read_text())["benchmarks"] if truth_path.is_file() else None
    out = {}
    for name in [c for c in ref.columns if c != "bin_id"]:
        a, b = ref[name].to_numpy(np.float64), cand[name].to_numpy(np.float64)
        ok = np.isfinite(a) & np.isfinite(b)
        za = ref_matrix[ref_matrix["benchmark"] == name].set_index("bin_id")
        zb = cand_matrix[cand_matrix["benchmark"] == name].set_index("bin_id")
        scored = za["n_docs"] > 0
        top_a = set(za[scored]["zscore"].nlargest(10).index)
        top_b = set(zb[scored]["zscore"].nlargest(10).index)
        row = {
            "max_abs": float(np.max(np.abs(a[ok] - b[ok]))),
            "score_scale": float(np.std(a[ok])),
            "doc_spearman": float(stats.spearmanr(a[ok], b[ok])[0]),
            "bin_spearman": float(stats.spearmanr(za[scored]["mean"], zb[scored]["mean"])[0]),
            "top10": len(top_a & top_b),
        }
        if truth is not None and name in truth:
            planted = {b["bin_id"] for b in truth[name]["planted_bins"]}
            row["planted_p4"] = [
                len(planted & set(z[scored]["zscore"].nlargest(4).index)) / 4 for z in (za, zb)
            ]
        out[name] = row
    return out


def setting(run: Path) -> dict:
    config = yaml.safe_load((run / "config.yaml").read_text())
    return {k: config["attribution"].get(k) for k in ("precision", "max_batch_size", "token_batch_size")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", required=True, help="finished run directory (results/<run>) of the reference")
    parser.add_argument("--candidate", required=True, help="the same working set scored with the setting to check")
    args = parser.parse_args()
    reference, candidate = Path(args.reference), Path(args.candidate)
    rows = compare(reference, candidate)
    print(f"reference {setting(reference)} vs candidate {setting(candidate)}", file=sys.stderr)
    for name, row in rows.items():
        print(f"  {name:22s} " + " ".join(f"{k}={v}" for k, v in row.items()), file=sys.stderr)
    result = {"reference": setting(reference), "candidate": setting(candidate), "benchmarks": rows, "machine": machine()}
    print("bench_precision " + json.dumps(result))


if __name__ == "__main__":
    main()

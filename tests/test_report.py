"""`snakemake --report report.html` from a finished demo run holds every figure and the main tables.

The report is one self-contained HTML file: Snakemake embeds each result
registered with `report()` as a base64 data URI in a JSON object
(`var results = {...};`). The test reads that object back and checks that
each expected file is there with exactly the bytes the run wrote.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parent.parent
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
BENCHMARKS = ("socialiqa", "mmlu_social_sciences", "arc_challenge", "mmlu_stem")
FIGURES = (
    *(f"figures/heatmap_{b}.png" for b in BENCHMARKS),
    "figures/contrast_bars.png",
    "figures/correlations.png",
    "figures/verdict.png",
    "figures/standardised_effects.png",
    *(f"figures/unlearning_{kind}_{metric}.png" for kind in ("paired", "damage") for metric in ("acc", "logprob")),
)
# The tables a reader of the study looks for: the bin matrix and its marginals,
# the contrast summary, and the unlearning results with their paired statistics.
TABLES = (
    "influence/bin_matrix.parquet",
    "influence/topic_marginals.parquet",
    "influence/format_marginals.parquet",
    "contrast/summary.json",
    "contrast/topic_contrast.parquet",
    "contrast/format_contrast.parquet",
    "contrast/facet_effects.parquet",
    "unlearning/summary.parquet",
    "unlearning/paired_stats.parquet",
)
RESULTS = re.compile(r"var results = (\{.*?\});\s*</script>", re.DOTALL)


@pytest.fixture(scope="module")
def report(demo_run):
    """(the report's embedded results by path relative to the run, the run's directory)."""
    workdir = demo_run.parent.parent
    path = workdir / "report.html"
    done = subprocess.run(
        [str(SNAKEMAKE), "--snakefile", str(REPO_ROOT / "Snakefile"), "--directory", str(workdir),
         "--configfile", str(REPO_ROOT / "config" / "config.yaml"), "--report", str(path)],  # fmt: skip
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    html = path.read_text()
    match = RESULTS.search(html)
    assert match, "no embedded results in the report"
    results = json.loads(match.group(1))
    run_prefix = str(demo_run.relative_to(workdir)) + "/"
    return {key.removeprefix(run_prefix): entry for key, entry in results.items()}, demo_run


def embedded_bytes(entry: dict) -> bytes:
    header, _, payload = entry["data_uri"].partition(";base64,")
    assert header.startswith("data:"), header[:80]
    return base64.b64decode(payload)


@pytest.mark.parametrize("relative", FIGURES)
def test_report_holds_every_figure(report, relative):
    results, run = report
    assert relative in results, f"{relative} is not in the report (it has {sorted(results)})"
    entry = results[relative]
    assert entry["mime_type"] == "image/png"
    assert entry["caption"].strip(), f"{relative} has no caption"
    assert embedded_bytes(entry) == (run / relative).read_bytes()


@pytest.mark.parametrize("relative", TABLES)
def test_report_holds_the_main_tables(report, relative):
    results, run = report
    assert relative in results, f"{relative} is not in the report (it has {sorted(results)})"
    assert embedded_bytes(results[relative]) == (run / relative).read_bytes()

"""TrackStar attribution on the demo, as the DAG ran it (`demo_run`): outputs, provenance, Bergson
equivalence, bin sums, a planted document, sharding independence and the fault switch.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from scipy import stats

from capatlas.artifacts.provenance import PROVENANCE_FILE, PROVENANCE_KEY, provenance_sha256
from capatlas.artifacts import doc_bootstrap
from capatlas.artifacts.binsums import read_bin_sums
from capatlas.attribution.context import bergson_version
from capatlas.attribution.score_shard import FAIL_SHARDS_ENV, score_shard
from capatlas.taxonomy import N_BINS
from helpers_attribution import bergson_score_cli
from conftest import run_snakemake

# Scoring in this process with one thread, as the demo's attribution jobs do (attribution.threads).
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def demo(demo_run):
    config = yaml.safe_load((demo_run / "config.yaml").read_text())
    model = demo_run / "demo" / "model"
    benchmarks = [b["name"] for b in config["benchmarks"]]
    return {
        "run": demo_run,
        "config": config,
        "model": model,
        "optimizer_state": model / "optimizer.pt",
        "benchmarks": benchmarks,
        "shards": [demo_run / "shards" / f"shard-{k:05d}.parquet" for k in range(config["shards"]["count"])],
        "preconditioner": demo_run / "attribution" / "preconditioner",
        "query_indices": {name: demo_run / "attribution" / "queries" / name for name in benchmarks},
        "scores": [
            demo_run / "attribution" / "scores" / f"shard-{k:05d}.parquet" for k in range(config["shards"]["count"])
        ],
        "binsums": [
            demo_run / "attribution" / "binsums" / f"shard-{k:05d}.safetensors" for k in range(config["shards"]["count"])
        ],
    }


def score(demo, shard: Path, out: Path) -> tuple[Path, Path]:
    """Score a shard against the DAG's preconditioner and query indices, as the score_shard rule does."""
    outputs = (out / f"{shard.stem}.parquet", out / f"{shard.stem}.safetensors")
    score_shard(
        demo["config"],
        model=demo["model"],
        shard=shard,
        preconditioner=demo["preconditioner"],
        query_indices=demo["query_indices"],
        optimizer_state=str(demo["optimizer_state"]),
        out_scores=outputs[0],
        out_binsums=outputs[1],
    )
    return outputs


def write_shard(path: Path, doc_ids, bin_ids, texts) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        pa.table(
            {
                "doc_id": pa.array(list(doc_ids), pa.string()),
                "bin_id": pa.array(list(bin_ids), pa.int32()),
                "text": pa.array(list(texts), pa.string()),
            }
        ),
        path,
    )
    return path


def test_every_shard_is_scored_with_provenance(demo):
    pre = json.loads((demo["preconditioner"] / PROVENANCE_FILE).read_text())
    assert pre["optimizer_state"]["used"] is True  # the demo model's AdamW state
    assert pre["optimizer_state"]["path"] == str(demo["optimizer_state"].resolve())
    assert set(pre["query_sets"]) == set(demo["benchmarks"])
    assert pre["sample"]["n_docs"] == min(
        demo["config"]["attribution"]["preconditioner_docs"],
        sum(pq.read_metadata(s).num_rows for s in demo["shards"]),
    )
    for name in demo["benchmarks"]:
        query = json.loads((demo["query_indices"][name] / PROVENANCE_FILE).read_text())
        assert query["preconditioner"]["provenance_sha256"] == provenance_sha256(pre)
        assert query["in_preconditioner"] is True
        assert query["model"]["path"] == str(demo["model"].resolve())
    for shard, scores_path, binsums_path in zip(demo["shards"], demo["scores"], demo["binsums"]):
        scores = pq.read_table(scores_path)
        assert scores.column_names == ["doc_id", "bin_id", *demo["benchmarks"]]
        assert scores.column("doc_id").to_pylist() == pq.read_table(shard).column("doc_id").to_pylist()
        for name in demo["benchmarks"]:
            values = scores.column(name).to_numpy()
            # Demo documents have >= 16 tokens, so all are scored; means of cosines lie in [-1, 1].
            assert np.isfinite(values).all() and np.abs(values).max() <= 1
        provenance = json.loads(scores.schema.metadata[PROVENANCE_KEY])
        assert provenance == read_bin_sums(binsums_path).provenance
        assert provenance["bergson_version"] == bergson_version() == "2.5.1"
        assert provenance["identity"]["model_sha256"] == pre["identity"]["model_sha256"]
        assert provenance["preconditioner"]["provenance_sha256"] == provenance_sha256(pre)
        assert provenance["attribution"] == pre["attribution"]
        assert provenance["shard"]["path"] == str(shard.resolve()) and provenance["shard"]["n_docs"] == scores.num_rows
        assert [b["name"] for b in provenance["benchmarks"]] == demo["benchmarks"]
        # The shard's part of the document bootstrap, drawn with the run's settings (influence checks them).
        assert provenance["document_bootstrap"]["n_bootstrap"] == demo["config"]["analysis"]["bootstrap"]
        assert provenance["document_bootstrap"]["seed"] == demo["config"]["seed"]


def bergson_reference(demo, shard: Path, benchmark: str, run_dir: Path) -> np.ndarray:
    return bergson_score_cli(
        model=demo["model"],
        shard=shard,
        query_index=demo["query_indices"][benchmark] / "index",
        hessian=demo["preconditioner"] / "hessian",
        attribution=demo["config"]["attribution"],
        run_dir=run_dir,
        optimizer_state=demo["optimizer_state"],
    )


def test_demo_scores_and_bin_sums_equal_bergson_score(demo, tmp_path):
    """A demo shard's whole bins, one benchmark: the DAG's scores are the mean of Bergson's own per-query cosines.

    Bergson's CLI scores every document of a quarter of shard 0's bins (all of
    each bin's documents there), so each of those bins' sums can be checked whole.
    """
    k, name = 0, demo["benchmarks"][0]
    scores = pq.read_table(demo["scores"][k])
    shard = pq.read_table(demo["shards"][k])
    bins = scores.column("bin_id").to_numpy()
    sums = read_bin_sums(demo["binsums"][k])[name]
    np.testing.assert_array_equal(sums.count, np.bincount(bins, minlength=N_BINS))
    present = np.flatnonzero(sums.count)
    assert len(present) > 100
    assert not sums.sum[sums.count == 0].any()
    checked = present[::4]
    rows = np.flatnonzero(np.isin(bins, checked))
    assert shard.column("doc_id").to_pylist() == scores.column("doc_id").to_pylist()
    part = shard.take(rows)
    subset = write_shard(
        tmp_path / "subset" / "shard-00000.parquet",
        part.column("doc_id").to_pylist(),
        part.column("bin_id").to_pylist(),
        part.column("text").to_pylist(),
    )
    reference = bergson_reference(demo, subset, name, tmp_path / "bergson")
    n_queries = len(pq.read_table(demo["query_indices"][name] / "items.parquet"))
    assert reference.shape == (len(rows), n_queries)
    assert reference.std() > 1e-3  # not degenerate
    np.testing.assert_allclose(scores.column(name).to_numpy()[rows], reference.mean(axis=1), rtol=0, atol=1e-5)

    # Bin sums: per bin and query, sum / count is the mean of the documents' cosines.
    for b in checked:
        members = reference[bins[rows] == b]
        np.testing.assert_allclose(sums.sum[b] / sums.count[b], members.mean(axis=0), rtol=0, atol=1e-5)
        np.testing.assert_allclose(sums.sumsq[b], (members**2).sum(axis=0), rtol=0, atol=1e-5)

    # The combined bootstrap's sums: document weight x the document's query-weighted mean cosine, from the
    # keyed weights drawn again here (issue 18).
    config = demo["config"]
    n_boot, seed = config["analysis"]["bootstrap"], config["seed"]
    w = doc_bootstrap.poisson_weights(doc_bootstrap.document_keys(part.column("doc_id").to_pylist(), seed), n_boot)
    items = pq.read_table(demo["query_indices"][name] / "items.parquet").column("item_id").to_pylist()
    v = doc_bootstrap.query_mean_weights([str(i) for i in items], name, n_boot, seed)
    for b in checked:
        members = bins[rows] == b
        expected = (w[members] * (reference[members] @ v)).sum(axis=0)
        np.testing.assert_allclose(sums.joint_sum[:, b], expected, rtol=0, atol=1e-4)


def test_document_equal_to_a_query_scores_highest_for_it(demo, tmp_path):
    """A copy of a query's prompt + answer among 432 demo documents: mostly that query's top document.

    Exactly so for every query on a randomly initialised model (tests/test_attribution.py). On the
    trained demo model it is not a law: a copy's loss covers its whole text while the query's covers
    only the answer, 1-5 of a copy's 15-50 tokens, so a copy's gradient is mostly its prompt's and its
    cosine with the query (0.00-0.06) is of the order filler documents reach (on the demo, 130 of the
    144 copies are the top document; the misses are mostly ARC copies, whose prompts are longest).
    """
    import datasets

    queries = {name: datasets.load_from_disk(str(demo["run"] / "queries" / name)) for name in demo["benchmarks"]}
    # As many demo documents as leave a bin for each copy.
    base = pq.read_table(demo["shards"][0]).slice(0, N_BINS - sum(len(q) for q in queries.values()))
    n_demo = base.num_rows
    assert n_demo >= 400
    doc_ids, texts = base.column("doc_id").to_pylist(), base.column("text").to_pylist()
    planted = {}  # (benchmark, item_id) -> row
    for name, rows in queries.items():
        for row in rows:
            planted[(name, row["item_id"])] = len(texts)
            doc_ids.append(f"planted-{name}-{row['item_id']}")
            texts.append(row["prompt"] + row["completion"])
    assert len(texts) == N_BINS
    # Each document alone in its bin: the bin sums are then the per-document, per-query scores.
    shard = write_shard(tmp_path / "shard-00000.parquet", doc_ids, range(len(texts)), texts)
    _, binsums = score(demo, shard, tmp_path / "out")
    sums = read_bin_sums(binsums)
    ranks = {}
    for (name, item_id), row in planted.items():
        per_doc = sums[name].sum[: len(texts), sums[name].item_ids.index(item_id)]
        ranks[(name, item_id)] = int((per_doc[:n_demo] > per_doc[row]).sum())  # demo documents above the copy
    top = [key for key, rank in ranks.items() if rank == 0]
    assert len(top) >= 0.75 * len(ranks), sorted(ranks.items(), key=lambda kv: -kv[1])[:10]
    for name in demo["benchmarks"]:
        assert any(key[0] == name for key in top), name


def test_demo_scores_do_not_depend_on_sharding(demo, tmp_path):
    """Re-split into 12 shards: the same per-document scores (1e-6 relative), and a rerun is bit-identical."""
    dag = pa.concat_tables([pq.read_table(p) for p in demo["scores"]])
    by_doc = {doc: i for i, doc in enumerate(dag.column("doc_id").to_pylist())}
    docs = pa.concat_tables([pq.read_table(p, columns=["doc_id", "bin_id", "text"]) for p in demo["shards"]])
    docs = docs.sort_by("doc_id")  # another order than the DAG's token-balanced shards
    # One of the twelve: it mixes documents of every DAG shard.
    part = docs.take(list(range(0, docs.num_rows, 12)))
    assert {by_doc[d] < pq.read_metadata(demo["scores"][0]).num_rows for d in part.column("doc_id").to_pylist()} == {
        True,
        False,
    }
    shard = write_shard(
        tmp_path / "shards12" / "shard-00000.parquet",
        part.column("doc_id").to_pylist(),
        part.column("bin_id").to_pylist(),
        part.column("text").to_pylist(),
    )
    scores_path, binsums_path = score(demo, shard, tmp_path / "out12")
    ours = pq.read_table(scores_path)
    where = [by_doc[d] for d in ours.column("doc_id").to_pylist()]
    for name in demo["benchmarks"]:
        expected = dag.column(name).to_numpy()[where]
        np.testing.assert_allclose(ours.column(name).to_numpy(), expected, rtol=1e-6, atol=1e-7)
    again_scores, again_binsums = score(demo, shard, tmp_path / "again")
    assert pq.read_table(again_scores).equals(ours)
    assert Path(again_binsums).read_bytes() == Path(binsums_path).read_bytes()


def test_fault_switch_fails_only_the_listed_shard(demo, repo_root, venv_bin, tmp_path, monkeypatch):
    # Setting the switch changes no job's parameters: nothing is out of date.
    monkeypatch.setenv(FAIL_SHARDS_ENV, "00001")
    targets = [str(p.relative_to(demo["run"].parent.parent)) for p in demo["scores"] + demo["binsums"]]
    result = run_snakemake(repo_root, venv_bin, demo["run"].parent.parent, "-n", *targets)
    assert "Nothing to be done" in result.stdout + result.stderr

    # In a copy of the run, with shard 1's outputs gone, shard 1's job fails and writes nothing.
    workdir = tmp_path / "work"
    shutil.copytree(demo["run"].parent.parent, workdir, symlinks=True)
    run = workdir / "results" / "demo"
    for path in (
        run / "attribution" / "scores" / "shard-00001.parquet",
        run / "attribution" / "binsums" / "shard-00001.safetensors",
    ):
        path.unlink()
    others = {p: p.stat().st_mtime_ns for p in (run / "attribution").rglob("shard-0000[023].*")}
    target = "results/demo/attribution/scores/shard-00001.parquet"
    result = run_snakemake(repo_root, venv_bin, workdir, target, check=False)
    assert result.returncode != 0
    log = (run / "logs" / "attribution" / "scores" / "shard-00001.log").read_text()
    assert f"injected failure: shard shard-00001.parquet is listed in ${FAIL_SHARDS_ENV}=00001" in log
    assert not (run / "attribution" / "scores" / "shard-00001.parquet").exists()
    assert not (run / "attribution" / "binsums" / "shard-00001.safetensors").exists()
    assert {p: p.stat().st_mtime_ns for p in others} == others


def _scores_and_bin_means(run: Path, benchmarks: list[str]) -> tuple[dict, dict]:
    frames = [pq.read_table(p).to_pandas() for p in sorted((run / "attribution" / "scores").glob("shard-*.parquet"))]
    docs = pd.concat(frames).set_index("doc_id").sort_index()
    matrix = pq.read_table(run / "influence" / "bin_matrix.parquet").to_pandas()
    bins = {name: matrix[matrix["benchmark"] == name].set_index("bin_id") for name in benchmarks}
    return {name: docs[name].to_numpy(np.float64) for name in benchmarks}, bins


def test_bf16_scoring_keeps_the_bin_ranking(demo, repo_root, venv_bin, tmp_path):
    """Issue 19: attribution in bf16 against the demo's fp32 run (preconditioner, queries and scores all in bf16).

    Measured on two runs (world seed 42 threads 1, seed 44 threads 2; bench/bench_precision.py): document
    scores moved by at most 10-15% of their sd, rank correlations of documents and bin means 0.9992-0.9996,
    9-10 of the 10 top bins shared, planted precision unchanged.
    """
    workdir = tmp_path / "bf16"
    shutil.copytree(demo["run"].parent.parent, workdir, symlinks=True)
    override = tmp_path / "bf16.yaml"
    override.write_text(yaml.safe_dump({"attribution": {"precision": "bf16"}}))
    command = [str(venv_bin / "snakemake"), "--snakefile", str(repo_root / "Snakefile"), "--directory", str(workdir),
               "--configfile", str(repo_root / "config" / "config.yaml"), str(override), "--cores", "2",
               "--until", "influence"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    bf16_run = workdir / "results" / "demo"
    assert yaml.safe_load((bf16_run / "config.yaml").read_text())["attribution"]["precision"] == "bf16"
    fp32_docs, fp32_bins = _scores_and_bin_means(demo["run"], demo["benchmarks"])
    bf16_docs, bf16_bins = _scores_and_bin_means(bf16_run, demo["benchmarks"])
    for name in demo["benchmarks"]:
        a, b = fp32_docs[name], bf16_docs[name]
        assert 0 < np.abs(a - b).max() <= 0.3 * a.std(), name  # bf16 did run, and moved scores by little
        assert stats.spearmanr(a, b)[0] >= 0.99, name
        scored = fp32_bins[name]["n_docs"] > 0
        assert stats.spearmanr(fp32_bins[name]["mean"][scored], bf16_bins[name]["mean"][scored])[0] >= 0.99, name
        top = [set(bins[name]["zscore"][scored].nlargest(10).index) for bins in (fp32_bins, bf16_bins)]
        assert len(top[0] & top[1]) >= 7, (name, top)

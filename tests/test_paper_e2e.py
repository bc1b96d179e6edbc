"""The paper-scale path end to end, as README's step-by-step section documents it, on stand-ins.

The site file is README step 2's, parsed from the README and relocated under
a scratch root where helpers_paper builds inputs shaped like the real ones
(Dolma 3 tree with a topic-less source, tiny random OLMo-3 base and Instruct
models, a tiny random format classifier, benchmarks in their hub layouts).
The commands are README's own (check the plan, run on one machine, report),
with `.test/config/scale-down.yaml` appended: it shrinks sizes only, so what
runs is config/olmo3-7b.yaml's method. The assertions are what the paper
path must guarantee and the demo cannot show.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from helpers_paper import PAPER_CONFIG, SCALE_DOWN, TOPICAL_DIRS, TOPICLESS_DIR, build_stand_ins, readme_commands, write_site
from helpers_runs import job_stats

from capatlas.config import deep_merge, load_config
from capatlas.taxonomy import FORMAT_SLUGS, TOPIC_SLUGS

pytestmark = pytest.mark.slow

BENCHMARKS = ["socialiqa", "mmlu_social_sciences", "arc_challenge", "mmlu_stem"]


def readme_command(marker: str, site_path, report=None) -> list[str]:
    """README's paper-scale command containing `marker`, on this site file, with the scale-down file appended."""
    (command,) = [c for c in readme_commands() if marker in c]
    words = []
    for word in shlex.split(command):
        if word == "config/olmo3-7b.yaml":
            words.append(str(PAPER_CONFIG))
        elif word == "config/site.yaml":
            words += [str(site_path), str(SCALE_DOWN)]
        elif word == "N":  # --cores N
            words.append("2")
        elif word == "gpu=G":  # two "GPUs": this machine's two cores run two GPU-family jobs at once
            words.append("gpu=2")
        elif word == "report.html" and report is not None:
            words.append(str(report))
        else:
            words.append(word)
    return words


def run(repo_root, venv_bin, words: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    words = [str(venv_bin / "snakemake"), *words[1:]]
    result = subprocess.run(words, cwd=repo_root, capture_output=True, text=True, env=env, timeout=1200)
    assert result.returncode == 0, shlex.join(words) + "\n" + result.stdout[-4000:] + result.stderr[-6000:]
    return result


@pytest.fixture(scope="module")
def paper(repo_root, venv_bin, tmp_path_factory):
    """Stand-ins, then README steps 3 (plan), 4 (run on one machine) and 6 (report)."""
    root = tmp_path_factory.mktemp("paper")
    site = build_stand_ins(root)
    site_path = write_site(root)
    plan = run(repo_root, venv_bin, readme_command(" -n ", site_path))
    done = run(repo_root, venv_bin, readme_command("profiles/default", site_path))
    report = root / "report.html"
    run(repo_root, venv_bin, readme_command("--report", site_path, report=report))
    config = load_config(PAPER_CONFIG, overrides=deep_merge(site, yaml.safe_load(SCALE_DOWN.read_text())))
    results = Path(site["results_dir"]) / config["run"]
    return {
        "site": site,
        "config": config,
        "results": results,
        "plan": plan.stdout + plan.stderr,
        "output": done.stdout + done.stderr,
        "report": report,
    }


def test_plan_lists_the_paper_jobs_and_leaves_the_topicless_source_out(paper):
    planned = job_stats(paper["plan"])
    # Scan jobs over groups of the topical corpus files (classifying lazily); stack_edu-0004 (no topic) is not globbed.
    from capatlas.corpus.readers import expand_paths, scan_groups

    files = expand_paths(paper["site"]["corpus"]["paths"])
    assert len(files) == len(TOPICAL_DIRS)
    assert planned["manifest_scan"] == len(scan_groups(files, paper["config"]["manifest"]["files_per_scan"])), planned
    assert "labels" not in planned
    assert TOPICLESS_DIR not in paper["plan"]
    assert planned["score_shard"] == paper["config"]["shards"]["count"] == 2
    assert planned["unlearn"] == len(BENCHMARKS)  # top topic; its seeds and conditions in one job
    assert "demo_world" not in planned and "demo_model" not in planned
    assert job_stats(paper["output"]) == planned


def test_topic_comes_from_the_path_and_format_from_the_classifier(paper):
    from capatlas.corpus.labels import classify_texts, load_classifier
    from capatlas.corpus.readers import iter_records

    manifest = pd.read_parquet(paper["results"] / "manifest" / "manifest.parquet")
    topics = {TOPIC_SLUGS.index(d.split("-")[1]) for d in TOPICAL_DIRS}
    assert set(manifest["topic_id"]) == topics
    for directory in TOPICAL_DIRS:
        docs = manifest[manifest["doc_id"].str.startswith(directory)]
        assert set(docs["topic_id"]) == {TOPIC_SLUGS.index(directory.split("-")[1])}
    # Formats are the classifier's argmax on each document's text, as the config asks (max_length,
    # template), recomputed here over every record of each file at the configured batch size on one
    # thread (the lazy scan classifies fewer records in other batches; classify_texts sorts by length and
    # is batch-independent, tests/test_labels.py).
    import torch

    settings = paper["config"]["corpus"]["classifier"]
    model, tokenizer = load_classifier(paper["site"]["corpus"]["labels"]["format"]["model"])
    predicted = {}
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for directory in TOPICAL_DIRS:
            (path,) = Path(paper["site"]["corpus"]["paths"][0]).parent.parent.glob(f"{directory}/*.jsonl.zst")
            records = list(iter_records(path))
            ids, _ = classify_texts(model, tokenizer, [r.text for r in records], settings["batch_size"], settings["max_length"])
            predicted.update(zip((r.doc_id for r in records), ids.tolist()))
    finally:
        torch.set_num_threads(before)
    assert list(manifest["format_id"]) == [predicted[d] for d in manifest["doc_id"]]
    assert manifest["format_id"].nunique() > 1  # a real spread, not one default class
    assert all(0 <= f < len(FORMAT_SLUGS) for f in manifest["format_id"])


def test_queries_are_olmes_mc_and_their_gradients_come_from_the_instruct_model(paper):
    import datasets

    results, site = paper["results"], paper["site"]
    for name in BENCHMARKS:
        queries = datasets.load_from_disk(str(results / "queries" / name))
        assert len(queries) > 0
        for row in queries:
            assert row["prompt"].endswith("\nAnswer:") and "\n A. " in row["prompt"], row["prompt"]
            if name.startswith("mmlu"):  # OLMES's MMLU prompts open with the subject header
                subject = row["subject"].replace("_", " ")
                header = f"The following are multiple choice questions (with answers) about {subject}.\n\n"
                assert row["prompt"].startswith(header + "Question: "), row["prompt"]
            else:
                assert row["prompt"].startswith("Question: "), row["prompt"]
            assert row["completion"] == " " + "ABCDE"[row["gold"]]
        record = json.loads((results / "queries" / name / "queries.json").read_text())
        assert record["prompt_format"] == "olmes_mc"
        # Held-out items: the queries are not the items evaluated (nor the guard's).
        roles = record["item_roles"]
        assert roles["design"] == "held_out" and len(record["item_ids"]) == roles["items"]["queries"] > 0
        assert sum(roles["items"].values()) == record["n_items_available"]
        evaluated = json.loads((results / "eval" / "base.json").read_text())["benchmarks"][name]["n_items"]
        assert evaluated == roles["items"]["evaluation"] > 0
        assert record["tokenizer"] == site["models"]["query"]["path"]
        gradients = json.loads((results / "attribution" / "queries" / name / "provenance.json").read_text())
        assert gradients["model"]["path"] == site["models"]["query"]["path"]
    # Documents (and the curvature that preconditions them) go through the base model.
    preconditioner = json.loads((results / "attribution" / "preconditioner" / "provenance.json").read_text())
    assert preconditioner["model"]["path"] == site["models"]["document"]["path"]


def test_bin_matrix_and_contrast_cover_the_sampled_bins(paper):
    results = paper["results"]
    matrix = pd.read_parquet(results / "influence" / "bin_matrix.parquet")
    assert set(matrix["benchmark"]) == set(BENCHMARKS)
    sampled = pd.read_csv(results / "manifest" / "bin_summary.csv").query("sampled > 0")
    assert set(matrix.dropna(subset=["zscore"])["bin_id"]) == set(sampled["bin_id"])
    summary = json.loads((results / "contrast" / "summary.json").read_text())
    assert summary
    for name in ("contrast_bars", "correlations", *(f"heatmap_{b}" for b in BENCHMARKS)):
        assert (results / "figures" / f"{name}.png").stat().st_size > 0
    assert paper["report"].stat().st_size > 0


def test_random_forget_sets_are_matched_in_tokens_within_the_topic(paper):
    record = json.loads((paper["results"] / "unlearning" / "forget_sets.json").read_text())
    tolerance = paper["config"]["unlearning"]["forget"]["token_tolerance"]
    runs = {(r["target"], r["condition"]): r for r in record["runs"]}
    for target in BENCHMARKS:
        influence, random = runs[(target, "influence")], runs[(target, "random")]
        assert random["unit"] == influence["unit"] and random["n_docs"] == influence["n_docs"]
        assert abs(random["n_tokens"] - influence["n_tokens"]) <= tolerance * influence["n_tokens"]
        chosen = {
            condition: pd.read_parquet(paper["results"] / "unlearning" / run["path"] / "forget_set.parquet")
            for condition, run in (("influence", influence), ("random", random))
        }
        assert not set(chosen["influence"]["doc_id"]) & set(chosen["random"]["doc_id"])
        for table in chosen.values():
            assert set(table["topic_id"]) == {TOPIC_SLUGS.index(influence["unit"])}
            assert table["n_tokens"].sum() == (influence if table is chosen["influence"] else random)["n_tokens"]


def test_evaluation_and_unlearning_run_in_bf16_with_the_studys_lora(paper):
    results = paper["results"]
    base = json.loads((results / "eval" / "base.json").read_text())
    assert base["settings"]["precision"] == "bf16" and base["settings"]["dtype"] == "bfloat16"
    for target in BENCHMARKS:
        for condition in ("influence", "random"):
            run = results / "unlearning" / target / "top1" / condition / "seed0"
            record = json.loads((run / "eval.json").read_text())
            assert record["method"] == "ngdiff" and record["dtype"] == "bfloat16", record
            assert record["steps"] >= 1
            adapter = json.loads((run / "adapter" / "adapter_config.json").read_text())
            assert (adapter["r"], adapter["lora_alpha"], adapter["lora_dropout"]) == (8, 16, 0.05)
            assert sorted(adapter["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    summary = pd.read_parquet(results / "unlearning" / "summary.parquet")
    assert set(summary["target"]) == set(BENCHMARKS)

"""Paper-scale planning: `snakemake -n` with config/olmo3-7b.yaml on a fake Dolma 3 layout."""

from __future__ import annotations

import json
import re
import subprocess

import yaml
import zstandard

from capatlas.config import load_config

DOLMA_DIRS = [
    "common_crawl-religion-0016",
    "common_crawl-social_life-0002",
    "olmocr_science_pdfs-science_math_and_technology-0003",
]


def write_fake_dolma(root, directories=DOLMA_DIRS):
    """A Dolma 3 mix layout: data/<source>-<topic_slug>-<NNNN>/<shard>.jsonl.zst."""
    files = []
    for directory in directories:
        for shard in range(2):
            path = root / "data" / directory / f"shard_{shard:08d}.jsonl.zst"
            path.parent.mkdir(parents=True, exist_ok=True)
            lines = "".join(
                json.dumps({"id": f"{directory}-{shard}-{i}", "text": f"document {i} of {directory}", "metadata": {}})
                + "\n"
                for i in range(3)
            )
            path.write_bytes(zstandard.ZstdCompressor().compress(lines.encode()))
            files.append(path)
    return files


def stand_in_benchmarks(tmp_path):
    """benchmark_root with the paper config's three dataset directories (planning checks they exist)."""
    root = tmp_path / "benchmarks"
    for name in ("allenai/social_i_qa", "cais/mmlu", "allenai/ai2_arc"):
        (root / name).mkdir(parents=True, exist_ok=True)
    return root


def site_config(tmp_path, dolma_root):
    models = tmp_path / "models"
    for name in ("Olmo-3-1025-7B", "Olmo-3-7B-Instruct", "FormatClassifier-NoURL"):
        (models / name).mkdir(parents=True)
        (models / name / "config.json").write_text("{}")
    site = {
        "results_dir": str(tmp_path / "results"),
        "benchmark_root": str(stand_in_benchmarks(tmp_path)),
        "corpus": {
            "paths": [str(dolma_root / "data" / "*" / "*.jsonl.zst")],
            "labels": {"format": {"model": str(models / "FormatClassifier-NoURL")}},
        },
        "models": {
            "document": {"path": str(models / "Olmo-3-1025-7B")},
            "query": {"path": str(models / "Olmo-3-7B-Instruct")},
        },
    }
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(site))
    return path


def job_counts(output: str) -> dict[str, int]:
    counts = {}
    in_table = False
    for line in output.splitlines():
        if line.startswith("job ") and "count" in line:
            in_table = True
            continue
        if in_table:
            match = re.match(r"^(\w+)\s+(\d+)\s*$", line.strip())
            if match:
                counts[match.group(1)] = int(match.group(2))
            elif counts and not line.strip():
                break
    return counts


def test_paper_scale_dag_plans_on_a_dolma_layout(repo_root, venv_bin, tmp_path):
    dolma_root = tmp_path / "dolma3_mix-6T-1025-7B"
    files = write_fake_dolma(dolma_root)
    site = site_config(tmp_path, dolma_root)
    result = subprocess.run(
        [
            str(venv_bin / "snakemake"),
            "-n",
            "--configfile",
            str(repo_root / "config" / "olmo3-7b.yaml"),
            str(site),
        ],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    counts = job_counts(result.stdout + result.stderr)
    # One classifier job per corpus file (format labels), then the manifest and shards.
    assert counts["labels"] == len(files), counts
    assert counts["manifest"] == 1
    assert counts["shards"] == 1
    assert counts["queries"] == 1  # one job for the four benchmarks of the 2 x 2 design
    assert "demo_world" not in counts and "demo_model" not in counts
    # A dry run writes nothing into results/ (a running job's config is never rewritten under it).
    assert not (tmp_path / "results").exists()
    resolved = load_config(repo_root / "config" / "olmo3-7b.yaml", overrides=yaml.safe_load(site.read_text()))
    assert resolved["shards"]["count"] == 316
    assert resolved["demo"]["enabled"] is False


def test_topicless_sources_stop_planning_before_any_labels_job(repo_root, venv_bin, tmp_path):
    """Dolma 3's code and math sources carry no topic in their directory: named when the DAG is planned."""
    dolma_root = tmp_path / "dolma3_mix-6T-1025-7B"
    write_fake_dolma(dolma_root, [*DOLMA_DIRS, "stack_edu-0004", "finemath-0001"])
    site = site_config(tmp_path, dolma_root)
    command = [str(venv_bin / "snakemake"), "-n", "--configfile", str(repo_root / "config" / "olmo3-7b.yaml"), str(site)]
    result = subprocess.run(command, cwd=repo_root, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in output
    assert "4 of 10 corpus files have no topic in their path" in output, output[-3000:]
    assert "finemath-0001, stack_edu-0004" in output and "common_crawl-*/" in output
    assert "rule labels" not in output
    # The narrower glob the message suggests plans the web sources only.
    config = yaml.safe_load(site.read_text())
    config["corpus"]["paths"] = [str(dolma_root / "data" / "*-*-[0-9]*" / "*.jsonl.zst")]
    site.write_text(yaml.safe_dump(config))
    result = subprocess.run(command, cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert job_counts(result.stdout + result.stderr)["labels"] == 2 * len(DOLMA_DIRS)


def test_planning_names_every_missing_input_path(repo_root, venv_bin, tmp_path):
    """README step 2's site file with paths that do not exist: every one is named before any job runs."""
    dolma_root = tmp_path / "dolma3_mix-6T-1025-7B"
    write_fake_dolma(dolma_root)
    site = site_config(tmp_path, dolma_root)
    config = yaml.safe_load(site.read_text())
    config["benchmark_root"] = str(tmp_path / "no_benchmarks")
    config["models"]["query"]["path"] = str(tmp_path / "no_instruct")
    site.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [str(venv_bin / "snakemake"), "-n", "--configfile", str(repo_root / "config" / "olmo3-7b.yaml"), str(site)],
        cwd=repo_root, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "5 configured input(s) do not exist" in output, output[-3000:]
    for key in ("benchmarks[socialiqa].source", "benchmarks[mmlu_stem].source", "models.query.path"):
        assert key in output
    assert str(tmp_path / "no_benchmarks" / "allenai" / "ai2_arc") in output and "rule " not in output


def test_missing_corpus_glob_stops_planning_with_the_glob_named(repo_root, venv_bin, tmp_path):
    dolma_root = tmp_path / "nowhere"
    site = site_config(tmp_path, dolma_root)
    result = subprocess.run(
        [str(venv_bin / "snakemake"), "-n", "--configfile", str(repo_root / "config" / "olmo3-7b.yaml"), str(site)],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert str(dolma_root / "data") in result.stdout + result.stderr


def test_config_typo_stops_planning_with_the_key_named(repo_root, venv_bin, tmp_path):
    bad = tmp_path / "typo.yaml"
    config = yaml.safe_load((repo_root / "config" / "config.yaml").read_text())
    config["manifest"]["min_tokns"] = 3
    config["results_dir"] = str(tmp_path / "results")
    bad.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [str(venv_bin / "snakemake"), "-n", "--configfile", str(bad)],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert "unknown config key 'manifest.min_tokns' (did you mean 'min_tokens'?)" in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()

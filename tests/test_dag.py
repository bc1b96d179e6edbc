"""Paper-scale planning: `snakemake -n` with config/olmo3-7b.yaml on a fake Dolma 3 layout."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from capatlas.config import load_config
from capatlas.corpus.readers import scan_groups
from helpers_paper import empty_benchmark_root, readme_site, relocate, write_dolma, write_site

DOLMA_DIRS = [
    "common_crawl-religion-0016",
    "common_crawl-social_life-0002",
    "olmocr_science_pdfs-science_math_and_technology-0003",
]


def site_config(tmp_path, dolma_dirs=DOLMA_DIRS):
    """README step 2's site file relocated under tmp_path, with paths that exist but hold nothing real.

    Planning only checks that inputs exist, so the models and benchmarks are
    empty directories; the corpus is a small Dolma 3 tree (helpers_paper).
    """
    site = relocate(readme_site(), tmp_path)
    corpus_glob = Path(site["corpus"]["paths"][0])
    files = write_dolma(corpus_glob.parent.parent.parent, dolma_dirs, docs=3)
    for path in (site["models"]["document"]["path"], site["models"]["query"]["path"],
                 site["corpus"]["labels"]["format"]["model"]):  # fmt: skip
        Path(path).mkdir(parents=True)
        (Path(path) / "config.json").write_text("{}")
    empty_benchmark_root(Path(site["benchmark_root"]))
    return write_site(tmp_path, site), files


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
    site, files = site_config(tmp_path)
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
    # Scan jobs over groups of corpus files (classifying formats lazily), one merge, then the shards.
    resolved_groups = scan_groups([str(f) for f in files], load_config(repo_root / "config" / "olmo3-7b.yaml")["manifest"]["files_per_scan"])
    assert counts["manifest_scan"] == len(resolved_groups), counts
    assert "labels" not in counts
    assert counts["manifest"] == 1
    assert counts["shards"] == 1
    assert counts["queries"] == 1  # one job for the four benchmarks of the 2 x 2 design
    assert "demo_world" not in counts and "demo_model" not in counts
    # A dry run writes nothing into results/ (a running job's config is never rewritten under it).
    assert not Path(yaml.safe_load(site.read_text())["results_dir"]).exists()
    resolved = load_config(repo_root / "config" / "olmo3-7b.yaml", overrides=yaml.safe_load(site.read_text()))
    assert resolved["shards"]["count"] == 316
    assert resolved["demo"]["enabled"] is False


def test_topicless_sources_stop_planning_before_any_scan_job(repo_root, venv_bin, tmp_path):
    """Dolma 3's code and math sources carry no topic in their directory: named when the DAG is planned."""
    site, _ = site_config(tmp_path, [*DOLMA_DIRS, "stack_edu-0004", "finemath-0001"])
    # The whole data/ directory, not README's narrower glob.
    config = yaml.safe_load(site.read_text())
    narrow = config["corpus"]["paths"][0]
    dolma_data = Path(narrow).parent.parent
    config["corpus"]["paths"] = [str(dolma_data / "*" / "*.jsonl.zst")]
    site.write_text(yaml.safe_dump(config))
    command = [str(venv_bin / "snakemake"), "-n", "--configfile", str(repo_root / "config" / "olmo3-7b.yaml"), str(site)]
    result = subprocess.run(command, cwd=repo_root, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in output
    assert "2 of 5 corpus files have no topic in their path" in output, output[-3000:]
    assert "finemath-0001, stack_edu-0004" in output and "common_crawl-*/" in output
    assert "rule manifest_scan" not in output
    # README's glob, the narrower one the message suggests, plans the web sources only.
    config["corpus"]["paths"] = [narrow]
    site.write_text(yaml.safe_dump(config))
    result = subprocess.run(command, cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert job_counts(result.stdout + result.stderr)["manifest_scan"] >= 1


def test_planning_names_every_missing_input_path(repo_root, venv_bin, tmp_path):
    """README step 2's site file before step 1 (nothing on disk): every missing input is named, no job runs."""
    site = write_site(tmp_path)
    config = yaml.safe_load(site.read_text())
    result = subprocess.run(
        [str(venv_bin / "snakemake"), "-n", "--configfile", str(repo_root / "config" / "olmo3-7b.yaml"), str(site)],
        cwd=repo_root, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in output and "rule " not in output, output[-3000:]
    for key in (
        "benchmarks[socialiqa].source", "benchmarks[mmlu_social_sciences].source",
        "benchmarks[arc_challenge].source", "benchmarks[mmlu_stem].source",
        "models.document.path", "models.query.path", "corpus.labels.format.model", "corpus.paths",
    ):  # fmt: skip
        assert key in output, (key, output[-3000:])
    for path in (
        Path(config["benchmark_root"]) / "allenai" / "ai2_arc",
        config["models"]["query"]["path"],
        config["corpus"]["labels"]["format"]["model"],
        config["corpus"]["paths"][0],
    ):
        assert str(path) in output, (path, output[-3000:])


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


def test_the_studys_manifest_replaces_the_sample(repo_root, venv_bin, tmp_path):
    """manifest.study_manifest: one import job instead of the scans and merge; attribution plans as before."""
    site, _ = site_config(tmp_path)
    config = yaml.safe_load(site.read_text())
    study = tmp_path / "study" / "working_sample_manifest.parquet"
    study.parent.mkdir()
    study.write_bytes(b"")  # planning checks that it exists; the import job reads it
    config.setdefault("manifest", {})["study_manifest"] = str(study)
    site.write_text(yaml.safe_dump(config))
    command = [str(venv_bin / "snakemake"), "-n", "-p", "--configfile", str(repo_root / "config" / "olmo3-7b.yaml"), str(site)]
    result = subprocess.run(command, cwd=repo_root, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    counts = job_counts(output)
    assert "manifest_scan" not in counts and counts["manifest"] == 1 and counts["score_shard"] == 316
    assert f"capatlas import-study-manifest --config \"$CAPATLAS_CONFIG\" --study {study}" in output

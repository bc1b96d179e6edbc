"""`snakemake --lint` has nothing to say about the workflow, for the demo and for the study config."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_dag import site_config

REPO_ROOT = Path(__file__).resolve().parent.parent
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
# "Lints for rule manifest (line 52, .../corpus.smk):" and its "    * <title>:" items.
FINDING = re.compile(r"^(Lints for .*?):?$|^    \* (.*?):?$", re.MULTILINE)


def findings(output: str) -> list[str]:
    lines, where = [], ""
    for match in FINDING.finditer(output):
        if match.group(1):
            where = re.sub(r"\(line \d+, ", "(", match.group(1))
        else:
            lines.append(f"{where}: {match.group(2)}")
    return lines


def lint(workdir: Path, *config_args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SNAKEMAKE), "--snakefile", str(REPO_ROOT / "Snakefile"), "--directory", str(workdir), *config_args,
         "--lint"],  # fmt: skip
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
        timeout=300,
    )


@pytest.mark.parametrize("config", ["demo", "study"])
def test_snakemake_lint_reports_nothing(config, tmp_path):
    args: tuple[str, ...] = ()
    if config == "study":
        # The study's rules (labels from a classifier, a query model of its own) over a one-file corpus.
        corpus = tmp_path / "corpus" / "common_crawl-religion-0000" / "part-0.jsonl"  # Dolma 3: topic in the path
        corpus.parent.mkdir(parents=True)
        corpus.write_text('{"id": "a", "text": "x"}\n')
        site = tmp_path / "site.yaml"
        config = yaml.safe_load(site_config(tmp_path)[0].read_text())
        config["corpus"]["paths"] = [str(corpus)]
        site.write_text(yaml.safe_dump(config))
        args = ("--configfile", str(REPO_ROOT / "config" / "olmo3-7b.yaml"), str(site))
    result = lint(tmp_path, *args)
    output = result.stdout + result.stderr
    found = findings(output)
    assert not found, f"{len(found)} lint finding(s):\n" + "\n".join(found)
    assert result.returncode == 0, output[-3000:]

"""Job resources sized from the work (capatlas.resources): score-shard runtimes, memory grown only after OOM."""

from __future__ import annotations

import json
import os

import pytest

from capatlas.errors import CapatlasError
from capatlas.resources import failed_for_memory, job_logs, memory_mb, scoring_runtime, shard_tokens

SCORING = {"tokens_per_second": 800.0, "safety": 1.5, "startup_minutes": 15}


def test_runtime_scales_with_shard_tokens_and_attempt():
    # 27M tokens (a paper shard at 1,500 tokens per document) at 800 tokens/s: 15 + 1.5 x 562.5 minutes.
    assert scoring_runtime(27_000_000, SCORING, 480, 1) == 15 + 844
    assert scoring_runtime(54_000_000, SCORING, 480, 1) == 15 + 1688  # twice the tokens, twice the work
    assert scoring_runtime(27_000_000, SCORING, 480, 2) == 2 * (15 + 844)  # a retry gets more time
    # No throughput configured, or shards.json not written yet: the GPU family's runtime.
    assert scoring_runtime(27_000_000, {**SCORING, "tokens_per_second": None}, 480, 2) == 960
    assert scoring_runtime(None, SCORING, 480, 1) == 480


def test_shard_tokens_from_the_shards_summary(tmp_path):
    summary = tmp_path / "shards.json"
    assert shard_tokens(summary, "00001") is None  # before the shards rule ran
    summary.write_text(json.dumps({"shards": [{"shard": 0, "tokens": 10}, {"shard": 1, "tokens": 25}]}))
    assert shard_tokens(summary, "00001") == 25
    with pytest.raises(CapatlasError, match=r"shards.json lists no shard 00007"):
        shard_tokens(summary, "00007")
    summary.write_text(json.dumps({"shards": [{"shard": 0}]}))
    with pytest.raises(CapatlasError, match=r"shards.json is not the shards rule's summary"):
        shard_tokens(summary, "00000")


def test_memory_grows_only_after_running_out_of_memory(tmp_path):
    rule_log = tmp_path / "logs" / "shard-00003.log"
    rule_log.parent.mkdir()
    logs = job_logs(str(rule_log), tmp_path / "slurm", "score_shard", ["00003"])
    assert memory_mb(96000, 1, logs) == 96000
    assert memory_mb(96000, 2, logs) == 96000  # no log at all: nothing says memory was short
    rule_log.write_text("scoring...\nslurmstepd: error: *** JOB 12 CANCELLED DUE TO TIME LIMIT ***\n")
    assert not failed_for_memory(logs) and memory_mb(96000, 2, logs) == 96000
    rule_log.write_text("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n")
    assert memory_mb(96000, 2, logs) == 192000 and memory_mb(96000, 3, logs) == 288000
    # The SLURM job log of a later attempt (cgroup OOM kill) counts; the newest log decides.
    slurm = tmp_path / "slurm" / "score_shard" / "00003"
    slurm.mkdir(parents=True)
    rule_log.write_text("scoring...\n")
    (slurm / "4711.log").write_text("slurmstepd: error: Detected 1 oom_kill event in StepId=4711.batch\n")
    os.utime(rule_log, ns=(1, 1))
    logs = job_logs(str(rule_log), tmp_path / "slurm", "score_shard", ["00003"])
    assert logs[1].name == "4711.log" and memory_mb(96000, 2, logs) == 192000


def test_the_slurm_profiles_gpu_partition_example_names_every_gpu_rule(repo_root):
    """profiles/slurm/config.yaml's commented set-resources block covers exactly the GPU-family rules."""
    import re

    import yaml

    lines = (repo_root / "profiles" / "slurm" / "config.yaml").read_text().splitlines()
    start = lines.index("#   set-resources:")
    block = []
    for line in lines[start:]:
        if not line.startswith("#   "):
            break
        block.append(line[len("#   ") :])
    example = yaml.safe_load("\n".join(block))["set-resources"]
    gpu_rules = set()
    for smk in sorted((repo_root / "workflow" / "rules").glob("*.smk")):
        text = smk.read_text()
        for use in re.finditer(r'attempt_resources\(\s*"gpu"', text):
            header = list(re.finditer(r"^\s*rule\s*(\w*):", text[: use.start()], re.M))[-1]
            if header.group(1):
                gpu_rules.add(header.group(1))
            else:  # rules made in a loop take their names from its table
                gpu_rules.update(re.findall(r'^\s+\("(\w+)", ', text, re.M))
    assert gpu_rules and set(example) == gpu_rules, (sorted(example), sorted(gpu_rules))
    assert all(entry == {"slurm_partition": "gpu"} for entry in example.values())


def test_shard_count_from_target_hours(repo_root):
    """shards.target_hours derives the count from the quota, the context (or mean_tokens) and the throughput."""
    import math

    from capatlas.config import load_config
    from capatlas.plan import shard_count, shard_ids
    from capatlas.resources import scoring_runtime

    config = load_config(repo_root / "config" / "olmo3-7b.yaml")
    assert shard_count(config) == config["shards"]["count"] == 316
    config["shards"]["target_hours"] = 12
    # 576 bins x 10,000 documents x 4,096 tokens (the context: an upper bound) x 1.5 / 1,160 tokens/s
    expected = math.ceil(576 * 10_000 * 4096 * 1.5 / 1160 / (12 * 3600))
    assert shard_count(config) == expected == 707
    config["shards"]["mean_tokens"] = 1500
    assert shard_count(config) == math.ceil(576 * 10_000 * 1500 * 1.5 / 1160 / (12 * 3600)) == 259
    assert len(shard_ids(config)) == 259
    # Each shard of that size then asks at most the target (plus start-up) on its first attempt.
    per_shard = 576 * 10_000 * 1500 / 259
    assert scoring_runtime(per_shard, config["resources"]["scoring"], 480, 1) <= 12 * 60 + 15
    config["shards"]["mean_tokens"] = 100_000  # more than the context: capped
    assert shard_count(config) == 707
    config["resources"]["scoring"]["tokens_per_second"] = None
    with pytest.raises(CapatlasError, match="tokens_per_second"):
        shard_count(config)
    config["resources"]["scoring"]["tokens_per_second"] = 1160
    config["manifest"]["allocation"] = "proportional"
    with pytest.raises(CapatlasError, match="allocation 'quota'"):
        shard_count(config)

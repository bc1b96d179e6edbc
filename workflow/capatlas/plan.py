"""What a run holds, from its config alone: shard ids and file names, the unlearning runs and where they live.

Light on purpose (the standard library and the taxonomy only): the
Snakefile imports it to plan the DAG before any job runs, and the stages
import it to name what they write, so each name is spelled here once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from capatlas.errors import CapatlasError
from capatlas.taxonomy import FORMAT_SLUGS, N_BINS, TOPIC_SLUGS, bin_slug

# ------------------------------------------------------------------ shards


def shard_id(k: int) -> str:
    """The zero-padded id a shard's files are named by (`00003`)."""
    return f"{k:05d}"


def shard_count(config: dict) -> int:
    """`shards.count`, or with `shards.target_hours` the count that keeps every score job within that many hours.

    Planned from config alone (the DAG's shape must not change once the
    manifest exists): the quota's documents x the expected scored tokens per
    document (`shards.mean_tokens`, else the attribution context, an upper
    bound) x `resources.scoring.safety` / `tokens_per_second`, in jobs of
    `target_hours`.
    """
    shards = config["shards"]
    hours = shards.get("target_hours")
    if not hours:
        return int(shards["count"])
    scoring = (config.get("resources") or {}).get("scoring") or {}
    rate = scoring.get("tokens_per_second")
    if not rate:
        raise CapatlasError(
            "config key 'shards.target_hours' needs 'resources.scoring.tokens_per_second' (a score job's throughput)"
        )
    manifest = config["manifest"]
    if manifest["allocation"] != "quota":
        raise CapatlasError(
            "config key 'shards.target_hours' needs manifest.allocation 'quota' (the sample's size must be known "
            "when the DAG is planned); set shards.count instead"
        )
    attribution = config["attribution"]
    context = min(int(attribution["max_length"]), int(attribution["token_batch_size"]))
    per_doc = min(int(shards.get("mean_tokens") or context), context)
    seconds = N_BINS * int(manifest["docs_per_bin"]) * per_doc * float(scoring.get("safety", 1.0)) / float(rate)
    return max(1, math.ceil(seconds / (float(hours) * 3600)))


def shard_ids(config: dict) -> list[str]:
    return [shard_id(k) for k in range(shard_count(config))]


def shard_file(k: int) -> str:
    """A shard's file name under shards/ (`shard-00003.parquet`)."""
    return f"shard-{shard_id(k)}.parquet"


# -------------------------------------------------------------- unlearning

UNIT_CONDITIONS = ("influence", "random")
GLOBAL_CONDITIONS = ("global_influence", "global_random")
GLOBAL_UNIT = "global"
# (influence condition, its random control)
PAIRS = (("influence", "random"), ("global_influence", "global_random"))
# A run's directory under unlearning/; the rules fill it with wildcards, PlannedRun with values.
RUN_PATH = "{target}/{unit}/{condition}/seed{seed}"


@dataclass(frozen=True)
class PlannedRun:
    target: str
    unit: str  # unit slug, rank slot "top<k>", or "global"
    condition: str
    seed: int

    @property
    def path(self) -> str:
        return RUN_PATH.format(target=self.target, unit=self.unit, condition=self.condition, seed=self.seed)

    @property
    def name(self) -> str:
        return f"unlearning run {self.path}"


def unit_slugs(level: str) -> list[str]:
    if level == "topic":
        return list(TOPIC_SLUGS)
    if level == "format":
        return list(FORMAT_SLUGS)
    if level == "bin":
        return [bin_slug(b) for b in range(N_BINS)]
    raise CapatlasError(f"unknown unlearning.unit '{level}' (topic, format or bin)")


def unlearning_targets(config: dict) -> list[str]:
    names = [b["name"] for b in config["benchmarks"]]
    targets = config["unlearning"]["targets"]
    if targets is None:
        return names
    unknown = [t for t in targets if t not in names]
    if unknown:
        raise CapatlasError(
            f"config key 'unlearning.targets': {', '.join(unknown)} not among the benchmarks ({', '.join(names)})"
        )
    return list(targets)


def unit_slots(config: dict) -> list[str]:
    """The unit wildcard values of every target, known from config alone."""
    section = config["unlearning"]
    units = section["units"]
    if units["select"] == "top_k":
        return [f"top{k}" for k in range(1, units["top_k"] + 1)]
    if units["select"] == "all":
        return unit_slugs(section["unit"])
    known = set(unit_slugs(section["unit"]))
    if not units["explicit"]:
        raise CapatlasError("config key 'unlearning.units.explicit' is empty but units.select is 'explicit'")
    bad = [u for u in units["explicit"] if u not in known]
    if bad:
        raise CapatlasError(
            f"config key 'unlearning.units.explicit': {', '.join(bad)} are not {section['unit']} slugs "
            f"(e.g. {unit_slugs(section['unit'])[0]!r})"
        )
    return list(units["explicit"])


def planned_runs(config: dict) -> list[PlannedRun]:
    """Every (target, unit, condition, seed) run, in a stable order, from config alone."""
    section = config["unlearning"]
    conditions = section["forget"]["conditions"]
    seeds = section["forget"]["seeds"]
    runs = []
    for target in unlearning_targets(config):
        for unit in unit_slots(config):
            runs.extend(
                PlannedRun(target, unit, c, s) for c in conditions if c in UNIT_CONDITIONS for s in seeds
            )
        runs.extend(
            PlannedRun(target, GLOBAL_UNIT, c, s) for c in conditions if c in GLOBAL_CONDITIONS for s in seeds
        )
    return runs

# Shared set-up: config validation, paths, the command that runs a stage.
import copy
import hashlib
import json
import os
import shlex
import sys
from pathlib import Path

import yaml

from snakemake.settings.types import DeploymentMethod

sys.path.insert(0, str(Path(workflow.basedir) / "workflow"))

from capatlas.config import validate_config, run_dir
from capatlas.plan import RUN_PATH, shard_ids
from capatlas.benchmarks.items import missing_local_inputs
from capatlas.corpus.readers import check_path_topics, expand_paths, scan_groups
from capatlas.errors import CapatlasError
from capatlas.fileio import write_text
from capatlas.resources import job_logs, memory_mb, scoring_runtime, shard_tokens

try:
    config.update(validate_config(config, source="Snakemake config", as_written=True))
except CapatlasError as exc:
    raise WorkflowError(str(exc)) from None

RUN = str(run_dir(config))
OFFLINE_ENV = (
    "HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 "
    if config["offline"]
    else ""
)
USE_CONDA = DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
# Without conda the rules run with the interpreter Snakemake runs in (the
# project's venv), whether or not the user activated it.
PYTHON = "python" if USE_CONDA else shlex.quote(sys.executable)
PACKAGE_DIR = shlex.quote(str(Path(workflow.basedir) / "workflow"))
# Every rule's shell runs `capatlas ...` through this shell function, so rules
# read like the commands a user types and use this checkout's package.
# Snakemake formats the prefix too, hence the doubled braces.
CAPATLAS_FUNCTION = (
    "capatlas() { "
    f'{OFFLINE_ENV}PYTHONPATH={PACKAGE_DIR}${{PYTHONPATH:+:$PYTHONPATH}} {PYTHON} -m capatlas.cli "$@"; '
    "}; "
)


# YAML, not JSON: jobs read it with a YAML loader, which takes JSON's 1e-05
# for a string (YAML 1.1 floats need a dot); safe_dump writes 1.0e-05.
RESOLVED_CONFIG_TEXT = yaml.safe_dump(
    config, sort_keys=True, default_flow_style=False, allow_unicode=True
)
# The validated config (overrides merged, defaults filled) that this
# invocation's jobs read, content-addressed: another invocation (a dry run, a
# run the lock refuses, a run with other overrides) plans its own file and
# never rewrites this one, so a job always reads the config it was planned
# with. The path reaches the jobs through $CAPATLAS_CONFIG, not a param, so
# that a config change reruns only the rules whose own sections
# (params.section) changed.
RESOLVED_CONFIG = str(
    Path(RUN)
    / "configs"
    / f"{hashlib.sha256(RESOLVED_CONFIG_TEXT.encode()).hexdigest()[:16]}.yaml"
)


def write_resolved_config():
    """Write the config snapshot (once: its name is its content) and results/<run>/config.yaml.

    Called from `onstart`, which only a run that holds the lock executes, so
    dry runs and refused runs write nothing into results/. config.yaml is
    for people: the config of the last run started; jobs never read it.
    """
    latest = Path(RUN) / "config.yaml"
    try:
        if not Path(RESOLVED_CONFIG).exists():
            write_text(RESOLVED_CONFIG_TEXT, RESOLVED_CONFIG)
        if not latest.exists() or latest.read_text() != RESOLVED_CONFIG_TEXT:
            write_text(RESOLVED_CONFIG_TEXT, latest)
    except OSError as exc:
        raise WorkflowError(
            f"cannot write into {RUN} ({exc.strerror}): config key 'results_dir' must name a writable directory"
        ) from None


shell.prefix(
    f"set -euo pipefail; export CAPATLAS_CONFIG={shlex.quote(RESOLVED_CONFIG)}; {CAPATLAS_FUNCTION}".replace(
        "{", "{{"
    ).replace(
        "}", "}}"
    )
)


def directory_of(io, name):
    """A param: the directory of a rule's input or output file `name` (key or index).

    Derived from the file rather than spelled out, so it cannot drift from it.
    """

    def param(wildcards, input, output):
        files = (input if io == "input" else output)[name]
        first = files if isinstance(files, str) else files[0]
        return str(Path(first).parent)

    return param


def config_section(*keys, ignore=()):
    """A rule param that reruns the rule when these config sections (or "section.key"s) change.

    `ignore` lists "section.key"s inside them that do not change the rule's
    outputs (how jobs are cut, say). Returned as a function: Snakemake
    would read the braces of a plain JSON string as wildcards.
    """

    def value(key):
        # "section.key" names one key of a section: settings the rule does not read must not rerun it.
        node = config
        for part in key.split("."):
            node = node[part]
        return node

    chosen = {k: copy.deepcopy(value(k)) for k in keys}
    for key in ignore:
        *parents, last = key.split(".")
        node = chosen
        for part in parents:
            node = node[part]
        node.pop(last)
    text = json.dumps(chosen, sort_keys=True)
    return lambda wildcards: text


# Where profiles/slurm keeps each job's SLURM log (its slurm-logdir).
SLURM_LOGDIR = "logs/slurm"


def attempt_resources(family, rule=None, log=None, runtime=None):
    """Site-neutral resources; a retry asks for attempt x the runtime, and for attempt x the memory only when
    the failed attempt's log (`log`, a pattern of the rule's wildcards, and its SLURM logs) shows it ran out
    of memory (capatlas.resources). Without `log` memory grows with every retry. `runtime`: a function of
    (wildcards, attempt) instead of the family's runtime x attempt."""
    spec = config["resources"][family]

    def mem_mb(wildcards, attempt):
        if log is None:
            return spec["mem_mb"] * attempt
        values = dict(wildcards.items())
        logs = job_logs(log.format(**values), SLURM_LOGDIR, rule, values.values())
        return memory_mb(spec["mem_mb"], attempt, logs)

    res = {
        "mem_mb": mem_mb,
        "runtime": runtime or (lambda wildcards, attempt: spec["runtime"] * attempt),
    }
    if spec["gpu"]:
        res["gpu"] = spec["gpu"]
    return res


def score_runtime(wildcards, attempt):
    """Minutes from the shard's tokens (shards.json exists once the shards rule ran; before, the plan's guess)."""
    tokens = shard_tokens(SHARDS_SUMMARY, wildcards.shard)
    return scoring_runtime(
        tokens,
        config["resources"]["scoring"],
        config["resources"]["gpu"]["runtime"],
        attempt,
    )


DEMO = config["demo"]["enabled"]
DEMO_WORLD = f"{RUN}/demo/world"
DEMO_MODEL = f"{RUN}/demo/model"
DEMO_TOKENIZER = f"{RUN}/demo/tokenizer"


def document_model():
    return DEMO_MODEL if DEMO else config["models"]["document"]["path"]


def tokenizer_path():
    """The manifest's: models.tokenizer, else the demo's own (ready before its model) or the document model's."""
    return config["models"]["tokenizer"] or (
        DEMO_TOKENIZER if DEMO else document_model()
    )


def query_tokenizer():
    """The queries' tokenizer: the demo's own, else the query model's (the paper's Instruct model)."""
    return DEMO_TOKENIZER if DEMO else query_model()


def corpus_files():
    """Corpus files known at parse time (the demo world's are read from its directory).

    Every configured local path that does not exist, a corpus glob that
    matches nothing among them, is named in one message before any job runs.
    """
    if DEMO:
        return []
    missing = missing_local_inputs(config)
    files = []
    try:
        files = expand_paths(config["corpus"]["paths"])
    except CapatlasError as exc:
        missing.append(str(exc))
    if missing:
        raise WorkflowError(
            f"{len(missing)} configured input(s) do not exist:\n  "
            + "\n  ".join(missing)
        )
    if config["corpus"]["labels"]["topic"]["source"] == "path":
        try:
            check_path_topics(files)
        except CapatlasError as exc:
            raise WorkflowError(str(exc)) from None
    return files


CORPUS_FILES = corpus_files()
CLASSIFIER_MODELS = [
    config["corpus"]["labels"][facet]["model"]
    for facet in ("topic", "format")
    if config["corpus"]["labels"][facet]["source"] == "classifier"
]
CLASSIFIED = bool(CLASSIFIER_MODELS)
# The demo world's files are known by name before the world exists.
DEMO_CORPUS_GLOB = f"{DEMO_WORLD}/corpus/*.jsonl.zst"
DEMO_CORPUS_FILES = [
    f"{DEMO_WORLD}/corpus/part-{i:04d}.jsonl.zst"
    for i in range(config["demo"]["n_files"])
]


STUDY_MANIFEST = config["manifest"]["study_manifest"]


def manifest_scan_groups():
    if STUDY_MANIFEST:
        return {}  # the study's manifest is imported, not sampled
    try:
        return scan_groups(
            DEMO_CORPUS_FILES if DEMO else CORPUS_FILES,
            config["manifest"]["files_per_scan"],
        )
    except CapatlasError as exc:
        raise WorkflowError(str(exc)) from None


SCAN_GROUPS = manifest_scan_groups()
SCAN_PATTERN = f"{RUN}/manifest_scan/{{group}}"
SHARD_IDS = shard_ids(config)
# The `shards` rule declares only its summary as output; consumers depend on
# that one file and get the shard paths as params. Declaring N shard files
# made Snakemake's producer lookup (every output of a rule, per requested
# file) N x N: 94 s of planning at 5,000 shards (docs/PERFORMANCE.md, 5).
SHARDS_SUMMARY = f"{RUN}/shards/shards.json"
SHARD_PATTERN = f"{RUN}/shards/shard-{{shard}}.parquet"
SHARD_FILES = expand(SHARD_PATTERN, shard=SHARD_IDS)


# Each rules file appends what `snakemake` with no target should build.
FINAL_TARGETS = []


# Input functions of the rules files (kept here: Snakemake's linter wants
# rules and functions apart).


def scan_inputs(wildcards):
    # The corpus files are not declared as inputs: 150,000 of them cost Snakemake
    # ~25 s of producer lookups when planning; scan_files_identity reruns a group instead.
    inputs = {"tokenizer": tokenizer_path(), "classifiers": CLASSIFIER_MODELS}
    if DEMO:
        inputs["world"] = DEMO_WORLD
    return inputs


def scan_files_identity(wildcards):
    """A param: the group's files by path, size and mtime, so that a changed, added or removed file reruns its
    scan (as a declared input would)."""
    if DEMO:
        return ""
    digest = hashlib.sha256()
    for path in SCAN_GROUPS[wildcards.group]:
        try:
            stat = os.stat(path)
        except OSError as exc:
            raise WorkflowError(
                f"corpus file {path} is no longer readable: {exc}"
            ) from None
        digest.update(
            f"{path}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode(
                "utf-8", "surrogateescape"
            )
        )
    return digest.hexdigest()


def query_model():
    return config["models"]["query"]["path"] or document_model()


def model_revision(role):
    if role == "query" and not config["models"]["query"]["path"]:
        role = "document"
    return None if DEMO and role == "document" else config["models"][role]["revision"]


def flag(name, value):
    """An optional command-line option as a list ([] without a value), for a shell field quoted with :q."""
    return [name, str(value)] if value else []


def revision_flag(role, flag_name="--revision"):
    return flag(flag_name, model_revision(role))


def optimizer_state():
    """The configured optimizer state; in the demo, the demo model's own AdamW state."""
    configured = config["attribution"]["optimizer_state"]
    if configured:
        return configured
    return f"{DEMO_MODEL}/optimizer.pt" if DEMO else None


def attribution_inputs(*parts):
    def inputs(wildcards):
        named = {}
        if "model" in parts:
            named["model"] = document_model()
        if "query_model" in parts:
            named["query_model"] = query_model()
        # The demo model's optimizer.pt comes with the model directory.
        if config["attribution"]["optimizer_state"]:
            named["optimizer_state"] = config["attribution"]["optimizer_state"]
        if "shards" in parts:
            named["shards"] = SHARDS_SUMMARY
        if "queries" in parts:
            named["queries"] = QUERY_SETS
        if "query_indices" in parts:
            named["query_indices"] = QUERY_INDICES
        return named

    return inputs


def world_input(wildcards):
    return {"world": DEMO_WORLD} if DEMO else {}


def forget_set_inputs(wildcards):
    inputs = {
        "manifest": f"{RUN}/manifest/manifest.parquet",
        "scores": expand(
            f"{RUN}/attribution/scores/shard-{{shard}}.parquet", shard=SHARD_IDS
        ),
        "shards": SHARDS_SUMMARY,
    }
    if UNLEARN_CFG["units"]["select"] == "top_k":
        inputs["bin_matrix"] = f"{RUN}/influence/bin_matrix.parquet"
    return inputs


def named_paths(paths):
    """NAME=PATH per benchmark, in BENCHMARKS order (the order the paths were declared in)."""
    return [f"{name}={path}" for name, path in zip(BENCHMARKS, paths, strict=True)]


def unlearn_runs(unit, conditions):
    """The paths of one unlearning job's runs: (target, unit, seed), or (target, unit) with every seed.

    `unit` is a wildcard or "global"; unlearning.seeds_per_job says whether
    the seed is a wildcard of the job or expanded inside it.
    """
    run = f"{UNLEARNING}/{RUN_PATH}".replace("{unit}", unit)
    job = f"{{target}}/{unit}/seed{{seed}}"
    seeds = {}
    if UNLEARN_CFG["seeds_per_job"] == "all":
        job, seeds = f"{{target}}/{unit}", {"seed": UNLEARN_CFG["forget"]["seeds"]}
    files = {
        "forget": "forget_set.parquet",
        "model": UNLEARN_MODEL_DIR,
        "train_log": "train_log.csv",
        "evaluation": "eval.json",
    }
    return {
        **{
            key: expand(
                f"{run}/{name}", condition=conditions, **seeds, allow_missing=True
            )
            for key, name in files.items()
        },
        "retain": expand(
            f"{UNLEARNING}/retain/seed{{seed}}.parquet", **seeds, allow_missing=True
        ),
        "log": f"{RUN}/logs/unlearning/{job}.log",
        "benchmark": f"{RUN}/benchmarks/unlearning/{job}.tsv",
    }

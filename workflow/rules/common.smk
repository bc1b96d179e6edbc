# Shared set-up: config validation, paths, the command that runs a stage.
import hashlib
import json
import os
import shlex
import sys
from pathlib import Path

from snakemake.settings.types import DeploymentMethod

sys.path.insert(0, str(Path(workflow.basedir) / "workflow"))

from capatlas.config import validate_config, run_dir
from capatlas.corpus import expand_paths, file_key
from capatlas.errors import CapatlasError
from capatlas.io import write_text

try:
    config.update(validate_config(config, source="Snakemake config"))
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
CAPATLAS = f"{OFFLINE_ENV}PYTHONPATH={PACKAGE_DIR}${{PYTHONPATH:+:$PYTHONPATH}} {PYTHON} -m capatlas.cli"


def resolved_config_path():
    """The validated config (overrides merged, defaults filled) that every stage reads.

    Rewritten only when its content changes, so its mtime means something.
    """
    path = Path(RUN) / "config.yaml"
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    if not path.exists() or path.read_text() != text:
        write_text(text, path)
    return str(path)


RESOLVED_CONFIG = resolved_config_path()


def config_section(*keys):
    """A rule param that reruns the rule when these config sections change.

    Returned as a function: Snakemake would read the braces of a plain JSON
    string as wildcards.
    """
    text = json.dumps({k: config[k] for k in keys}, sort_keys=True)
    return lambda wildcards: text


def attempt_resources(family):
    """Site-neutral resources; memory and runtime grow with each retry."""
    spec = config["resources"][family]
    res = {
        "mem_mb": lambda wildcards, attempt: spec["mem_mb"] * attempt,
        "runtime": lambda wildcards, attempt: spec["runtime"] * attempt,
    }
    if spec["gpu"]:
        res["gpu"] = spec["gpu"]
    return res


DEMO = config["demo"]["enabled"]
DEMO_WORLD = f"{RUN}/demo/world"
DEMO_MODEL = f"{RUN}/demo/model"


def document_model():
    return DEMO_MODEL if DEMO else config["models"]["document"]["path"]


def tokenizer_path():
    return config["models"]["tokenizer"] or document_model()


def corpus_files():
    """Corpus files known at parse time (the demo world's are read from its directory)."""
    if DEMO:
        return []
    try:
        return expand_paths(config["corpus"]["paths"])
    except CapatlasError as exc:
        raise WorkflowError(str(exc)) from None


CORPUS_FILES = corpus_files()
CORPUS_BY_KEY = {file_key(path): path for path in CORPUS_FILES}
CLASSIFIED = any(
    config["corpus"]["labels"][facet]["source"] == "classifier"
    for facet in ("topic", "format")
)
SHARD_IDS = [f"{k:05d}" for k in range(config["shards"]["count"])]


def final_targets():
    targets = [
        f"{RUN}/manifest/manifest.parquet",
        f"{RUN}/manifest/bin_summary.csv",
        expand(f"{RUN}/shards/shard-{{shard}}.parquet", shard=SHARD_IDS),
        expand(f"{RUN}/queries/{{benchmark}}", benchmark=BENCHMARKS),
    ]
    if DEMO:
        targets.append(DEMO_MODEL)
    return targets

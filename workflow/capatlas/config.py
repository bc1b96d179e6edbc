"""Load and validate a capatlas config against workflow/schemas/config.schema.yaml.

The Snakefile and every CLI sub-command go through `validate_config`, so a
config means the same thing whether a stage runs under Snakemake or by hand.
Defaults are filled in recursively (also inside list items and `$ref`s),
and an unknown or mistyped key is reported by its dotted path.
"""

from __future__ import annotations

import copy
import re
import difflib
import os
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from capatlas.errors import CapatlasError

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "config.schema.yaml"


@cache
def load_schema() -> dict:
    with open(SCHEMA_PATH) as handle:
        return yaml.safe_load(handle)


def _resolve(node: dict, schema: dict) -> dict:
    ref = node.get("$ref")
    if ref is None:
        return node
    target: Any = schema
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    # A $ref sitting beside a "default" keeps that default.
    merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return merged


def _fill_defaults(value: Any, node: dict, schema: dict) -> Any:
    node = _resolve(node, schema)
    types = node.get("type")
    if isinstance(value, dict) and (types == "object" or "properties" in node):
        for key, sub in node.get("properties", {}).items():
            sub_resolved = _resolve(sub, schema)
            if key not in value and "default" in sub_resolved:
                value[key] = copy.deepcopy(sub_resolved["default"])
            if key in value:
                value[key] = _fill_defaults(value[key], sub, schema)
    elif isinstance(value, list) and "items" in node:
        value = [_fill_defaults(item, node["items"], schema) for item in value]
    return value


def _coerce_strings(value: Any, node: dict, schema: dict) -> Any:
    """Strings where the schema wants a boolean or a number, converted when they spell one exactly.

    `snakemake --config export='{enabled: true}'` reads nested values with
    YAML's BaseLoader, so every scalar arrives as a string ('true', '4')."""
    node = _resolve(node, schema)
    types = node.get("type")
    types = [types] if isinstance(types, str) else list(types or [])
    if isinstance(value, dict):
        for key, sub in node.get("properties", {}).items():
            if key in value:
                value[key] = _coerce_strings(value[key], sub, schema)
        return value
    if isinstance(value, list) and "items" in node:
        return [_coerce_strings(item, node["items"], schema) for item in value]
    if not isinstance(value, str) or "string" in types:
        return value
    text = value.strip()
    if "boolean" in types and text.lower() in ("true", "false"):
        return text.lower() == "true"
    if "null" in types and text.lower() in ("null", "none", "~"):
        return None
    if "integer" in types and re.fullmatch(r"[+-]?\d+", text):
        return int(text)
    if "number" in types:
        try:
            return float(text)
        except ValueError:
            return value
    return value


def _key_path(error: jsonschema.ValidationError) -> str:
    parts = [str(p) for p in error.absolute_path]
    return ".".join(parts) if parts else "<top level>"


def _describe(error: jsonschema.ValidationError, schema: dict) -> str:
    where = _key_path(error)
    if error.validator == "additionalProperties":
        allowed = sorted(_resolve(error.schema, schema).get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        parts = []
        for key in extra:
            full = key if where == "<top level>" else f"{where}.{key}"
            hint = difflib.get_close_matches(key, allowed, n=1)
            suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
            parts.append(f"unknown config key '{full}'{suggestion}")
        return "; ".join(parts) + f". Allowed here: {', '.join(allowed)}"
    if error.validator == "required":
        return f"config key '{where}': {error.message}"
    return f"config key '{where}': {error.message}"


def validate_config(config: dict, *, source: str = "config", as_written: bool = False) -> dict:
    """Return a validated copy of `config` with every default filled in.

    `as_written`: `config` is what a user wrote (the Snakefile's merged
    --configfile files, `capatlas check-config`), not a resolved config a
    run wrote out; only there does an empty `benchmarks` list mean a mistake
    (a corpus-only run leaves the key out, and its resolved config holds the
    default, []).
    """
    schema = load_schema()
    if as_written and isinstance(config, dict) and config.get("benchmarks", None) == []:
        # Otherwise it surfaces only in the first attribution job, as an argparse usage line.
        raise CapatlasError(
            f"invalid {source}:\n  config key 'benchmarks' is an empty list: name at least one benchmark, "
            "or leave the key out for a corpus-only run (working set and shards)"
        )
    given = copy.deepcopy(config or {})
    if as_written:
        given = _coerce_strings(given, schema, schema)
    filled = _fill_defaults(given, schema, schema)
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(filled), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [_describe(e, schema) for e in errors[:10]]
        raise CapatlasError(f"invalid {source}:\n  " + "\n  ".join(lines))
    _check_semantics(filled, source)
    _fill_benchmark_root(filled, source)
    if as_written and filled["benchmarks"]:
        _check_design(filled["benchmarks"], schema, source)
    return filled


def _fill_benchmark_root(config: dict, source: str) -> None:
    """`{benchmark_root}` in a benchmark's source becomes the configured directory."""
    root = config["benchmark_root"]
    for bench in config["benchmarks"]:
        if "{benchmark_root}" not in bench["source"]:
            continue
        if root is None:
            raise CapatlasError(
                f"invalid {source}: benchmark '{bench['name']}' has source {bench['source']!r} "
                "but config key 'benchmark_root' is not set"
            )
        bench["source"] = bench["source"].replace("{benchmark_root}", str(root).rstrip("/"))


def _check_design(benchmarks: list, schema: dict, source: str) -> None:
    """The 2 x 2 contrast needs a benchmark in each of its four cells (the schema's domains x capabilities)."""
    fields = schema["definitions"]["benchmark"]["properties"]
    present = {(b["domain"], b["capability"]) for b in benchmarks}
    cells = [(d, c) for d in fields["domain"]["enum"] for c in fields["capability"]["enum"]]
    missing = [f"{d} x {c}" for d, c in cells if (d, c) not in present]
    if missing:
        raise CapatlasError(
            f"invalid {source}:\n  config key 'benchmarks': the 2 x 2 design has no benchmark for "
            f"{', '.join(missing)} (domain x capability); the contrasts need one in each of the four cells"
        )


def _check_semantics(config: dict, source: str) -> None:
    names = [b["name"] for b in config["benchmarks"]]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise CapatlasError(f"invalid {source}: benchmark names repeat: {', '.join(duplicates)}")
    if not config["demo"]["enabled"]:
        if not config["corpus"]["paths"]:
            raise CapatlasError(f"invalid {source}: config key 'corpus.paths' is empty (and demo.enabled is false)")
        if not config["models"]["document"]["path"]:
            raise CapatlasError(f"invalid {source}: config key 'models.document.path' is not set")
    for facet in ("topic", "format"):
        label = config["corpus"]["labels"][facet]
        key = f"corpus.labels.{facet}"
        if label["source"] == "field" and not label["field"]:
            raise CapatlasError(f"invalid {source}: config key '{key}.field' is required when source is 'field'")
        if label["source"] == "sidecar" and not label["sidecar"]:
            raise CapatlasError(f"invalid {source}: config key '{key}.sidecar' is required when source is 'sidecar'")
        if label["source"] == "classifier" and not label["model"]:
            raise CapatlasError(f"invalid {source}: config key '{key}.model' is required when source is 'classifier'")
        if label["source"] == "path" and facet != "topic":
            raise CapatlasError(
                f"invalid {source}: config key '{key}.source' is 'path', but Dolma 3 paths carry only the topic"
            )
    _check_item_roles(config, source)


def _check_item_roles(config: dict, source: str) -> None:
    roles, unlearning = config["item_roles"], config["unlearning"]
    if roles["design"] != "held_out":
        return
    if roles["queries"] + roles["guard"] >= 1:
        raise CapatlasError(
            f"invalid {source}: config keys 'item_roles.queries' ({roles['queries']}) + 'item_roles.guard' "
            f"({roles['guard']}) leave no evaluation items"
        )
    if unlearning["enabled"] and unlearning["stop"]["guard_benchmark"] and not roles["guard"] > 0:
        raise CapatlasError(
            f"invalid {source}: config key 'unlearning.stop.guard_benchmark' is set but 'item_roles.guard' is 0: "
            "with held-out items the guard needs its own (e.g. item_roles.guard: 0.1)"
        )


def load_config(path: str | os.PathLike, overrides: dict | None = None) -> dict:
    """Read a YAML config file, merge `overrides` (nested dict) and validate."""
    path = Path(path)
    if not path.exists():
        raise CapatlasError(f"config file {path} does not exist")
    try:
        with open(path) as handle:
            raw = yaml.safe_load(handle) or {}
    except yaml.YAMLError as exc:
        raise CapatlasError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise CapatlasError(f"config file {path} must hold a mapping of keys, not {type(raw).__name__}")
    if overrides:
        raw = deep_merge(raw, overrides)
    return validate_config(raw, source=f"config {path}")


def deep_merge(base: dict, update: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def run_dir(config: dict) -> Path:
    return Path(config["results_dir"]) / config["run"]


def apply_offline(config: dict) -> None:
    """Forbid hub downloads for this process (and children) when offline."""
    if config.get("offline", True):
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["HF_DATASETS_OFFLINE"] = "1"
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

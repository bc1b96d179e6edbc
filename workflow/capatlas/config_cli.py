"""`capatlas check-config`: validate a config and show it with defaults."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from capatlas.command import Command
from capatlas.config import validate_config

COMMAND = Command(config_help="YAML config file")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No options of its own: `--config` is the whole input."""


def run(args: argparse.Namespace, config: dict | None) -> None:
    # What the user wrote, checked as the Snakefile checks it (e.g. an empty benchmarks list).
    validate_config(yaml.safe_load(Path(args.config).read_text()) or {}, source=f"config {args.config}", as_written=True)
    print(yaml.safe_dump(config, sort_keys=False), end="")

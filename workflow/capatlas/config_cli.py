"""`capatlas check-config`: validate a config and show it with defaults."""

from __future__ import annotations

import argparse

import yaml

from capatlas.command import Command

COMMAND = Command(config_help="YAML config file")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No options of its own: `--config` is the whole input."""


def run(args: argparse.Namespace, config: dict | None) -> None:
    print(yaml.safe_dump(config, sort_keys=False), end="")

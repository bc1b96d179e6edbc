"""`capatlas check-config`: validate a config and show it with defaults."""

from __future__ import annotations

import argparse

import yaml

from .config import load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML config file")


def run(args: argparse.Namespace) -> None:
    config = load_config(args.config)
    print(yaml.safe_dump(config, sort_keys=False), end="")

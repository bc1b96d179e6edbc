"""The one shape of a stage command.

Every `capatlas` sub-command is a module with ``COMMAND`` (a `Command`: what
the stage needs set up), ``add_arguments(parser)`` (its own options only)
and ``run(args, config)``. `run_stage` adds the shared options, loads and
validates the config, forbids hub downloads and bounds torch's threads, once
for all stages, then calls ``run``. Light: no torch unless a stage asks for
threads.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from types import ModuleType

from capatlas.errors import CapatlasError


@dataclass(frozen=True)
class Command:
    # "required", "optional" (the stage has defaults of its own) or "none"
    config: str = "required"
    config_help: str = "capatlas config YAML (the run's results/<run>/config.yaml)"
    # Config section whose `threads` bounds torch's CPU threads (with --threads to override), or None.
    torch_threads: str | None = None


def add_common_arguments(parser: argparse.ArgumentParser, command: Command) -> None:
    if command.config != "none":
        parser.add_argument("--config", required=command.config == "required", default=None, help=command.config_help)
    if command.torch_threads:
        parser.add_argument(
            "--threads",
            type=int,
            default=None,
            help=f"torch CPU threads (default: {command.torch_threads}.threads, else torch's own choice, usually every core)",
        )


def set_torch_threads(threads: int | None) -> None:
    """Bound torch's CPU threads to what the scheduler granted (torch otherwise takes every core)."""
    if threads is None:
        return
    if threads < 1:
        raise CapatlasError(f"--threads must be 1 or more, not {threads}")
    import torch

    torch.set_num_threads(threads)


def prepare(args: argparse.Namespace, command: Command) -> dict | None:
    """The validated config (None without one), with offline mode and torch threads applied."""
    from capatlas.config import apply_offline, load_config

    path = getattr(args, "config", None)
    config = load_config(path) if path else None
    apply_offline(config or {})
    if command.torch_threads:
        section = (config or {}).get(command.torch_threads) or {}
        set_torch_threads(args.threads if args.threads is not None else section.get("threads"))
    return config


def build_parser(module: ModuleType, parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser()
    add_common_arguments(parser, module.COMMAND)
    module.add_arguments(parser)
    return parser


def run_stage(module: ModuleType, argv: list[str]) -> None:
    """Parse `argv` as the stage's command line and run it (what `capatlas STAGE ...` does, minus logging)."""
    args = build_parser(module).parse_args(argv)
    module.run(args, prepare(args, module.COMMAND))

"""The `capatlas` console command: one sub-command per pipeline stage.

Each stage module defines ``add_arguments(parser)`` and ``run(args)``; the
module is imported only when its sub-command runs, so `capatlas --help`
and light stages do not pay for importing torch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from . import __version__
from .errors import CapatlasError

# (sub-command, module, one-line help)
STAGES: tuple[tuple[str, str, str], ...] = (
    ("demo-world", "capatlas.demo_world", "write the synthetic demo corpus, benchmark items and ground truth"),
    ("demo-model", "capatlas.demo_model", "train the demo tokenizer and tiny OLMo-3 model on the demo corpus"),
    ("labels", "capatlas.labels", "label one corpus file with WebOrganizer topic/format classifiers"),
    ("manifest", "capatlas.manifest", "stratified, deduplicated sample of the corpus per topic x format bin"),
    ("shard", "capatlas.shard", "split the manifest into token-balanced shards with text"),
    ("queries", "capatlas.queries", "tokenize a benchmark's items as attribution queries (completion-only labels)"),
    ("preconditioner", "capatlas.attribution_precondition", "fit TrackStar's mixed preconditioner R on a seeded sample of all shards plus the queries"),
    ("query-gradients", "capatlas.attribution_queries", "one benchmark's preconditioned, unit-normalised query gradients (Bergson query index)"),
    ("score-shard", "capatlas.attribution_score", "score one shard against every benchmark's queries; per-bin sums per query"),
    ("check-config", "capatlas.config_cli", "validate a config file and print it with defaults filled in"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="capatlas", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"capatlas {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module, help_text in STAGES:
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # First pass only finds the sub-command; its module then adds its own options.
    known, _ = parser.parse_known_args(argv)
    if known.command is None:
        parser.print_help()
        return 2
    module = importlib.import_module(known._module)
    sub = parser._subparsers._group_actions[0].choices[known.command]  # type: ignore[union-attr]
    module.add_arguments(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        module.run(args)
    except CapatlasError as exc:
        print(f"capatlas {known.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

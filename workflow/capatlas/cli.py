"""The `capatlas` console command: one sub-command per pipeline stage.

Each stage module has the shape of `capatlas.command` (``COMMAND``,
``add_arguments(parser)``, ``run(args, config)``); the module is imported
only when its sub-command runs, so `capatlas --help` and light stages do
not pay for importing torch.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import signal
import sys
import threading
from collections.abc import Iterator

from capatlas import __version__
from capatlas.command import build_parser as build_stage_parser
from capatlas.command import prepare
from capatlas.errors import CapatlasError

# (sub-command, module, one-line help)
STAGES: tuple[tuple[str, str, str], ...] = (
    ("demo-world", "capatlas.demo.world", "write the synthetic demo corpus, benchmark items and ground truth"),
    ("demo-tokenizer", "capatlas.demo.tokenizer", "train the demo model's BPE tokenizer on the demo corpus"),
    ("demo-model", "capatlas.demo.model", "train the tiny OLMo-3 demo model on the demo corpus with the demo tokenizer"),
    ("labels", "capatlas.corpus.labels", "label one corpus file with WebOrganizer topic/format classifiers"),
    ("manifest-scan", "capatlas.corpus.manifest_scan", "map step of the manifest: scan one group of corpus files"),
    ("manifest", "capatlas.corpus.manifest", "stratified, deduplicated sample of the corpus per topic x format bin"),
    ("import-study-manifest", "capatlas.corpus.study_manifest", "the study's working-set manifest (local copy) as our manifest, read against the local corpus"),
    ("shard", "capatlas.corpus.shard", "split the manifest into token-balanced shards with text"),
    ("queries", "capatlas.benchmarks.queries", "tokenize a benchmark's items as attribution queries (completion-only labels)"),
    ("preconditioner", "capatlas.attribution.precondition", "fit TrackStar's mixed preconditioner R on a seeded sample of all shards plus the queries"),
    ("query-gradients", "capatlas.attribution.query_gradients", "each benchmark's preconditioned, unit-normalised query gradients (one Bergson query index each)"),
    ("score-shard", "capatlas.attribution.score_shard", "score one shard against every benchmark's queries; per-bin sums per query"),
    ("influence", "capatlas.analysis.influence", "bin-level influence matrix (means, z, bootstrap CIs) and topic/format marginals from shard scores"),
    ("contrast", "capatlas.analysis.contrast", "2 x 2 contrasts of a bin matrix: correlations, contrasts, sharpness, interaction, robustness"),
    ("export", "capatlas.release.export", "a finished run as a checksummed release bundle with a dataset card"),
    ("verify-release", "capatlas.release.verify", "check a release bundle: checksums, and its tables recomputed from each other"),
    ("figures", "capatlas.analysis.figures", "heatmaps, contrast bars and correlation matrices of the analysis"),
    ("atlas", "capatlas.analysis.atlas", "one self-contained HTML page to browse a run: heatmaps, bin documents, contrasts"),
    ("evaluate", "capatlas.benchmarks.evaluate", "multiple-choice log-likelihood evaluation (acc, acc_norm, answer log-prob) of a model or adapter"),
    ("forget-sets", "capatlas.unlearning.forget_sets", "forget sets (influence-ranked, size-matched random, global controls) and retain pools"),
    ("unlearn", "capatlas.unlearning.unlearn", "the unlearning runs of one target and unit (GA, GradDiff, NGDiff, NPO; LoRA or full) and their evaluations"),
    ("unlearning-summary", "capatlas.unlearning.summary", "gamma per run, paired influence-vs-random statistics and figures"),
    ("check-config", "capatlas.config_cli", "validate a config file and print it with defaults filled in"),
)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser; only `command`'s module is imported to add its options."""
    parser = argparse.ArgumentParser(prog="capatlas", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"capatlas {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module, help_text in STAGES:
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(_module=module)
        if name == command:
            build_stage_parser(importlib.import_module(module), sub)
    return parser


def _command_in(argv: list[str]) -> str | None:
    names = {name for name, _, _ in STAGES}
    return next((arg for arg in argv if arg in names), None)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # The sub-command is found before parsing, so that `capatlas STAGE --help`
    # lists the stage's own options.
    parser = build_parser(_command_in(argv))
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    module = importlib.import_module(args._module)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        with sigterm_unwinds():
            module.run(args, prepare(args, module.COMMAND))
    except CapatlasError as exc:
        print(f"capatlas {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """Within the block, SIGTERM raises SystemExit(143) instead of ending the process outright.

    SLURM stops a job (time limit, scancel) with SIGTERM to each of its
    processes, which by default ends the process without unwinding: scratch
    directories and temporary outputs would stay behind. As an exception it
    runs the same cleanup as any failure (Ctrl-C's KeyboardInterrupt already does).
    """
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_terminated(signum, frame):
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    sys.exit(main())

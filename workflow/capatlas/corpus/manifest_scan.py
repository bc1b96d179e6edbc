"""`capatlas manifest-scan`: the map step of the manifest over one group of corpus files.

Reads, labels, hashes and (where a document could be sampled) tokenises
every record of the group's files and writes the group's partial
(`capatlas.artifacts.scan_partial`): bounded candidates per bin plus the
compact key arrays the merge (`capatlas manifest --scans`) needs for exact
counts and cross-group deduplication. Which files form a group never
changes the manifest.
"""

from __future__ import annotations

import argparse
import logging

from capatlas.artifacts.scan_partial import write_partial
from capatlas.command import Command
from capatlas.corpus.manifest import ScanContext, resolve_tokenizer, scan_group
from capatlas.corpus.readers import expand_paths

log = logging.getLogger(__name__)

COMMAND = Command()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--files", nargs="+", required=True, help="the group's corpus files (or globs)")
    parser.add_argument("--group", required=True, help="the group's name, recorded in the partial")
    parser.add_argument("--out", required=True, help="partial directory to write (replaced atomically)")
    parser.add_argument(
        "--labels-dir", default=None, help="directory of labels/<file-key>.parquet from `capatlas labels`"
    )
    parser.add_argument(
        "--tokenizer", default=None, help="tokenizer directory (default: models.tokenizer, else models.document.path)"
    )
    parser.add_argument("--threads", type=int, default=None, help="processes (default: manifest.threads)")


def run(args: argparse.Namespace, config: dict | None) -> None:
    files = expand_paths(args.files)
    tokenizer = resolve_tokenizer(config, args.tokenizer)
    ctx = ScanContext.from_config(config, tokenizer=tokenizer, labels_dir=args.labels_dir)
    threads = int(config["manifest"]["threads"] if args.threads is None else args.threads)
    partial = scan_group(files, ctx, threads=threads, group=args.group)
    write_partial(partial, args.out)
    log.info(
        "scan %s: %d records in %d files, %d candidates -> %s",
        args.group,
        partial.n_records,
        len(files),
        partial.candidates.num_rows,
        args.out,
    )

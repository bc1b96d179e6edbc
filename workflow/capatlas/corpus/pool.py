"""One process pool for the corpus stages (manifest, shards): files mapped in parallel, with progress.

Workers start from a fresh interpreter (forkserver, else spawn), not as a
fork of the stage's process. A fork inherits the stage's SIGTERM handler
(capatlas.cli turns SIGTERM into SystemExit to clean up) and drops a SIGTERM
that arrives while it starts (CPython clears pending signals after fork):
when a bad input made the stage terminate the pool early, such a worker
waited on the task queue's lock forever. A fork also inherits the locks of
threads the parent ran (tokenizer, torch). A fresh worker has neither, so
`Pool.terminate()` always ends it.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Iterable


def _worker_init() -> None:
    # One process per core already; Rust-side threads would oversubscribe.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    # The pool ends its workers with SIGTERM: let it.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def start_method() -> str:
    methods = multiprocessing.get_all_start_methods()
    return "forkserver" if "forkserver" in methods else "spawn"


def pool_map(func: Callable, tasks: list, threads: int, desc: str) -> Iterable:
    """func(task) for every task, in completion order; in this process when threads <= 1 or one task."""
    from tqdm import tqdm

    progress = tqdm(total=len(tasks), desc=desc, unit="file", file=sys.stderr, mininterval=2)
    try:
        if threads <= 1 or len(tasks) <= 1:
            for task in tasks:
                yield func(task)
                progress.update(1)
            return
        context = multiprocessing.get_context(start_method())
        with context.Pool(min(threads, len(tasks)), initializer=_worker_init) as pool:
            for result in pool.imap_unordered(func, tasks):
                yield result
                progress.update(1)
    finally:
        progress.close()

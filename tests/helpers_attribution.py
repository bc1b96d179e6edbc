"""Bergson's own scoring, as the reference our score-shard output is compared against."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq


def bergson_score_cli(
    *,
    model: Path,
    shard: Path,
    query_index: Path,
    hessian: Path,
    attribution: dict,
    run_dir: Path,
    optimizer_state: Path | None = None,
    timeout: int = 600,
) -> np.ndarray:
    """[docs, queries] cosines from the `bergson score` CLI, which tokenises the shard's text itself.

    Absolute paths throughout: Bergson looks a relative path that resembles a
    hub id up online.
    """
    from bergson.data import load_scores

    texts = pq.read_table(shard, columns=["text"]).column("text").to_pylist()
    docs_file = run_dir.parent / f"{run_dir.name}-docs.jsonl"
    docs_file.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    cmd = [
        str(Path(sys.executable).parent / "bergson"),
        "score",
        str(run_dir),
        "--model",
        str(Path(model).resolve()),
        "--dataset",
        str(docs_file),
        "--prompt_column",
        "text",
        "--truncation",
        "true",
        "--token_batch_size",
        str(attribution["token_batch_size"]),
        "--projection_dim",
        str(attribution["projection_dim"]),
        "--index_cfg.precision",
        attribution["precision"],
        *(["--optimizer_state", str(Path(optimizer_state).resolve())] if optimizer_state else []),
        "--query_path",
        str(Path(query_index).resolve()),
        "--hessian_path",
        str(Path(hessian).resolve()),
        "--unit_normalize",
        "true",
        "--score",
        "individual",
        "--nproc_per_node",
        "1",
    ]
    # One thread, as the attribution jobs under test: a tiny model gains nothing from more.
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return np.asarray(load_scores(run_dir)[:], dtype=np.float64)

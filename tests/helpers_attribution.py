"""Bergson's own scoring, as the reference our score-shard output is compared against."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from capatlas.attribution.context import bergson_score_command


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
    """[docs, queries] cosines from the `bergson score` CLI, which tokenises the shard's text itself."""
    from bergson.data import load_scores

    texts = pq.read_table(shard, columns=["text"]).column("text").to_pylist()
    docs_file = run_dir.parent / f"{run_dir.name}-docs.jsonl"
    docs_file.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    cmd = bergson_score_command(
        run_dir,
        model=model,
        dataset=docs_file,
        query_index=query_index,
        hessian=hessian,
        attribution=attribution,
        optimizer_state=optimizer_state,
    )
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

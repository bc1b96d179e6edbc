"""`capatlas atlas`: one self-contained HTML page to browse a finished run.

The page (``atlas.html``) opens from disk with no server and no network: its
CSS and JavaScript are inline (``atlas_template.html`` beside this module)
and its data is one JSON document in a ``<script type="application/json">``
block. A Content-Security-Policy forbids every fetch, so the page cannot
reach out even by accident. It shows, per benchmark:

* the 24 x 24 heatmap of the bins' influence z-scores (topics as rows,
  formats as columns), diverging colours centred at 0 on a symmetric scale
  clipped, as in `capatlas figures`, at the 99th percentile of |z| (at
  least 2); cells beyond it are outlined and carry their z;
* on hovering a bin: its topic, format, n_docs, mean, z and the CIs of the
  mean and of z from the bin matrix;
* on clicking a bin: its most and least influential documents (doc id,
  score, the first `SNIPPET_CHARS` characters of the text), at most
  ``--top-docs`` K each way; when a bin has fewer than 2K scored documents
  the least influential list holds the ones the top list left out, so no
  document is listed twice;
* the 2 x 2 design (domain x capability) and the topic and format contrasts
  (social - STEM at each capability level, with the CI that `capatlas
  figures` draws), the profile correlations and the verdict, from
  ``contrast/summary.json``.

Only the top and bottom K documents of each bin and benchmark are embedded,
so the page's size depends on bins x benchmarks x K, never on the corpus.

The pure core (`build_payload`, `rank_documents`, `render_html`, ...)
builds the page from tables and is tested without a browser; `run` reads
the run's files, checking each with an error that names it. Document text
is untrusted: the page only ever sets it as ``textContent``, and the
embedded JSON has every ``<``, ``>`` and ``&`` escaped so no text can close
its script block.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from capatlas.artifacts.bin_matrix import MATRIX_FILE, check_scored_by_the_same_run, read_bin_matrix
from capatlas.artifacts.scores import check_score_identity, read_score_provenance, read_scores
from capatlas.artifacts.shards import read_shard
from capatlas.command import Command
from capatlas.errors import CapatlasError
from capatlas.fileio import atomic_path
from capatlas.taxonomy import FORMATS, N_BINS, TOPICS

log = logging.getLogger(__name__)

COMMAND = Command(
    config="optional",
    config_help="capatlas config (the run's results/<run>/config.yaml): run name and benchmark roles",
)

TEMPLATE = "atlas_template.html"
PAYLOAD_TOKEN = "__CAPATLAS_ATLAS_PAYLOAD__"
SCRIPT_HASH_TOKEN = "__CAPATLAS_SCRIPT_HASH__"
SUMMARY_FILE = "summary.json"
DEFAULT_TOP_DOCS = 5
SNIPPET_CHARS = 300
# Significant digits kept in the page: enough for every value it shows.
DIGITS = 4
# Optional bin-matrix columns the tooltip shows when present.
INTERVAL_COLUMNS = ("ci_low", "ci_high", "z_ci_low", "z_ci_high")
# The contrast CI drawn, first available wins (as in `capatlas figures`).
CI_KINDS = ("combined", "documents", "queries", "bins")
LEVELS = ("reasoning", "knowledge")
DOMAINS = ("social", "stem")


# --------------------------------------------------------------------------- pure core


def _num(value: object, digits: int = DIGITS) -> float | None:
    """A finite float rounded to `digits` significant digits, else None (JSON null)."""
    if value is None:
        return None
    x = float(value)
    if not math.isfinite(x):
        return None
    return float(f"{x:.{digits}g}")


def colour_limit(z: np.ndarray) -> float:
    """The heatmap's symmetric colour limit: the 99th percentile of |z| over non-empty bins, at least 2."""
    finite = np.abs(z[np.isfinite(z)])
    return max(2.0, float(np.quantile(finite, 0.99))) if finite.size else 2.0


def bin_payload(matrix: pd.DataFrame, benchmarks: Sequence[str]) -> dict[str, dict]:
    """Per benchmark, the 576 bins' columns the page shows (None where a bin has no row or no value)."""
    out = {}
    for name in benchmarks:
        part = matrix[matrix["benchmark"] == name]
        bins = part["bin_id"].to_numpy(dtype=np.int64)
        column = {}
        for key in ("n_docs", "mean", "sd", "zscore", *INTERVAL_COLUMNS):
            values = np.full(N_BINS, np.nan)
            if key in part:
                values[bins] = part[key].to_numpy(dtype=np.float64)
            column[key] = values
        small = np.zeros(N_BINS, dtype=bool)
        if "small_bin" in part:
            small[bins] = part["small_bin"].fillna(False).to_numpy(dtype=bool)
        empty = ~(column["n_docs"] > 0)
        z = np.where(empty, np.nan, column["zscore"])

        def pairs(low: str, high: str) -> list:
            return [
                None if e or not (math.isfinite(a) and math.isfinite(b)) else [_num(a), _num(b)]
                for e, a, b in zip(empty, column[low], column[high])
            ]

        out[name] = {
            "z": [_num(v) for v in z],
            "mean": [None if e else _num(v) for e, v in zip(empty, column["mean"])],
            "sd": [None if e else _num(v) for e, v in zip(empty, column["sd"])],
            "n": [0 if not math.isfinite(v) else int(v) for v in column["n_docs"]],
            "ci": pairs("ci_low", "ci_high"),
            "zci": pairs("z_ci_low", "z_ci_high"),
            "small": [bool(s) for s in small],
            "limit": colour_limit(z),  # unrounded: a cell beyond it is beyond the drawn scale
        }
    return out


def _ranked(frame: pd.DataFrame, benchmark: str) -> pd.DataFrame:
    """`frame`'s documents with a finite score, in each bin from most to least influential (ties: doc_id)."""
    scored = frame.loc[np.isfinite(frame[benchmark].to_numpy(dtype=np.float64)), ["doc_id", "bin_id", benchmark]]
    scored = scored.sort_values(["bin_id", benchmark, "doc_id"], ascending=[True, False, True], kind="mergesort")
    groups = scored.groupby("bin_id", sort=False)
    return scored.assign(_rank=groups.cumcount().to_numpy(), _n=groups["doc_id"].transform("size").to_numpy())


def candidate_rows(frame: pd.DataFrame, benchmarks: Sequence[str], k: int) -> pd.DataFrame:
    """The rows of `frame` (doc_id, bin_id, one column per benchmark) among some benchmark's top or bottom k of a bin.

    Ranking the union of every part's candidates gives what ranking the
    whole gives: the command keeps only these rows of each shard.
    """
    frame = frame.reset_index(drop=True)  # labels are positions from here on
    keep = np.zeros(len(frame), dtype=bool)
    for name in benchmarks:
        ranked = _ranked(frame, name)
        chosen = (ranked["_rank"] < k) | (ranked["_rank"] >= ranked["_n"] - k)
        keep[ranked.index[chosen.to_numpy()].to_numpy()] = True
    return frame.loc[keep]


def rank_documents(frame: pd.DataFrame, benchmarks: Sequence[str], k: int) -> dict[str, dict[int, dict[str, list]]]:
    """{benchmark: {bin_id: {"top": [(doc_id, score)], "bottom": [(doc_id, score)]}}}.

    "top": the bin's k highest scores, highest first; "bottom": its k lowest,
    lowest first, among the documents not in "top" (a bin of n < 2k
    documents lists them all once). Documents without a finite score (too
    short to score) are left out; ties go by doc_id.
    """
    if k < 1:
        raise CapatlasError(f"--top-docs must be 1 or more, not {k}")
    out: dict[str, dict[int, dict[str, list]]] = {}
    for name in benchmarks:
        ranked = _ranked(frame, name)
        per_bin: dict[int, dict[str, list]] = {}
        for bin_id, group in ranked.groupby("bin_id", sort=True):
            rows = list(zip(group["doc_id"].tolist(), group[name].astype(np.float64).tolist()))
            top = rows[:k]
            bottom = rows[max(k, len(rows) - k) :][::-1]
            per_bin[int(bin_id)] = {"top": top, "bottom": bottom}
        out[name] = per_bin
    return out


def snippet(text: str, chars: int = SNIPPET_CHARS) -> str:
    """The first `chars` characters of a document (an ellipsis marks a cut)."""
    text = "" if text is None else str(text)
    return text if len(text) <= chars else text[:chars].rstrip() + "\u2026"


def _ci_kind(block: Mapping) -> str | None:
    for kind in CI_KINDS:
        if any((entry or {}).get(f"ci_{kind}") for level in block.values() for entry in level.values()):
            return kind
    return None


def _facet_contrast(block: Mapping | None, entries: Sequence[tuple[str, str]]) -> dict | None:
    if not block:
        return None
    kind = _ci_kind(block)
    rows = []
    for display, slug in entries:
        row = {"slug": slug, "name": display}
        for level in LEVELS:
            entry = (block.get(level) or {}).get(slug) or {}
            ci = entry.get(f"ci_{kind}") if kind else None
            row[level] = _num(entry.get("value"))
            row[f"{level}_ci"] = [_num(ci[0]), _num(ci[1])] if ci and None not in ci[:2] else None
        rows.append(row)
    return {"ci_kind": kind, "rows": rows}


def contrast_payload(summary: Mapping, benchmarks: Sequence[str], roles: Mapping[str, Sequence[str]]) -> dict:
    """What the contrast view shows, from `capatlas contrast`'s summary.json."""
    cells = {
        f"{domain}/{level}": [b for b in benchmarks if tuple(roles.get(b) or ()) == (domain, level)]
        for domain in DOMAINS
        for level in LEVELS
    }
    correlations = {}
    for kind in ("pearson", "spearman"):
        matrix = (summary.get(kind) or {}).get("matrix") or {}
        if matrix:
            correlations[kind] = [[_num((matrix.get(a) or {}).get(b), 3) for b in benchmarks] for a in benchmarks]
    verdict = [
        {
            "statement": str(claim.get("statement", claim.get("claim", ""))),
            "statistic": str(claim.get("statistic", "")),
            "estimate": _num(claim.get("estimate"), 3),
            "reading": str(claim.get("reading", "")),
        }
        for claim in summary.get("verdict") or []
    ]
    interaction = summary.get("interaction") or {}
    return {
        "ci_level": _num((summary.get("input") or {}).get("ci_level"), 3),
        "cells": cells,
        "topic": _facet_contrast(summary.get("topic_contrast"), TOPICS),
        "format": _facet_contrast(summary.get("format_contrast"), FORMATS),
        "correlations": correlations,
        "verdict": verdict,
        "interaction_definition": interaction.get("definition"),
        "interaction_top": [
            {"bin_id": int(row["bin_id"]), "interaction": _num(row.get("interaction"), 3), "q_joint": _num(row.get("q_joint"), 2)}
            for row in (interaction.get("top") or [])[:10]
            if "bin_id" in row
        ],
    }


def build_payload(
    matrix: pd.DataFrame,
    ranked: Mapping[str, Mapping[int, Mapping[str, list]]],
    texts: Mapping[str, str],
    *,
    k: int,
    summary: Mapping | None = None,
    roles: Mapping[str, Sequence[str]] | None = None,
    title: str = "capatlas atlas",
    sources: Mapping[str, str] | None = None,
    doc_bins: Mapping[str, int] | None = None,
) -> dict:
    """The page's data: bins per benchmark, the listed documents (each text once) and the contrast view.

    `matrix`: the bin matrix (benchmark, bin_id, n_docs, mean, zscore and, when
    present, sd, the intervals and small_bin); `ranked`: `rank_documents`'
    output; `texts`: doc_id -> full text of every listed document.
    """
    benchmarks = list(dict.fromkeys(matrix["benchmark"]))
    roles = dict(roles or {})
    doc_index: dict[str, int] = {}
    docs: dict[str, list] = {"id": [], "bin": [], "text": [], "chars": []}

    def index_of(doc_id: str, bin_id: int) -> int:
        if doc_id not in doc_index:
            if doc_id not in texts:
                raise CapatlasError(f"document {doc_id!r} has a score but no text in the shards: are all shards given?")
            text = texts[doc_id]
            doc_index[doc_id] = len(docs["id"])
            docs["id"].append(doc_id)
            docs["bin"].append(int((doc_bins or {}).get(doc_id, bin_id)))
            docs["text"].append(snippet(text))
            docs["chars"].append(len(text or ""))
        return doc_index[doc_id]

    lists = {}
    for name in benchmarks:
        per_bin = ranked.get(name) or {}
        top: list = [[] for _ in range(N_BINS)]
        bottom: list = [[] for _ in range(N_BINS)]
        for bin_id in sorted(per_bin):
            for key, target in (("top", top), ("bottom", bottom)):
                target[bin_id] = [[index_of(d, bin_id), _num(s)] for d, s in per_bin[bin_id][key]]
        lists[name] = {"top": top, "bottom": bottom}
    return {
        "schema": 1,
        "title": title,
        "sources": dict(sources or {}),
        "k": int(k),
        "snippet_chars": SNIPPET_CHARS,
        "topics": [[slug, display] for display, slug in TOPICS],
        "formats": [[slug, display] for display, slug in FORMATS],
        "benchmarks": [
            {"name": b, "domain": (roles.get(b) or [None, None])[0], "capability": (roles.get(b) or [None, None])[1]}
            for b in benchmarks
        ],
        "bins": bin_payload(matrix, benchmarks),
        "docs": docs,
        "lists": lists,
        "contrast": contrast_payload(summary, benchmarks, roles) if summary is not None else None,
    }


def embed_json(payload: object) -> str:
    """`payload` as JSON safe inside a <script> block: no '<', '>' or '&' (hence no '</script>' or '<!--')."""
    text = json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escaped)
    return text


def template() -> str:
    return resources.files("capatlas.analysis").joinpath(TEMPLATE).read_text(encoding="utf-8")


def render_html(payload: Mapping) -> str:
    """The page: the template with `payload` embedded as JSON.

    The Content-Security-Policy lets only the template's own script run (by
    its sha256): were a text ever to reach the page as markup, no script of
    its own would run, and no request (image, fetch) could leave the page.
    """
    page = template()
    for token in (PAYLOAD_TOKEN, SCRIPT_HASH_TOKEN):
        if page.count(token) != 1:
            raise CapatlasError(f"{TEMPLATE} must hold the token {token} exactly once")
    scripts = re.findall(r"<script>(.*?)</script>", page, flags=re.DOTALL)
    if len(scripts) != 1:
        raise CapatlasError(f"{TEMPLATE} must hold exactly one plain <script> block")
    digest = base64.b64encode(hashlib.sha256(scripts[0].encode("utf-8")).digest()).decode("ascii")
    page = page.replace(SCRIPT_HASH_TOKEN, f"'sha256-{digest}'")
    head, tail = page.split(PAYLOAD_TOKEN)
    return head + embed_json(payload) + tail


# --------------------------------------------------------------------------- reading a run


def _parquet_files(arguments: Sequence[str | os.PathLike], what: str, option: str) -> list[Path]:
    """Every shard-*.parquet named by `arguments` (files, or directories holding them), in name order."""
    paths: list[Path] = []
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            found = sorted(path.glob("shard-*.parquet"))
            if not found:
                raise CapatlasError(f"{option} {path} holds no shard-*.parquet {what}")
            paths.extend(found)
        elif path.is_file():
            paths.append(path)
        else:
            raise CapatlasError(f"{option} {path} does not exist")
    if len(set(paths)) != len(paths):
        raise CapatlasError(f"{option} names a file twice")
    return paths


def read_matrix(influence_dir: str | os.PathLike) -> pd.DataFrame:
    path = Path(influence_dir)
    path = path if path.is_file() else path / MATRIX_FILE
    frame = read_bin_matrix(path)
    for name, part in frame.groupby("benchmark", sort=False):
        bins = part["bin_id"].to_numpy()
        if len(np.unique(bins)) != len(bins) or bins.min() < 0 or bins.max() >= N_BINS:
            raise CapatlasError(f"{path}: benchmark {name!r} has repeated or invalid bin_id values")
    return frame


def read_summary(contrast_dir: str | os.PathLike) -> dict:
    path = Path(contrast_dir)
    path = path if path.is_file() else path / SUMMARY_FILE
    if not path.is_file():
        raise CapatlasError(f"contrast summary {path} does not exist: run `capatlas contrast` first")
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CapatlasError(f"{path} is not readable JSON ({exc}): rerun `capatlas contrast`") from None
    if not isinstance(summary, dict) or "input" not in summary:
        raise CapatlasError(f"{path} is not a `capatlas contrast` summary (no 'input' block)")
    for key in ("topic_contrast", "format_contrast"):
        block = summary.get(key)
        if block is not None and not (isinstance(block, dict) and all(isinstance(v, dict) for v in block.values())):
            raise CapatlasError(f"{path}: '{key}' is not a mapping of level -> unit -> value")
    return summary


def collect_candidates(score_paths: Sequence[Path], benchmarks: Sequence[str], k: int) -> pd.DataFrame:
    """Each benchmark's top and bottom k documents of every bin, streamed one score file at a time."""
    seen_shards: dict[str, str] = {}
    seen_docs: set[str] = set()
    kept: pd.DataFrame | None = None
    for path in score_paths:
        check_score_identity(path, read_score_provenance(path), seen_shards)
        names = pq.read_schema(path).names
        missing = [c for c in ("doc_id", "bin_id", *benchmarks) if c not in names]
        if missing:
            raise CapatlasError(f"score file {path} lacks column(s) {', '.join(missing)}: rerun its score_shard job")
        frame = read_scores(path, ["doc_id", "bin_id", *benchmarks], rerun="rerun its score_shard job").to_pandas()
        bins = frame["bin_id"].to_numpy()
        if len(bins) and (bins.min() < 0 or bins.max() >= N_BINS):
            raise CapatlasError(f"score file {path} has bin_id values outside 0..{N_BINS - 1}")
        ids = set(frame["doc_id"])
        if len(ids) != len(frame) or ids & seen_docs:
            raise CapatlasError(f"score file {path} repeats a document (within the file or from another score file)")
        seen_docs |= ids
        part = candidate_rows(frame, benchmarks, k)
        kept = part if kept is None else candidate_rows(pd.concat([kept, part], ignore_index=True), benchmarks, k)
    if kept is None:
        raise CapatlasError("no score files were given (attribution/scores/shard-*.parquet)")
    return kept.reset_index(drop=True)


def read_texts(shard_paths: Sequence[Path], doc_ids: Iterable[str]) -> tuple[dict[str, str], dict[str, int]]:
    """Texts and bins of `doc_ids` from the shards (only those rows are kept)."""
    wanted = set(doc_ids)
    texts: dict[str, str] = {}
    bins: dict[str, int] = {}
    for path in shard_paths:
        table = read_shard(path, doc_ids=wanted)
        for doc_id, bin_id, text in zip(*(table[c].to_pylist() for c in ("doc_id", "bin_id", "text"))):
            texts[doc_id] = text
            bins[doc_id] = int(bin_id)
    return texts, bins


def _roles(summary: Mapping | None, config: Mapping | None, benchmarks: Sequence[str]) -> dict[str, list[str]]:
    """Each benchmark's (domain, capability): the contrast's own, else the config's, else the study's defaults."""
    recorded = ((summary or {}).get("input") or {}).get("roles") or {}
    roles = {b: [r["domain"], r["capability"]] for b, r in recorded.items() if isinstance(r, dict)}
    if not roles:
        from capatlas.analysis.contrast import design_for

        roles = {b: list(r) for b, r in design_for(benchmarks, (config or {}).get("benchmarks")).roles.items()}
    return roles


def build_atlas(
    *,
    influence: str | os.PathLike,
    scores: Sequence[str | os.PathLike],
    shards: Sequence[str | os.PathLike],
    contrast: str | os.PathLike | None = None,
    k: int = DEFAULT_TOP_DOCS,
    config: Mapping | None = None,
) -> dict:
    """The payload of a run's atlas, read from its files (each checked, errors naming it)."""
    if k < 1:
        raise CapatlasError(f"--top-docs must be 1 or more, not {k}")
    matrix = read_matrix(influence)
    benchmarks = list(dict.fromkeys(matrix["benchmark"]))
    score_paths = _parquet_files(scores, "score files", "--scores")
    shard_paths = _parquet_files(shards, "shards", "--shards")
    matrix_path = Path(influence) if Path(influence).is_file() else Path(influence) / MATRIX_FILE
    check_scored_by_the_same_run(matrix_path, score_paths[0], read_score_provenance(score_paths[0]))
    summary = read_summary(contrast) if contrast is not None else None
    if summary is not None:
        listed = (summary.get("input") or {}).get("benchmarks")
        if listed and set(listed) != set(benchmarks):
            raise CapatlasError(
                f"{contrast}: the contrast covers {', '.join(listed)} but {matrix_path} holds {', '.join(benchmarks)}:"
                " rerun `capatlas contrast` on this bin matrix"
            )
    candidates = collect_candidates(score_paths, benchmarks, k)
    ranked = rank_documents(candidates, benchmarks, k)
    listed_ids = {d for per_bin in ranked.values() for lists in per_bin.values() for key in lists for d, _ in lists[key]}
    texts, doc_bins = read_texts(shard_paths, listed_ids)
    missing = sorted(listed_ids - set(texts))
    if missing:
        raise CapatlasError(
            f"{len(missing)} scored document(s) have no text in the --shards files (e.g. {missing[0]!r}):"
            " are all shards of this run given?"
        )
    scored_bins = dict(zip(candidates["doc_id"], candidates["bin_id"].astype(int)))
    wrong = [d for d in listed_ids if doc_bins[d] != scored_bins[d]]
    if wrong:
        raise CapatlasError(
            f"document {wrong[0]!r} is in bin {doc_bins[wrong[0]]} in the shards but bin {scored_bins[wrong[0]]}"
            " in the score files: the shards and the scores come from different runs"
        )
    run_name = (config or {}).get("run")
    return build_payload(
        matrix,
        ranked,
        texts,
        k=k,
        summary=summary,
        roles=_roles(summary, config, benchmarks),
        title=f"capatlas atlas: {run_name}" if run_name else "capatlas atlas",
        sources={
            "influence": str(matrix_path),
            "contrast": str(contrast) if contrast is not None else "",
            "scores": f"{len(score_paths)} score file(s)",
            "shards": f"{len(shard_paths)} shard(s)",
        },
        doc_bins=doc_bins,
    )


# --------------------------------------------------------------------------- command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--influence", required=True, help="`capatlas influence` output directory (or its bin_matrix.parquet)")
    parser.add_argument(
        "--contrast", default=None, help="`capatlas contrast` output directory (or its summary.json): the contrast view"
    )
    parser.add_argument(
        "--scores", nargs="+", required=True, help="attribution/scores/shard-*.parquet, or the directory holding them"
    )
    parser.add_argument(
        "--shards", nargs="+", required=True, help="shards/shard-*.parquet (the texts), or the directory holding them"
    )
    parser.add_argument("--out", required=True, help="the page to write (atlas.html)")
    parser.add_argument(
        "--top-docs",
        type=int,
        default=DEFAULT_TOP_DOCS,
        metavar="K",
        help=f"documents listed per bin, benchmark and direction (most and least influential; default {DEFAULT_TOP_DOCS})",
    )


def run(args: argparse.Namespace, config: dict | None) -> None:
    payload = build_atlas(
        influence=args.influence,
        scores=args.scores,
        shards=args.shards,
        contrast=args.contrast,
        k=args.top_docs,
        config=config,
    )
    page = render_html(payload).encode("utf-8")
    with atomic_path(args.out) as tmp:
        tmp.write_bytes(page)
    size = len(page)
    log.info(
        "wrote %s: %.0f KiB, %d benchmark(s), %d document(s) listed (at most %d per bin, benchmark and direction)",
        args.out,
        size / 1024,
        len(payload["benchmarks"]),
        len(payload["docs"]["id"]),
        payload["k"],
    )

"""`capatlas forget-sets`: what each unlearning run forgets, and the retain pools.

A *unit* is a topic, a format or a bin (``unlearning.unit``), named by its
slug (``literature``, ``customer_support``, ``literature__customer_support``).
Per target benchmark the units come from ``unlearning.units``:

- ``top_k``: the k units with the highest influence, ranked by the bin
  z-score or by the *contrast* z(target) - mean z(other benchmarks), which
  prefers units specific to the target. A topic or format aggregates its
  non-empty bins by ``aggregate``: ``mean`` (the study's unweighted
  marginal: a unit whose whole extent leans towards the target) or ``max``
  (its strongest bin: a unit that holds one region carrying the target,
  which a mean over 24 bins dilutes below broad, weak leanings). The runs are
  enumerated from config before the influence matrix exists, so they are
  named by rank slots ``top1`` .. ``topk``; the unit a slot resolved to is
  recorded in every forget set and in the summary;
- ``explicit``: the listed unit slugs, for every target;
- ``all``: every unit of the level (the study: all 24 topics).

Conditions per (target, unit) and seed:

- ``influence``: the unit's ``n_docs`` documents with the highest score for
  the target benchmark (ties by doc_id), the same in every seed;
- ``random``: ``n_docs`` other documents of the same unit, disjoint from the
  influence set and matched to it in count and in tokens: each influence
  document, in a seeded order, is paired with a random one of the
  ``match_pool`` unused documents closest to it in length; then swaps bring
  the total within ``token_tolerance`` where the unit allows (the study's
  control was 1,000 random documents against 200, not size-matched).
  With ``match_tokens: false`` the random set is matched in count only: where
  influence goes with length (the demo's planted documents are four times
  longer than any other), a token-matched set can only be drawn from the
  same kind of documents, which confounds the control;
- ``global_influence`` / ``global_random``: the same two, corpus-wide
  (unit slot ``global``).

Retain pools: per seed, ``retain.docs_per_unit`` random documents of every
unit, drawn afresh for each resampling round (``retain.resample_every``
steps, as many rounds as ``train.max_steps`` needs). A run uses the pool of
its seed minus its own unit and its forget documents, so the paired runs
(influence vs random, same unit and seed) see the same retain data.

Outputs under ``--out`` (``unlearning/``)::

    <target>/<unit>/<condition>/seed<s>/forget_set.parquet
        doc_id, bin_id, topic_id, format_id, n_tokens, score, text
        (+ parquet metadata "capatlas": target, unit slot, resolved unit,
        condition, seed, sizes, token mismatch)
    retain/seed<s>.parquet     doc_id, unit, round, n_tokens, text
        (+ parquet metadata "capatlas": seed, rounds)
    forget_sets.json           resolved units and set sizes of every run
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from capatlas.command import Command
from capatlas.benchmarks.items import stable_hash
from capatlas.artifacts.bin_matrix import check_scored_by_the_same_run, read_bin_matrix
from capatlas.artifacts.scores import check_score_identity, read_score_provenance, read_scores
from capatlas.artifacts.shards import read_shard
from capatlas.errors import CapatlasError
from capatlas.fileio import write_json, write_parquet
from capatlas.plan import GLOBAL_UNIT, PlannedRun, planned_runs, unit_slots, unit_slugs
from capatlas.taxonomy import N_FORMATS

log = logging.getLogger(__name__)

COMMAND = Command(config_help="capatlas config (keys benchmarks, unlearning)")

METADATA_KEY = b"capatlas"


# ------------------------------------------------------------------ units


def unit_index(bin_ids: np.ndarray, level: str) -> np.ndarray:
    """Unit index (into `unit_slugs(level)`) of each bin id."""
    bin_ids = np.asarray(bin_ids, dtype=np.int64)
    if level == "topic":
        return bin_ids // N_FORMATS
    if level == "format":
        return bin_ids % N_FORMATS
    return bin_ids


def unit_scores(
    bin_matrix: pd.DataFrame, level: str, target: str, rank_by: str, aggregate: str = "mean"
) -> pd.Series:
    """Influence of every unit for `target` (index: unit slug), highest first; units without docs are dropped."""
    required = {"benchmark", "bin_id", "zscore"}
    if missing := required - set(bin_matrix.columns):
        raise CapatlasError(f"bin matrix lacks column(s) {', '.join(sorted(missing))}")
    wide = bin_matrix.pivot_table(index="bin_id", columns="benchmark", values="zscore", dropna=False)
    if target not in wide.columns:
        raise CapatlasError(
            f"bin matrix has no rows for benchmark '{target}' (it has: {', '.join(map(str, wide.columns))})"
        )
    if rank_by == "contrast":
        others = [c for c in wide.columns if c != target]
        if not others:
            raise CapatlasError("unlearning.units.rank_by 'contrast' needs at least two benchmarks in the bin matrix")
        value = wide[target] - wide[others].mean(axis=1)
    else:
        value = wide[target]
    units = unit_index(wide.index.to_numpy(), level)
    if aggregate not in ("mean", "max"):
        raise CapatlasError(f"unlearning.units.aggregate must be 'mean' or 'max', not {aggregate!r}")
    # Over the unit's non-empty bins (NaN z = empty bin); mean is the study's unweighted marginal.
    per_unit = pd.Series(value.to_numpy(), index=units).groupby(level=0).agg(aggregate).dropna()
    slugs = unit_slugs(level)
    per_unit.index = [slugs[i] for i in per_unit.index]
    # Stable: ties keep slug order.
    return per_unit.sort_index().sort_values(ascending=False, kind="mergesort")


def resolve_units(config: dict, bin_matrix: pd.DataFrame | None, target: str) -> dict[str, str]:
    """Unit slot -> unit slug for one target."""
    section = config["unlearning"]
    slots = unit_slots(config)
    if section["units"]["select"] != "top_k":
        return {slot: slot for slot in slots}
    if bin_matrix is None:
        raise CapatlasError("unlearning.units.select is 'top_k', which needs the bin matrix (--bin-matrix)")
    units = section["units"]
    ranked = unit_scores(bin_matrix, section["unit"], target, units["rank_by"], units["aggregate"])
    if len(ranked) < len(slots):
        raise CapatlasError(
            f"benchmark '{target}': only {len(ranked)} {section['unit']}s have documents, "
            f"fewer than unlearning.units.top_k = {len(slots)}"
        )
    return {slot: ranked.index[k] for k, slot in enumerate(slots)}


# --------------------------------------------------------------- selection


def influence_ranked(docs: pd.DataFrame, target: str, n: int) -> pd.DataFrame:
    """The n highest-scoring documents (ties by doc_id)."""
    ordered = docs.sort_values([target, "doc_id"], ascending=[False, True], kind="mergesort")
    return ordered.head(n)


def matched_random(
    reference: pd.DataFrame,
    candidates: pd.DataFrame,
    rng: np.random.Generator,
    *,
    match_pool: int,
    token_tolerance: float,
) -> pd.DataFrame:
    """Random candidates matched to `reference` in count and (approximately) in total tokens."""
    n = len(reference)
    if len(candidates) < n:
        raise CapatlasError(f"{len(candidates)} candidate documents, fewer than the {n} to match")
    cand_tokens = candidates["n_tokens"].to_numpy(dtype=np.float64)
    log_cand = np.log1p(cand_tokens)
    available = np.ones(len(candidates), dtype=bool)
    chosen = []
    for t in reference["n_tokens"].to_numpy(dtype=np.float64)[rng.permutation(n)]:
        free = np.flatnonzero(available)
        distance = np.abs(log_cand[free] - math.log1p(t))
        k = min(match_pool, len(free))
        nearest = free[np.argsort(distance, kind="stable")[:k]]
        pick = int(rng.choice(nearest))
        available[pick] = False
        chosen.append(pick)
    chosen_arr = np.array(chosen, dtype=np.int64)
    target_total = float(reference["n_tokens"].sum())
    # Swaps: replace a chosen document by an unused one whose length moves the total
    # towards the reference total, until within tolerance or no swap helps.
    for _ in range(4 * n):
        total = cand_tokens[chosen_arr].sum()
        gap = total - target_total
        if target_total == 0 or abs(gap) <= token_tolerance * target_total:
            break
        free = np.flatnonzero(available)
        if not len(free):
            break
        order = np.argsort(cand_tokens[free], kind="stable")
        free_sorted, free_tokens = free[order], cand_tokens[free][order]
        best = (abs(gap), -1, -1)
        for slot, index in enumerate(chosen_arr):
            ideal = cand_tokens[index] - gap
            pos = int(np.searchsorted(free_tokens, ideal))
            for p in (pos - 1, pos):
                if 0 <= p < len(free_tokens):
                    new_gap = abs(gap - cand_tokens[index] + free_tokens[p])
                    if new_gap < best[0]:
                        best = (new_gap, slot, int(free_sorted[p]))
        if best[1] < 0:
            break
        available[chosen_arr[best[1]]] = True
        available[best[2]] = False
        chosen_arr[best[1]] = best[2]
    return candidates.iloc[np.sort(chosen_arr)]


def run_rng(seed: int, *parts: str) -> np.random.Generator:
    return np.random.default_rng([seed, *(stable_hash(p) for p in parts)])


@dataclass
class ForgetSet:
    run: PlannedRun
    unit: str  # the resolved unit slug, or "global"
    docs: pd.DataFrame  # doc_id, bin_id, topic_id, format_id, n_tokens, score
    reference_tokens: int  # total tokens of the set this one is matched to (itself for influence sets)
    unit_docs: int
    level: str

    @property
    def token_mismatch(self) -> float:
        total = int(self.docs["n_tokens"].sum())
        return 0.0 if self.reference_tokens == 0 else (total - self.reference_tokens) / self.reference_tokens

    def metadata(self) -> dict:
        return {
            "target": self.run.target,
            "unit_slot": self.run.unit,
            "unit": self.unit,
            "level": self.level,
            "condition": self.run.condition,
            "seed": self.run.seed,
            "n_docs": len(self.docs),
            "n_tokens": int(self.docs["n_tokens"].sum()),
            "reference_tokens": int(self.reference_tokens),
            "token_mismatch": self.token_mismatch,
            "unit_docs": self.unit_docs,
        }


def check_unit_sizes(
    runs: list[PlannedRun], resolved: dict[str, dict[str, str]], counts: pd.Series, level: str, n: int, n_random: int
) -> None:
    """Refuse, before any set is drawn, every unit too small for its runs, all in one message.

    An influence set takes n documents of the unit and a random one n_random
    others, so a unit with a random condition needs n + n_random. `select: all` (the paper's)
    asks for every unit of the taxonomy, which a partial corpus lacks; the
    message lists the units that do have enough to choose from.
    """
    need: dict[str, int] = {}  # unit -> documents its runs need
    first_short: dict[str, PlannedRun] = {}  # unit -> its first run short of them
    for run in runs:
        if run.unit == GLOBAL_UNIT:
            continue
        unit = resolved[run.target][run.unit]
        k = n if run.condition == "influence" else n + n_random
        if int(counts.get(unit, 0)) < k:
            first_short.setdefault(unit, run)
            need[unit] = max(k, need.get(unit, 0))
    if not need:
        return
    lines = []
    for unit, run in first_short.items():
        have = int(counts.get(unit, 0))
        what = "no documents" if have == 0 else f"{have} documents"
        lines.append(f"  {run.name}: {level} '{unit}' has {what}, needs {need[unit]}")
    enough = sorted(u for u, c in counts.items() if c >= n + n_random)
    raise CapatlasError(
        f"{len(need)} {level}(s) to unlearn have too few documents in the working set for "
        f"unlearning.forget.n_docs = {n} (an influence set takes {n}, a disjoint random set {n_random} more):\n"
        + "\n".join(lines)
        + f"\n{level}s with at least {n + n_random} documents: {', '.join(enough) or 'none'}; choose among them with "
        "unlearning.units (select: explicit or top_k), or lower unlearning.forget.n_docs"
    )


def build_forget_sets(
    config: dict, docs: pd.DataFrame, bin_matrix: pd.DataFrame | None
) -> tuple[list[ForgetSet], dict[str, dict[str, str]]]:
    """Every planned run's forget set (without text) and each target's slot -> unit map.

    `docs`: one row per scored document: doc_id, bin_id, topic_id, format_id,
    n_tokens and one score column per benchmark.
    """
    section = config["unlearning"]
    level, n = section["unit"], section["forget"]["n_docs"]
    n_random = section["forget"]["random_n_docs"] or n
    match_pool, tolerance = section["forget"]["match_pool"], section["forget"]["token_tolerance"]
    if section["forget"]["random_n_docs"] is not None and section["forget"]["match_tokens"]:
        raise CapatlasError(
            "config key 'unlearning.forget.random_n_docs' sets the random sets' own size, so they cannot be matched "
            "to the influence sets document by document: set unlearning.forget.match_tokens: false"
        )
    slugs = unit_slugs(level)
    docs = docs.assign(_unit=[slugs[i] for i in unit_index(docs["bin_id"].to_numpy(), level)])
    runs = planned_runs(config)
    resolved = {t: resolve_units(config, bin_matrix, t) for t in dict.fromkeys(r.target for r in runs)}
    check_unit_sizes(runs, resolved, docs["_unit"].value_counts(), level, n, n_random)
    sets: list[ForgetSet] = []
    influence_cache: dict[tuple[str, str], pd.DataFrame] = {}

    def influence_set(run: PlannedRun, unit: str, pool: pd.DataFrame) -> pd.DataFrame:
        key = (run.target, unit)
        if key not in influence_cache:
            if run.target not in pool.columns:
                raise CapatlasError(f"{run.name}: the document scores have no column '{run.target}'")
            influence_cache[key] = influence_ranked(pool, run.target, n)
        return influence_cache[key]

    for run in runs:
        unit = GLOBAL_UNIT if run.unit == GLOBAL_UNIT else resolved[run.target][run.unit]
        pool = docs if unit == GLOBAL_UNIT else docs[docs["_unit"] == unit]
        top = influence_set(run, unit, pool)
        if run.condition in ("influence", "global_influence"):
            chosen, reference = top, int(top["n_tokens"].sum())
        else:
            others = pool[~pool["doc_id"].isin(top["doc_id"])]
            rng = run_rng(run.seed, run.target, unit, run.condition)
            if section["forget"]["match_tokens"]:
                chosen = matched_random(top, others, rng, match_pool=match_pool, token_tolerance=tolerance)
            else:
                chosen = others.iloc[np.sort(rng.choice(len(others), size=n_random, replace=False))]
            reference = int(top["n_tokens"].sum())
        frame = chosen.rename(columns={run.target: "score"})[
            ["doc_id", "bin_id", "topic_id", "format_id", "n_tokens", "score"]
        ].reset_index(drop=True)
        forget = ForgetSet(run, unit, frame, reference, len(pool), level)
        if section["forget"]["match_tokens"] and abs(forget.token_mismatch) > tolerance:
            log.warning(
                "%s: random set has %+.1f%% tokens against the influence set (tolerance %.1f%%)",
                run.name, 100 * forget.token_mismatch, 100 * tolerance,
            )  # fmt: skip
        sets.append(forget)
    return sets, resolved


def retain_rounds(config: dict) -> int:
    section = config["unlearning"]
    every = section["retain"]["resample_every"]
    return 1 if every == 0 else max(1, math.ceil(section["train"]["max_steps"] / every))


def build_retain_pool(config: dict, docs: pd.DataFrame, seed: int) -> pd.DataFrame:
    """doc_id, unit, round, n_tokens: per round, docs_per_unit random documents of every unit."""
    section = config["unlearning"]
    level, per_unit = section["unit"], section["retain"]["docs_per_unit"]
    slugs = unit_slugs(level)
    units = unit_index(docs["bin_id"].to_numpy(), level)
    frames = []
    for round_ in range(retain_rounds(config)):
        for u in np.unique(units):
            members = np.flatnonzero(units == u)
            rng = run_rng(seed, "retain", slugs[u], str(round_))
            take = members[np.sort(rng.choice(len(members), size=min(per_unit, len(members)), replace=False))]
            frames.append(
                pd.DataFrame(
                    {
                        "doc_id": docs["doc_id"].to_numpy()[take],
                        "unit": slugs[u],
                        "round": round_,
                        "n_tokens": docs["n_tokens"].to_numpy()[take],
                    }
                )
            )
    return pd.concat(frames, ignore_index=True)


# --------------------------------------------------------------------- I/O


def read_scored_docs(manifest_path: Path, score_paths: Sequence[Path], benchmarks: Sequence[str]) -> pd.DataFrame:
    """Manifest rows joined with every shard's per-benchmark document scores."""
    if not manifest_path.is_file():
        raise CapatlasError(f"manifest {manifest_path} does not exist")
    manifest = pq.read_table(manifest_path, columns=["doc_id", "bin_id", "topic_id", "format_id", "n_tokens"])
    manifest = manifest.to_pandas()
    if not score_paths:
        raise CapatlasError("no document score files were given (attribution/scores/shard-*.parquet)")
    frames = []
    seen: dict[str, str] = {}
    for path in score_paths:
        if not Path(path).is_file():
            raise CapatlasError(f"score file {path} does not exist")
        # Named after its shard, scoring that shard and no other one twice, every page intact.
        check_score_identity(path, read_score_provenance(path), seen)
        schema = pq.read_schema(path)
        missing = [c for c in ("doc_id", *benchmarks) if c not in schema.names]
        if missing:
            raise CapatlasError(f"score file {path} lacks column(s) {', '.join(missing)}")
        frames.append(read_scores(path, ["doc_id", *benchmarks], rerun="rerun its score_shard job").to_pandas())
    scores = pd.concat(frames, ignore_index=True)
    if scores["doc_id"].duplicated().any():
        dup = scores.loc[scores["doc_id"].duplicated(), "doc_id"].iloc[0]
        raise CapatlasError(f"document {dup!r} has scores in more than one score file")
    merged = manifest.merge(scores, on="doc_id", how="inner", validate="one_to_one")
    if len(merged) < len(manifest):
        missing = manifest.loc[~manifest["doc_id"].isin(scores["doc_id"]), "doc_id"]
        raise CapatlasError(
            f"{len(missing)} manifest documents have no score (e.g. {missing.iloc[0]!r}); "
            "are all attribution/scores shards given?"
        )
    return merged.sort_values("doc_id", kind="mergesort").reset_index(drop=True)


def read_texts(shard_paths: Sequence[Path], doc_ids: set[str]) -> dict[str, str]:
    """Texts of `doc_ids`, read from the shards (only the wanted rows are kept)."""
    texts: dict[str, str] = {}
    for path in shard_paths:
        table = read_shard(path, ("doc_id", "text"), doc_ids=doc_ids)
        texts.update(zip(table["doc_id"].to_pylist(), table["text"].to_pylist()))
    if missing := doc_ids - texts.keys():
        raise CapatlasError(f"{len(missing)} documents are in no shard (e.g. {sorted(missing)[0]!r})")
    return texts


def with_text(frame: pd.DataFrame, texts: dict[str, str]) -> pa.Table:
    return pa.Table.from_pandas(frame.assign(text=[texts[d] for d in frame["doc_id"]]), preserve_index=False)


def write_forget_set(forget: ForgetSet, table: pa.Table, path: Path) -> None:
    meta = json.dumps(forget.metadata()).encode()
    write_parquet(table.replace_schema_metadata({METADATA_KEY: meta}), path)


def write_retain_pool(table: pa.Table, seed: int, rounds: int, path: Path) -> None:
    """A seed's retain pool; its seed travels with it so that a job can check it got the pool it pairs with."""
    meta = json.dumps({"seed": int(seed), "rounds": int(rounds)}).encode()
    write_parquet(table.replace_schema_metadata({METADATA_KEY: meta}), path)


def _read_unlearning_table(path: Path, what: str, who: str, columns: set[str]) -> tuple[pd.DataFrame, dict | None]:
    """(rows, the "capatlas" metadata or None) of a file forget-sets wrote; missing or unreadable is an error."""
    if not path.is_file():
        raise CapatlasError(f"{who}: {what} {path} does not exist (run capatlas forget-sets)")
    try:
        table = pq.read_table(path)
    except Exception as exc:
        raise CapatlasError(f"{who}: {what} {path} is not a readable parquet file: {exc}") from None
    try:
        raw = (table.schema.metadata or {}).get(METADATA_KEY)
        meta = json.loads(raw) if raw else None
    except ValueError:
        meta = None
    frame = table.to_pandas()
    if missing := columns - set(frame.columns):
        raise CapatlasError(f"{who}: {what} {path} lacks the column(s) {', '.join(sorted(missing))}")
    return frame, meta


def read_retain_pool(path: str | os.PathLike, *, job_name: str) -> tuple[int, pd.DataFrame]:
    """(seed, documents with text) of a retain pool written by `write_retain_pool`; anything else is an error."""
    path = Path(path)
    frame, meta = _read_unlearning_table(path, "retain pool", job_name, {"doc_id", "unit", "round", "text"})
    if not isinstance(meta, dict) or not isinstance(meta.get("seed"), int):
        raise CapatlasError(
            f"{job_name}: retain pool {path} does not say which seed drew it (not written by capatlas forget-sets;"
            " rerun it)"
        )
    return meta["seed"], frame


def read_forget_set(path: str | os.PathLike, *, run_name: str | None = None) -> tuple[pd.DataFrame, dict]:
    """(documents with text, metadata); a missing, unreadable or empty set is an error naming the run."""
    path = Path(path)
    who = run_name or str(path)
    frame, meta = _read_unlearning_table(path, "forget set", who, {"doc_id", "text"})
    if frame.empty:
        raise CapatlasError(f"{who}: forget set {path} is empty")
    return frame, meta or {}


def write_all(config: dict, docs: pd.DataFrame, bin_matrix: pd.DataFrame | None, shards: Sequence[Path], out: Path):
    sets, resolved = build_forget_sets(config, docs, bin_matrix)
    seeds = config["unlearning"]["forget"]["seeds"]
    pools = {seed: build_retain_pool(config, docs, seed) for seed in seeds}
    needed = {d for s in sets for d in s.docs["doc_id"]} | {d for p in pools.values() for d in p["doc_id"]}
    texts = read_texts(shards, needed)
    level = config["unlearning"]["unit"]
    for forget in sets:
        write_forget_set(forget, with_text(forget.docs, texts), out / forget.run.path / "forget_set.parquet")
    for seed, pool in pools.items():
        write_retain_pool(with_text(pool, texts), seed, retain_rounds(config), out / "retain" / f"seed{seed}.parquet")
    write_json(
        {
            "level": level,
            "units": resolved,
            "runs": [{**s.metadata(), "path": s.run.path} for s in sets],
            "retain_rounds": retain_rounds(config),
        },
        out / "forget_sets.json",
    )
    return sets


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", required=True, help="manifest/manifest.parquet")
    parser.add_argument("--scores", nargs="+", required=True, help="attribution/scores/shard-*.parquet")
    parser.add_argument("--shards", nargs="+", required=True, help="shards/shard-*.parquet (texts)")
    parser.add_argument("--bin-matrix", default=None, help="influence/bin_matrix.parquet (needed for top_k units)")
    parser.add_argument("--out", required=True, help="the unlearning/ directory")


def run(args: argparse.Namespace, config: dict | None) -> None:
    benchmarks = [b["name"] for b in config["benchmarks"]]
    docs = read_scored_docs(Path(args.manifest), [Path(p) for p in args.scores], benchmarks)
    bin_matrix = None
    if args.bin_matrix:
        bin_matrix = read_bin_matrix(args.bin_matrix)
        check_scored_by_the_same_run(args.bin_matrix, args.scores[0], read_score_provenance(args.scores[0]))
    sets = write_all(config, docs, bin_matrix, [Path(p) for p in args.shards], Path(args.out))
    log.info("wrote %d forget sets and %d retain pools", len(sets), len(config["unlearning"]["forget"]["seeds"]))

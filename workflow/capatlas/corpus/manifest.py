"""`capatlas manifest`: a deduplicated, filtered, stratified sample of the corpus per bin.

One streaming pass reads every corpus file (in parallel over files with
``manifest.threads`` processes), labels each record (bin_id =
topic_id * 24 + format_id), normalises its text (NFC, whitespace runs
collapsed, stripped) and hashes it (``text_sha256``), and counts its tokens
with the configured tokenizer (no special tokens).

Sampling is order-independent: it does not depend on file order, on how
records are split into files, or on the process count. A document's key is
the first 8 bytes of ``sha256(f"{seed}:{text_sha256}")`` read as a
big-endian uint64 (``f"{seed}:{doc_id}"`` when ``manifest.dedup`` is off),
so exact duplicates share a key.

- dedup: one document per distinct normalised text, the copy with the
  smallest doc_id (string order); its labels and token count are the ones
  kept. The filter (``n_tokens >= min_tokens``) applies to that copy.
- quota: per bin, the ``docs_per_bin`` texts with the smallest
  (key, text_sha256); every text where a bin has fewer.
- proportional: every text whose key is below ``fraction * 2**64``.

Memory. Each file's scan returns bounded candidates (at most docs_per_bin
texts per bin, or the proportional sample) plus, for exact "after dedup" and
"after filter" counts and for duplicate-id detection, about 18 bytes per
document: the key (uint64) with its (bin, passed) category (uint16) and a
64-bit hash of the doc id (uint64). The parent keeps these arrays until the
merge, where numpy sorts them (transiently about twice that). For Dolma 3's
~1.3 billion documents that is ~23 GB resident, ~50 GB at the merge; size
the rule's mem_mb accordingly. Two different texts sharing a 64-bit key
would be counted once (probability ~4% of a single such pair at 1.3e9
documents, changing a count by one); selection compares full hashes.

Copies of one text that disagree on their bin or on the filter (labels
predicted from the URL, whitespace that changes the token count) are rare;
when present, the files holding them are read a second time, only to
resolve those texts (and any doc id seen twice) exactly.

Outputs (the directory is replaced atomically; nothing is written on error):
  manifest.parquet   doc_id, topic_id, format_id, bin_id, n_tokens, text_sha256,
                     sorted by (bin_id, doc_id); no physical locations, so
                     re-splitting or renaming input files leaves it byte-identical
  locations.parquet  doc_id, source_file, row (sorted by doc_id)
  bin_summary.csv    all 576 bins: population, after_dedup, after_filter, sampled
  contract.json      config, seed, inputs (size, sha256), tokenizer, counts, empty bins
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import io
import logging
import os
import re
import unicodedata
from array import array
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa

from capatlas import __version__
from capatlas.command import Command
from capatlas.corpus.lazy_scan import N_STREAMS, UNKNOWN_BASE, is_unknown, stream_bins
from capatlas.corpus.pool import pool_map
from capatlas.corpus.readers import CorpusRecord, LabelResolver, expand_paths, iter_records, record_location
from capatlas.artifacts.bin_summary import summary_rows
from capatlas.artifacts.scan_partial import ARRAYS, CANDIDATE_SCHEMA, ScanPartial, read_partial, settings_sha256
from capatlas.errors import CapatlasError
from capatlas.fileio import atomic_path, file_sha256, tokenizer_sha256, write_json, write_parquet, write_text
from capatlas.taxonomy import N_BINS, N_FORMATS, bin_slug

log = logging.getLogger(__name__)

COMMAND = Command()

TWO_64 = 1 << 64
TOKENIZE_BATCH = 256

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("topic_id", pa.int32(), nullable=False),
        pa.field("format_id", pa.int32(), nullable=False),
        pa.field("bin_id", pa.int32(), nullable=False),
        pa.field("n_tokens", pa.int64(), nullable=False),
        pa.field("text_sha256", pa.string(), nullable=False),
    ]
)
LOCATIONS_SCHEMA = pa.schema(
    [
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("source_file", pa.string(), nullable=False),
        pa.field("row", pa.int64(), nullable=False),
    ]
)


# --------------------------------------------------------------------------- pure core

_WHITESPACE = re.compile(r"\s+")


def normalise_text(text: str) -> str:
    """NFC, whitespace runs collapsed to one space, stripped: the dedup identity."""
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFC", text)).strip()


def text_sha256(text: str) -> str:
    """Hex sha256 of the normalised text."""
    return hashlib.sha256(normalise_text(text).encode("utf-8", "surrogatepass")).hexdigest()


def sampling_key(seed: int, ident: str) -> int:
    """First 8 bytes of sha256(f"{seed}:{ident}") as an unsigned big-endian integer."""
    digest = hashlib.sha256(f"{seed}:{ident}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big")


def doc_id_hash(doc_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(doc_id.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")


@dataclass(frozen=True)
class ManifestSettings:
    seed: int = 42
    allocation: str = "quota"
    docs_per_bin: int = 10000
    fraction: float = 0.01
    min_tokens: int = 0
    dedup: bool = True

    def __post_init__(self) -> None:
        if self.allocation not in ("quota", "proportional"):
            raise CapatlasError(f"config key 'manifest.allocation': unknown allocation {self.allocation!r}")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ManifestSettings:
        m = config["manifest"]
        return cls(
            seed=int(config["seed"]),
            allocation=m["allocation"],
            docs_per_bin=int(m["docs_per_bin"]),
            fraction=float(m["fraction"]),
            min_tokens=int(m["min_tokens"]),
            dedup=bool(m["dedup"]),
        )

    @property
    def threshold(self) -> int:
        """Proportional sampling keeps keys strictly below this."""
        return min(TWO_64, int(self.fraction * TWO_64))

    @property
    def quota(self) -> int | None:
        return self.docs_per_bin if self.allocation == "quota" else None


class Doc(NamedTuple):
    """One labelled, hashed and tokenised record (a copy, before dedup)."""

    doc_id: str
    topic_id: int
    format_id: int
    n_tokens: int
    text_sha256: str
    source_file: str = ""
    row: int = 0

    @property
    def bin_id(self) -> int:
        return self.topic_id * N_FORMATS + self.format_id

    @property
    def where(self) -> str:
        return record_location(self.source_file, self.row)


class Candidate(NamedTuple):
    """A document that may be sampled: its key and everything the outputs need."""

    key: int
    text_sha256: str
    doc_id: str
    bin_id: int
    n_tokens: int
    source_file: str
    row: int


def identity(c: Candidate | Doc, dedup: bool) -> str:
    return c.text_sha256 if dedup else c.doc_id


def doc_key(settings: ManifestSettings, doc: Doc) -> int:
    return sampling_key(settings.seed, identity(doc, settings.dedup))


def _order(c: Candidate) -> tuple[int, str, str]:
    # Selection order: (key, text_sha256), doc_id only separates equal texts when dedup is off.
    return (c.key, c.text_sha256, c.doc_id)


def _copy_rank(c: Candidate | Doc) -> tuple[str, str, int]:
    # Among copies of one text the smallest doc_id wins; the location only breaks exact ties.
    return (c.doc_id, c.source_file, c.row)


def candidate(settings: ManifestSettings, doc: Doc, key: int | None = None) -> Candidate:
    return Candidate(
        key=doc_key(settings, doc) if key is None else key,
        text_sha256=doc.text_sha256,
        doc_id=doc.doc_id,
        bin_id=doc.bin_id,
        n_tokens=doc.n_tokens,
        source_file=doc.source_file,
        row=doc.row,
    )


class BinCandidates:
    """The `cap` smallest identities of one bin (all of them when cap is None), best copy each.

    Entries may arrive in any order and from any file; the result is the
    same, which is what makes sampling independent of file order and split.
    """

    __slots__ = ("cap", "dedup", "items", "bound")

    def __init__(self, cap: int | None, dedup: bool) -> None:
        self.cap = cap
        self.dedup = dedup
        self.items: dict[str, Candidate] = {}
        self.bound: tuple | None = None

    def offer(self, c: Candidate) -> None:
        if self.bound is not None and _order(c) > self.bound:
            return
        ident = identity(c, self.dedup)
        current = self.items.get(ident)
        if current is None:
            self.items[ident] = c
            # Prune in batches: sorting on every insert would cost O(cap log cap) each time.
            if self.cap is not None and len(self.items) > self.cap + self.cap // 2 + 16:
                self.prune()
        elif _copy_rank(c) < _copy_rank(current):
            self.items[ident] = c

    def prune(self) -> None:
        if self.cap is None or len(self.items) <= self.cap:
            return
        kept = sorted(self.items.values(), key=_order)[: self.cap]
        self.items = {identity(c, self.dedup): c for c in kept}
        self.bound = _order(kept[-1])

    def values(self) -> list[Candidate]:
        self.prune()
        return sorted(self.items.values(), key=_order)


def dedup_owners(copies: Iterable[Candidate], dedup: bool) -> dict[str, Candidate]:
    """identity -> the copy that represents it (smallest doc_id)."""
    owners: dict[str, Candidate] = {}
    for c in copies:
        ident = identity(c, dedup)
        current = owners.get(ident)
        if current is None or _copy_rank(c) < _copy_rank(current):
            owners[ident] = c
    return owners


def select(
    candidates: Iterable[Candidate],
    allocation: str,
    *,
    docs_per_bin: int = 10000,
    fraction: float = 0.01,
) -> list[Candidate]:
    """Sample from deduplicated, filtered candidates; sorted by (bin_id, doc_id).

    quota: per bin the `docs_per_bin` smallest (key, text_sha256);
    proportional: every candidate with key < fraction * 2**64.
    """
    if allocation == "quota":
        per_bin: dict[int, list[Candidate]] = defaultdict(list)
        for c in candidates:
            per_bin[c.bin_id].append(c)
        chosen = [c for group in per_bin.values() for c in sorted(group, key=_order)[:docs_per_bin]]
    elif allocation == "proportional":
        threshold = min(TWO_64, int(fraction * TWO_64))
        chosen = [c for c in candidates if c.key < threshold]
    else:
        raise CapatlasError(f"config key 'manifest.allocation': unknown allocation {allocation!r}")
    return sorted(chosen, key=lambda c: (c.bin_id, c.doc_id))


@dataclass
class FileScan:
    """What one file contributes to its group's partial."""

    source_file: str
    n_records: int
    population: np.ndarray  # int64[N_BINS]
    pair_keys: np.ndarray  # uint64, unique (key, category) pairs
    pair_cats: np.ndarray  # uint16, category = 2 * bin_id + passed
    id_hashes: np.ndarray  # uint64, one per record, sorted
    candidates: list[Candidate]
    identity: dict = field(default_factory=dict)  # size, mtime_ns, sha256, sha256_of
    classified: dict = field(default_factory=dict)


def _unique_pairs(keys: np.ndarray, cats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(keys) == 0:
        return keys.astype(np.uint64), cats.astype(np.uint16)
    order = np.lexsort((cats, keys))
    keys, cats = keys[order], cats[order]
    keep = np.ones(len(keys), dtype=bool)
    keep[1:] = (keys[1:] != keys[:-1]) | (cats[1:] != cats[:-1])
    return keys[keep], cats[keep]


class Scanner:
    """Accumulates one file's documents into a `FileScan` (no I/O)."""

    def __init__(self, settings: ManifestSettings, source_file: str = "") -> None:
        self.settings = settings
        self.source_file = source_file
        self.n_records = 0
        self.population = np.zeros(N_BINS, dtype=np.int64)
        self._keys = array("Q")
        self._cats = array("H")
        self._ids = array("Q")
        self._bins: dict[int, BinCandidates] = {}
        self._threshold = settings.threshold

    def could_enter(self, bin_id: int, key: int) -> bool:
        """Whether a passing document with this key could still become one of this file's candidates.

        The holders' bounds only fall, so a document refused now would be
        refused later too; it needs no exact token count (see `_read_docs`)."""
        if self.settings.allocation == "proportional":
            return key < self._threshold
        holder = self._bins.get(bin_id)
        return holder is None or holder.bound is None or key <= holder.bound[0]

    def add(self, doc: Doc, key: int | None = None) -> None:
        settings = self.settings
        key = doc_key(settings, doc) if key is None else key
        bin_ = doc.bin_id
        passed = doc.n_tokens >= settings.min_tokens
        self.n_records += 1
        self.population[bin_] += 1
        self._keys.append(key)
        self._cats.append(2 * bin_ + int(passed))
        self._ids.append(doc_id_hash(doc.doc_id))
        if not passed:
            return
        if settings.allocation == "proportional" and key >= self._threshold:
            return
        holder = self._bins.get(bin_)
        if holder is None:
            holder = self._bins[bin_] = BinCandidates(settings.quota, settings.dedup)
        holder.offer(candidate(settings, doc, key))

    def finish(self, identity: dict | None = None) -> FileScan:
        keys, cats = _unique_pairs(
            np.frombuffer(self._keys, dtype=np.uint64).copy(), np.frombuffer(self._cats, dtype=np.uint16).copy()
        )
        ids = np.sort(np.frombuffer(self._ids, dtype=np.uint64))
        return FileScan(
            source_file=self.source_file,
            n_records=self.n_records,
            population=self.population,
            pair_keys=keys,
            pair_cats=cats,
            id_hashes=ids,
            candidates=[c for holder in self._bins.values() for c in holder.values()],
            identity=dict(identity or {}),
        )


def candidates_table(candidates: Sequence[Candidate]) -> pa.Table:
    ordered = sorted(candidates, key=lambda c: (c.bin_id, *_order(c)))
    return pa.table(
        [
            pa.array([c.key for c in ordered], pa.uint64()),
            pa.array([c.text_sha256 for c in ordered], pa.string()),
            pa.array([c.doc_id for c in ordered], pa.string()),
            pa.array([c.bin_id for c in ordered], pa.int32()),
            pa.array([c.n_tokens for c in ordered], pa.int64()),
            pa.array([c.source_file for c in ordered], pa.string()),
            pa.array([c.row for c in ordered], pa.int64()),
        ],
        schema=CANDIDATE_SCHEMA,
    )


def iter_candidates(table: pa.Table, batch_rows: int = 1 << 16) -> Iterable[Candidate]:
    for batch in table.to_batches(max_chunksize=batch_rows):
        columns = [batch.column(name).to_pylist() for name in CANDIDATE_SCHEMA.names]
        yield from (Candidate(*row) for row in zip(*columns, strict=True))


def group_partial(
    scans: Sequence[FileScan], settings: ManifestSettings, *, group: str = "0", settings_digest: str = ""
) -> ScanPartial:
    """Combine one group's file scans (any order) into its partial; files are indexed in path order."""
    scans = sorted(scans, key=lambda s: s.source_file)
    population = np.zeros(N_BINS, dtype=np.int64)
    holders: dict[int, BinCandidates] = {}
    for scan in scans:
        population += scan.population
        for c in scan.candidates:
            holder = holders.get(c.bin_id)
            if holder is None:
                holder = holders[c.bin_id] = BinCandidates(settings.quota, settings.dedup)
            holder.offer(c)
    files = np.concatenate([np.full(len(s.pair_keys), i, np.uint32) for i, s in enumerate(scans)] or [np.zeros(0, np.uint32)])
    keys = np.concatenate([s.pair_keys for s in scans] or [np.zeros(0, np.uint64)])
    cats = np.concatenate([s.pair_cats for s in scans] or [np.zeros(0, np.uint16)])
    order = np.lexsort((files, cats, keys))
    id_files = np.concatenate([np.full(len(s.id_hashes), i, np.uint32) for i, s in enumerate(scans)] or [np.zeros(0, np.uint32)])
    id_hashes = np.concatenate([s.id_hashes for s in scans] or [np.zeros(0, np.uint64)])
    id_order = np.lexsort((id_files, id_hashes))
    classified: dict[str, int] = {}
    for scan in scans:
        for topic, n in scan.classified.items():
            classified[topic] = classified.get(topic, 0) + int(n)
    return ScanPartial(
        group=group,
        files=[{"path": s.source_file, **s.identity, "records": s.n_records} for s in scans],
        population=population,
        arrays={
            "pair_keys": keys[order],
            "pair_cats": cats[order],
            "pair_files": files[order],
            "id_hashes": id_hashes[id_order],
            "id_files": id_files[id_order],
        },
        candidates=candidates_table([c for holder in holders.values() for c in holder.values()]),
        settings_sha256=settings_digest,
        classified=dict(sorted(classified.items())),
    )


@dataclass
class ManifestResult:
    docs: list[Candidate]  # sorted by (bin_id, doc_id)
    population: np.ndarray
    after_dedup: np.ndarray
    after_filter: np.ndarray
    sampled: np.ndarray
    inputs: list[dict] = field(default_factory=list)
    rescanned_files: int = 0
    classified: dict = field(default_factory=dict)
    estimates: dict | None = None

    @property
    def counts(self) -> dict[str, int]:
        records = int(self.population.sum())
        distinct = int(self.after_dedup.sum())
        kept = int(self.after_filter.sum())
        return {
            "records": records,
            "duplicates": records - distinct,
            "distinct": distinct,
            "filtered": distinct - kept,
            "after_filter": kept,
            "sampled": len(self.docs),
            "bins_nonempty": int((self.sampled > 0).sum()),
            "bins_empty": int((self.sampled == 0).sum()),
        }


# A rescan request: file -> (keys wanted, doc-id hashes wanted); the answer is
# every copy (as a Doc) in those files whose key or doc-id hash is wanted.
Rescan = Callable[[dict[str, tuple[np.ndarray, np.ndarray]]], list[Doc]]

# Records per key range the merge holds at once (~14 bytes each, a few copies while sorting).
MERGE_CHUNK_RECORDS = 1 << 22


def _key_ranges(total: int, chunk_records: int) -> list[tuple[int, int]]:
    """Equal slices of the 64-bit key space, about `chunk_records` records each (keys are uniform hashes)."""
    n = max(1, -(-total // max(1, chunk_records)))
    bounds = [(i * TWO_64) // n for i in range(n)] + [TWO_64]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def _range_slices(
    partials: Sequence[ScanPartial], offsets: Sequence[int], key_name: str, columns: Sequence[str], lo: int, hi: int
) -> list[np.ndarray]:
    """The rows of every partial whose `key_name` lies in [lo, hi), concatenated (file columns made global).

    Each column is one allocation the slices are read into: many small
    per-scan arrays left the allocator holding memory it no longer used."""
    bounds = []
    for partial in partials:
        a = partial.search(key_name, np.uint64(lo))
        b = len(partial.arrays[key_name]) if hi >= TWO_64 else partial.search(key_name, np.uint64(hi))
        bounds.append((a, b))
    total = sum(b - a for a, b in bounds)
    out = [np.empty(total, dtype=ARRAYS[c]) for c in columns]
    at = 0
    for partial, offset, (a, b) in zip(partials, offsets, bounds, strict=True):
        if a == b:
            continue
        for column, target in zip(columns, out, strict=True):
            partial.read_slice_into(column, a, b, target[at : at + b - a])
            if column.endswith("_files"):
                target[at : at + b - a] += np.uint32(offset)
        at += b - a
    return out


def _wanted_files(keys: np.ndarray, files: np.ndarray, wanted: np.ndarray) -> dict[int, set[int]]:
    hit = np.isin(keys, wanted)
    by_file: dict[int, set[int]] = defaultdict(set)
    for k, f in zip(keys[hit].tolist(), files[hit].tolist(), strict=True):
        by_file[f].add(k)
    return by_file


def _largest_remainder(values: np.ndarray) -> np.ndarray:
    """Non-negative reals rounded to integers that keep their (rounded) total."""
    floor = np.floor(values).astype(np.int64)
    short = int(round(float(values.sum()))) - int(floor.sum())
    if short > 0:
        floor[np.argsort(-(values - floor), kind="stable")[:short]] += 1
    return floor


def estimate_unclassified(population, after_dedup, after_filter, unknown_per_cat, classified):
    """Bin counts with lazily unclassified records spread over their stream's bins by the classified shares.

    The classified records of a stream are its smallest keys, a uniform
    random sample of it, so a bin's share among them estimates its share of
    the rest; the estimate's standard error is u * sqrt(p (1 - p) / n) for
    u unclassified and n classified records. Stream totals stay exact."""
    population, after_dedup, after_filter = (np.array(a, dtype=np.float64) for a in (population, after_dedup, after_filter))
    estimated = np.zeros(N_BINS, dtype=bool)
    sd = np.zeros(N_BINS)
    for key, entry in classified.items():
        stream = int(key)
        bins = np.array(stream_bins(stream))
        unclassified = int(entry["records"]) - int(entry["classified"])
        n = int(entry["classified"])
        if unclassified <= 0 or n <= 0:
            continue
        additions = (
            (population, unclassified),
            (after_dedup, int(unknown_per_cat[2 * stream] + unknown_per_cat[2 * stream + 1])),
            (after_filter, int(unknown_per_cat[2 * stream + 1])),
        )
        for counts, extra in additions:
            base = counts[bins].copy()
            shares = base / base.sum() if base.sum() else np.full(len(bins), 1.0 / len(bins))
            counts[bins] = base + _largest_remainder(extra * shares)
        p = population[bins] / population[bins].sum()
        sd[bins] = unclassified * np.sqrt(p * (1 - p) / n)
        estimated[bins] = True
    report = {
        "method": "bins of streams not classified in full: classified counts + unclassified x the bin's share "
        "among the stream's classified records (its smallest keys, a uniform sample); standard error "
        "u * sqrt(p (1 - p) / n)",
        "bins_estimated": int(estimated.sum()),
        "population_sd": {str(b): round(float(sd[b]), 2) for b in np.flatnonzero(estimated).tolist()},
    }
    return population.astype(np.int64), after_dedup.astype(np.int64), after_filter.astype(np.int64), report


class Merge:
    """The manifest from group partials, in any order: exact counts, cross-group dedup, bounded memory.

    The arrays are read a key range at a time (memory-mapped when the
    partials come from disk); only candidates (bounded by the quota) and the
    rare texts whose copies disagree are held whole.
    """

    def __init__(self, settings: ManifestSettings, partials: Sequence[ScanPartial], *, chunk_records: int = MERGE_CHUNK_RECORDS):
        self.settings = settings
        self.partials = list(partials)
        self.chunk_records = chunk_records
        self.paths = [f["path"] for p in self.partials for f in p.files]
        self.offsets = list(np.cumsum([0] + [len(p.files) for p in self.partials[:-1]]).tolist()) if self.partials else []
        if len(set(self.paths)) != len(self.paths):
            seen: set[str] = set()
            twice = next(p for p in self.paths if p in seen or seen.add(p))
            raise CapatlasError(f"corpus file {twice} was scanned by two manifest scan groups")

    def _add_to(self, by_file: dict[int, set[int]], more: dict[int, set[int]]) -> None:
        for f, keys in more.items():
            by_file[f] |= keys

    def _pair_pass(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[int, set[int]], np.ndarray, np.ndarray]:
        """Counts of texts whose copies agree, the keys to resolve (with files), per bin how many of them pass,
        and the texts no copy of which was classified (lazy labels), per unknown category."""
        per_cat = np.zeros(2 * N_BINS, dtype=np.int64)
        unknown_per_cat = np.zeros(2 * N_STREAMS, dtype=np.int64)
        ambiguous_parts: list[np.ndarray] = []
        amb_by_file: dict[int, set[int]] = defaultdict(set)
        amb_per_bin = np.zeros(N_BINS, dtype=np.int64)
        total = sum(len(p.arrays["pair_keys"]) for p in self.partials)
        for lo, hi in _key_ranges(total, self.chunk_records):
            keys, cats, files = _range_slices(
                self.partials, self.offsets, "pair_keys", ("pair_keys", "pair_cats", "pair_files"), lo, hi
            )
            ukeys, ucats = _unique_pairs(keys, cats)
            if not len(ukeys):
                continue
            unknown = is_unknown(ucats)
            first = np.ones(len(ukeys), dtype=bool)
            first[1:] = ukeys[1:] != ukeys[:-1]
            text = np.cumsum(first) - 1  # which distinct key each pair belongs to
            n_known = np.bincount(text, weights=~unknown).astype(np.int64)
            n_pairs = np.bincount(text).astype(np.int64)
            # To resolve: copies disagreeing on bin or filter, or a classified copy beside unclassified ones.
            resolve = (n_known >= 2) | ((n_known >= 1) & (n_pairs > n_known))
            single = ((n_known == 1) & (n_pairs == 1))[text]
            per_cat += np.bincount(ucats[single].astype(np.int64), minlength=2 * N_BINS)
            never = first & (n_known == 0)[text]
            unknown_per_cat += np.bincount((ucats[never] - UNKNOWN_BASE).astype(np.int64), minlength=2 * N_STREAMS)
            ambiguous = ukeys[first][resolve]
            if len(ambiguous):
                ambiguous_parts.append(ambiguous)
                self._add_to(amb_by_file, _wanted_files(keys, files, ambiguous))
                amb_pass = resolve[text] & ~unknown & (ucats % 2 == 1)
                amb_per_bin += np.bincount((ucats[amb_pass] // 2).astype(np.int64), minlength=N_BINS)
        ambiguous = np.concatenate(ambiguous_parts) if ambiguous_parts else np.zeros(0, np.uint64)
        return per_cat[0::2] + per_cat[1::2], per_cat[1::2].copy(), ambiguous, amb_by_file, amb_per_bin, unknown_per_cat

    def _unclassified_below(self, bounds: np.ndarray) -> tuple[np.ndarray, dict[int, set[int]], dict[int, int]]:
        """Keys of unclassified records whose key is below their stream's bound (they could enter a sample),
        their files, and each key's stream (that of its smallest unknown category, as the tallies count it)."""
        found: list[np.ndarray] = []
        streams: dict[int, int] = {}
        by_file: dict[int, set[int]] = defaultdict(set)
        total = sum(len(p.arrays["pair_keys"]) for p in self.partials)
        for lo, hi in _key_ranges(total, self.chunk_records):
            keys, cats, files = _range_slices(
                self.partials, self.offsets, "pair_keys", ("pair_keys", "pair_cats", "pair_files"), lo, hi
            )
            unknown = is_unknown(cats)
            if not unknown.any():
                continue
            stream = (cats[unknown].astype(np.int64) - UNKNOWN_BASE) // 2
            below = keys[unknown] < bounds[stream]
            if below.any():
                for k, st in sorted(zip(keys[unknown][below].tolist(), stream[below].tolist(), strict=True), reverse=True):
                    streams[k] = st
                hit = np.unique(keys[unknown][below])
                found.append(hit)
                self._add_to(by_file, _wanted_files(keys, files, hit))
        return (np.concatenate(found) if found else np.zeros(0, np.uint64)), by_file, streams

    def _bin_prefixes(self, amb_per_bin: np.ndarray) -> tuple[np.ndarray, dict[int, set[int]]]:
        """Under quota, the first docs_per_bin + a_b passing keys of each bin with an ambiguous text, with files."""
        need = {b: self.settings.docs_per_bin + int(amb_per_bin[b]) for b in np.flatnonzero(amb_per_bin).tolist()}
        found: list[np.ndarray] = []
        by_file: dict[int, set[int]] = defaultdict(set)
        total = sum(len(p.arrays["pair_keys"]) for p in self.partials)
        for lo, hi in _key_ranges(total, self.chunk_records):
            if not need:
                break
            keys, cats, files = _range_slices(
                self.partials, self.offsets, "pair_keys", ("pair_keys", "pair_cats", "pair_files"), lo, hi
            )
            ukeys, ucats = _unique_pairs(keys, cats)
            chosen = []
            for b in list(need):
                in_bin = ukeys[ucats == 2 * b + 1][: need[b]]
                need[b] -= len(in_bin)
                if need[b] <= 0:
                    del need[b]
                chosen.append(in_bin)
            chosen_keys = np.unique(np.concatenate(chosen)) if chosen else np.zeros(0, np.uint64)
            if len(chosen_keys):
                found.append(chosen_keys)
                self._add_to(by_file, _wanted_files(keys, files, chosen_keys))
        return (np.concatenate(found) if found else np.zeros(0, np.uint64)), by_file

    def _duplicate_ids(self) -> tuple[np.ndarray, dict[int, set[int]]]:
        dup_parts: list[np.ndarray] = []
        by_file: dict[int, set[int]] = defaultdict(set)
        total = sum(len(p.arrays["id_hashes"]) for p in self.partials)
        for lo, hi in _key_ranges(total, self.chunk_records):
            hashes, files = _range_slices(self.partials, self.offsets, "id_hashes", ("id_hashes", "id_files"), lo, hi)
            hashes_sorted = np.sort(hashes)
            dup = np.unique(hashes_sorted[1:][hashes_sorted[1:] == hashes_sorted[:-1]])
            if len(dup):
                dup_parts.append(dup)
                self._add_to(by_file, _wanted_files(hashes, files, dup))
        return (np.concatenate(dup_parts) if dup_parts else np.zeros(0, np.uint64)), by_file

    def _rescan(self, rescan: Rescan, keys_by_file, ids_by_file, wanted: np.ndarray, dup_ids: np.ndarray, why: str):
        requests = {}
        for f in sorted(set(keys_by_file) | set(ids_by_file)):
            keys = np.array(sorted(keys_by_file.get(f, ())), dtype=np.uint64)
            ids = np.array(sorted(ids_by_file.get(f, ())), dtype=np.uint64)
            requests[self.paths[f]] = (keys, ids)
        if not requests:
            return [], 0
        log.info("%s: re-reading %d files", why, len(requests))
        docs = rescan(requests)
        _check_duplicate_ids(docs, dup_ids, self.settings.dedup)
        wanted_set = set(int(k) for k in wanted)
        return [c for c in (candidate(self.settings, d) for d in docs) if c.key in wanted_set], len(requests)

    def finish(self, rescan: Rescan) -> ManifestResult:
        settings = self.settings
        population = np.zeros(N_BINS, dtype=np.int64)
        for p in self.partials:
            population += p.population
        n_records = sum(int(f.get("records", 0)) for p in self.partials for f in p.files)
        if n_records == 0 and int(population.sum()) == 0:
            raise CapatlasError("the corpus is empty: no records in " + _describe_files(self.paths))
        after_dedup, after_filter, ambiguous, amb_by_file, amb_per_bin, unknown_per_cat = self._pair_pass()
        amb_bins = set(np.flatnonzero(amb_per_bin).tolist()) if settings.allocation == "quota" else set()
        wanted_by_file = defaultdict(set, {f: set(k) for f, k in amb_by_file.items()})
        wanted = ambiguous
        if amb_bins:
            prefix_keys, prefix_by_file = self._bin_prefixes(amb_per_bin)
            wanted = np.unique(np.concatenate([ambiguous, prefix_keys]))
            self._add_to(wanted_by_file, prefix_by_file)
        dup_ids, dup_by_file = self._duplicate_ids()
        copies, rescanned = self._rescan(
            rescan,
            wanted_by_file,
            dup_by_file,
            wanted,
            dup_ids,
            f"{len(ambiguous)} texts have copies that disagree on bin or filter (or were classified in one scan only) "
            f"and {len(dup_ids)} doc ids repeat",
        )
        ambiguous_set = set(int(k) for k in ambiguous)
        owners = dedup_owners((c for c in copies if c.key in ambiguous_set or c.bin_id in amb_bins), settings.dedup)
        for c in owners.values():
            if c.key in ambiguous_set:
                after_dedup[c.bin_id] += 1
                if c.n_tokens >= settings.min_tokens:
                    after_filter[c.bin_id] += 1

        holders: dict[int, BinCandidates] = {}
        for partial in self.partials:
            for c in iter_candidates(partial.candidate_table()):
                if c.bin_id in amb_bins or c.key in ambiguous_set:
                    continue
                holder = holders.get(c.bin_id)
                if holder is None:
                    holder = holders[c.bin_id] = BinCandidates(settings.quota, settings.dedup)
                holder.offer(c)
        pool: list[Candidate] = [c for holder in holders.values() for c in holder.values()]
        passing = [c for c in owners.values() if c.n_tokens >= settings.min_tokens]
        if settings.allocation == "quota":
            pool.extend(c for c in passing if c.bin_id in amb_bins)
        else:
            pool.extend(c for c in passing if c.key in ambiguous_set)
        chosen = select(pool, settings.allocation, docs_per_bin=settings.docs_per_bin, fraction=settings.fraction)
        if unknown_per_cat.any():
            chosen, late, extra_files = self._classify_late(rescan, chosen, pool, dup_ids)
            rescanned += extra_files
            unknown_per_cat, after_dedup, after_filter = self._count_late(late, unknown_per_cat, after_dedup, after_filter)
        sampled = np.bincount(np.array([c.bin_id for c in chosen], dtype=np.int64), minlength=N_BINS).astype(np.int64)
        classified: dict[str, dict] = {}
        for p in self.partials:
            for stream, entry in p.classified.items():
                merged = classified.setdefault(stream, {"records": 0, "classified": 0})
                merged["records"] += int(entry["records"])
                merged["classified"] += int(entry["classified"])
        estimates = None
        if classified:
            population, after_dedup, after_filter, estimates = estimate_unclassified(
                population, after_dedup, after_filter, unknown_per_cat, classified
            )
        return ManifestResult(
            docs=chosen,
            population=population,
            after_dedup=after_dedup.astype(np.int64),
            after_filter=after_filter.astype(np.int64),
            sampled=sampled,
            inputs=sorted(({k: v for k, v in f.items()} for p in self.partials for f in p.files), key=lambda i: i["path"]),
            rescanned_files=rescanned,
            classified=dict(sorted(classified.items(), key=lambda kv: int(kv[0]))),
            estimates=estimates,
        )

    def _classify_late(self, rescan: Rescan, chosen, pool, dup_ids):
        """Lazy labels' check: classify every unclassified record that could enter a bin's final sample, reselect.

        A stream's bound is the largest key its bins' samples would have to
        beat (the quota's last key of a full bin; anything for a bin not
        full). Each scan classified its streams until every bin held the
        quota, so this is normally empty; it keeps the sample exact when not."""
        settings = self.settings
        late: list[tuple[Candidate, int]] = []
        files_read = 0
        for _ in range(8):
            bounds = np.zeros(N_STREAMS, dtype=np.uint64)
            full_last: dict[int, int] = {}
            counts = defaultdict(int)
            for c in chosen:
                counts[c.bin_id] += 1
                full_last[c.bin_id] = max(full_last.get(c.bin_id, 0), c.key)
            for stream in range(N_STREAMS):
                bins = stream_bins(stream)
                if settings.allocation == "proportional":
                    bounds[stream] = np.uint64(min(settings.threshold, TWO_64 - 1))
                elif all(counts[b] >= settings.docs_per_bin for b in bins):
                    bounds[stream] = np.uint64(max(full_last[b] for b in bins) + 1)
                else:
                    bounds[stream] = np.uint64(TWO_64 - 1)
            keys, by_file, key_streams = self._unclassified_below(bounds)
            known = set(c.key for c, _ in late)
            keys = np.array([k for k in keys.tolist() if k not in known], dtype=np.uint64)
            if not len(keys):
                return chosen, late, files_read
            by_file = {f: {k for k in ks if k not in known} for f, ks in by_file.items()}
            by_file = {f: ks for f, ks in by_file.items() if ks}
            copies, n_files = self._rescan(
                rescan, by_file, {}, keys, np.zeros(0, np.uint64), f"{len(keys)} unclassified texts could enter a sample"
            )
            files_read += n_files
            new = list(dedup_owners(copies, settings.dedup).values())
            late.extend((c, key_streams[c.key]) for c in new)
            pool = pool + [c for c in new if c.n_tokens >= settings.min_tokens]
            chosen = select(pool, settings.allocation, docs_per_bin=settings.docs_per_bin, fraction=settings.fraction)
        raise CapatlasError("lazy labels: the sample did not settle after 8 rounds of late classification (a bug)")

    def _count_late(self, late, unknown_per_cat, after_dedup, after_filter):
        """Texts classified late move from the unknown tallies to their bins' exact counts."""
        unknown_per_cat = unknown_per_cat.copy()
        for c, stream in late:
            passed = c.n_tokens >= self.settings.min_tokens
            unknown_per_cat[2 * stream + int(passed)] -= 1
            after_dedup[c.bin_id] += 1
            after_filter[c.bin_id] += int(passed)
        return unknown_per_cat, after_dedup, after_filter


def _check_duplicate_ids(docs: Sequence[Doc], dup_ids: np.ndarray, dedup: bool) -> None:
    if not len(dup_ids):
        return
    dup_set = set(int(h) for h in dup_ids)
    by_id: dict[str, list[Doc]] = defaultdict(list)
    for d in docs:
        if doc_id_hash(d.doc_id) in dup_set:
            by_id[d.doc_id].append(d)
    for doc_id in sorted(by_id):
        group = sorted(by_id[doc_id], key=lambda d: (d.source_file, d.row))
        if len(group) < 2:
            continue  # two different ids that share a 64-bit hash
        first = group[0]
        for other in group[1:]:
            if other.text_sha256 != first.text_sha256:
                raise CapatlasError(f"doc_id {doc_id!r} names two different texts: {first.where} and {other.where}")
            if not dedup:
                raise CapatlasError(
                    f"doc_id {doc_id!r} appears twice: {first.where} and {other.where} "
                    "(with manifest.dedup off every doc_id must be unique)"
                )


def _describe_files(files: Sequence[str]) -> str:
    if not files:
        return "(no files)"
    shown = ", ".join(files[:3])
    return shown + (f" and {len(files) - 3} more" if len(files) > 3 else "")


def build_manifest_from_docs(
    docs_by_file: Mapping[str, Sequence[Doc]],
    settings: ManifestSettings,
    *,
    groups: Sequence[Sequence[str]] | None = None,
    chunk_records: int = MERGE_CHUNK_RECORDS,
) -> ManifestResult:
    """The whole sampling rule on in-memory documents: one Scanner per 'file', one partial per group, the merge."""
    partials = []
    for g, group in enumerate(groups if groups is not None else [list(docs_by_file)]):
        scans = []
        for name in group:
            scanner = Scanner(settings, name)
            for doc in docs_by_file[name]:
                scanner.add(doc._replace(source_file=doc.source_file or name))
            scans.append(scanner.finish())
        partials.append(group_partial(scans, settings, group=str(g)))

    def rescan(requests: dict[str, tuple[np.ndarray, np.ndarray]]) -> list[Doc]:
        out = []
        for name, (keys, ids) in requests.items():
            k, i = set(int(x) for x in keys), set(int(x) for x in ids)
            for doc in docs_by_file[name]:
                doc = doc._replace(source_file=doc.source_file or name)
                if doc_key(settings, doc) in k or doc_id_hash(doc.doc_id) in i:
                    out.append(doc)
        return out

    return Merge(settings, partials, chunk_records=chunk_records).finish(rescan)


# --------------------------------------------------------------------------- files


class TokenCounter:
    """Counts tokens (no special tokens) with a local HF tokenizer, in batches."""

    def __init__(self, path: str) -> None:
        from transformers import AutoTokenizer

        if not path or not os.path.exists(path):
            raise CapatlasError(f"tokenizer {path!r} does not exist")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError, KeyError) as exc:
            raise CapatlasError(f"cannot load the tokenizer from {path}: {exc}") from None
        self.path = path
        backend = getattr(self.tokenizer, "backend_tokenizer", None) if self.tokenizer.is_fast else None
        if backend is not None:
            # Counting needs the whole document: no truncation, no padding.
            backend.no_truncation()
            backend.no_padding()
            self._encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
        self._backend = backend

    def count(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text. Texts over LONG_TEXT_CHARS are counted piece by piece, cut at spaces, so that one
        huge document (50 MB of text is 12 GB of tokenizer state) costs the memory of a few pieces."""
        counts = self._count([t if len(t) <= LONG_TEXT_CHARS else "" for t in texts])
        for i, text in enumerate(texts):
            if len(text) > LONG_TEXT_CHARS:
                pieces = list(_pieces(text, LONG_TEXT_CHARS))
                counts[i] = sum(sum(self._count(pieces[j : j + 8])) for j in range(0, len(pieces), 8))
        return counts

    def _count(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        if self._backend is not None:
            return [len(e) for e in self._encode(list(texts), add_special_tokens=False)]
        encoded = self.tokenizer(list(texts), add_special_tokens=False, return_attention_mask=False)
        return [len(ids) for ids in encoded["input_ids"]]


# Characters above which a text is counted in pieces (see TokenCounter.count).
LONG_TEXT_CHARS = 1 << 18


def _pieces(text: str, size: int):
    """`text` in consecutive pieces of at most `size` characters, each cut just before a space where there is one."""
    start = 0
    while start < len(text):
        end = min(start + size, len(text))
        if end < len(text):
            space = text.rfind(" ", start + 1, end)
            end = space if space > start else end
        yield text[start:end]
        start = end


_COUNTERS: dict[str, TokenCounter] = {}


def token_counter(path: str) -> TokenCounter:
    counter = _COUNTERS.get(path)
    if counter is None:
        counter = _COUNTERS[path] = TokenCounter(path)
    return counter


@dataclass(frozen=True)
class ScanContext:
    """Everything a worker needs to read one file (picklable)."""

    settings: ManifestSettings
    labels: dict
    id_field: str
    text_field: str
    tokenizer: str
    labels_files: dict | None = None
    labels_dir: str | None = None
    input_hash: str = "sampled"
    classifier: dict = field(default_factory=dict)

    @property
    def lazy(self) -> bool:
        """Classifier facets without precomputed labels: classified in the scan, only where the sample needs it."""
        return bool(self.resolver().classifier_facets) and self.labels_dir is None and not self.labels_files

    @property
    def corpus(self) -> dict:
        return {"labels": self.labels, "classifier": self.classifier}

    def resolver(self) -> LabelResolver:
        return LabelResolver(self.labels, labels_files=self.labels_files, labels_dir=self.labels_dir)

    def columns(self) -> list[str]:
        return [self.id_field, self.text_field, *self.resolver().record_fields]

    def digest(self) -> str:
        """What decides a scan's content: sampling settings, label sources and fields, the tokenizer's files."""
        return settings_sha256(
            {
                "settings": dataclasses.asdict(self.settings),
                "labels": self.labels,
                "id_field": self.id_field,
                "text_field": self.text_field,
                "tokenizer_sha256": tokenizer_sha256(self.tokenizer),
                # How a classifier labels changes the labels (device and batch size do not).
                "classifier": {
                    k: v for k, v in self.classifier.items() if k in ("max_length", "precision", "input_template")
                }
                if self.resolver().classifier_facets
                else None,
            }
        )

    @classmethod
    def from_config(
        cls, config: Mapping[str, Any], *, tokenizer: str, labels_dir: str | None = None, labels_files=None
    ) -> ScanContext:
        return cls(
            settings=ManifestSettings.from_config(config),
            labels={k: dict(v) for k, v in config["corpus"]["labels"].items()},
            id_field=config["corpus"]["id_field"],
            text_field=config["corpus"]["text_field"],
            tokenizer=tokenizer,
            labels_files=dict(labels_files) if labels_files else None,
            labels_dir=labels_dir,
            input_hash=config["manifest"]["input_hash"],
            classifier=dict(config["corpus"]["classifier"]),
        )


# Characters of a document's head tokenised to decide the min-token filter
# for a document that cannot be sampled (see decision_counts).
HEAD_CHARS_PER_TOKEN = 16
HEAD_MIN_CHARS = 1024


def _head(text: str, size: int) -> str:
    return next(_pieces(text, size)) if len(text) > size else text


def decision_counts(counter: TokenCounter, texts: Sequence[str], min_tokens: int) -> list[int]:
    """Counts that decide ``n_tokens >= min_tokens`` exactly without tokenising every text in full.

    A text's head, cut just before a space, never has more tokens than the
    whole text (pre-tokenisers split at spaces, so the head's tokens are
    the whole text's first ones; tests/test_manifest.py checks it), so a
    head that reaches `min_tokens` decides the filter; only texts whose head
    falls short and that are longer are counted in full."""
    if min_tokens <= 0:
        return [0] * len(texts)
    size = max(HEAD_MIN_CHARS, HEAD_CHARS_PER_TOKEN * min_tokens)
    heads = [_head(t, size) for t in texts]
    counts = counter.count(heads)
    again = [i for i, (text, head, n) in enumerate(zip(texts, heads, counts, strict=True)) if n < min_tokens and len(head) < len(text)]
    for i, n in zip(again, counter.count([texts[i] for i in again]), strict=True):
        counts[i] = n
    return counts


def _read_docs(
    path: str,
    ctx: ScanContext,
    *,
    keep: Callable[[CorpusRecord, str], bool] | None = None,
    hasher: Any = None,
    scanner: Scanner | None = None,
) -> Iterable[tuple[Doc, int]]:
    """Label, hash and tokenise the records of one file (those `keep` accepts), in batches: (doc, key) pairs.

    With a `scanner`, only documents that could still become its candidates
    are counted in full; the others get a count that decides the filter
    (`decision_counts`), which is all the counts need."""
    skip = ctx.resolver().classifier_facets if ctx.lazy else []
    labeler = ctx.resolver().for_file(path, skip=skip)
    counter = token_counter(ctx.tokenizer)
    settings = ctx.settings
    pending: list[tuple[CorpusRecord, int, int, str, int]] = []
    n_records = 0

    def flush() -> list[tuple[Doc, int]]:
        if skip:
            from capatlas.corpus.lazy_scan import classify_records

            labels = classify_records(ctx, [p[0] for p in pending], labeler)
            pending[:] = [(rec, t, f, sha, key) for (rec, _, _, sha, key), (t, f) in zip(pending, labels, strict=True)]
        full = [
            i
            for i, (_, t, f, _, key) in enumerate(pending)
            if scanner is None or scanner.could_enter(t * N_FORMATS + f, key)
        ]
        counts: list[int] = [0] * len(pending)
        for i, n in zip(full, counter.count([pending[i][0].text for i in full]), strict=True):
            counts[i] = n
        if len(full) < len(pending):
            rest = sorted(set(range(len(pending))) - set(full))
            decided = decision_counts(counter, [pending[i][0].text for i in rest], settings.min_tokens)
            for i, n in zip(rest, decided, strict=True):
                counts[i] = n
        docs = [
            (Doc(rec.doc_id, t, f, n, sha, path, rec.row), key)
            for (rec, t, f, sha, key), n in zip(pending, counts, strict=True)
        ]
        pending.clear()
        return docs

    for rec in iter_records(
        path, id_field=ctx.id_field, text_field=ctx.text_field, columns=ctx.columns(), hasher=hasher
    ):
        n_records += 1
        sha = text_sha256(rec.text)
        if keep is not None and not keep(rec, sha):
            continue
        topic, format_ = (-1, -1) if skip else labeler(rec)
        key = sampling_key(settings.seed, sha if settings.dedup else rec.doc_id)
        pending.append((rec, topic, format_, sha, key))
        if len(pending) >= TOKENIZE_BATCH:
            yield from flush()
    if pending:
        yield from flush()
    if keep is None and not skip:
        labeler.finish(n_records)


# Sampled input identity: this many blocks, evenly spaced from the first to the last byte.
SAMPLED_BLOCKS = 16
SAMPLED_BLOCK_BYTES = 1 << 16


def sampled_sha256(path: str) -> tuple[str, str]:
    """(sha256, what it covers): the whole file up to SAMPLED_BLOCKS x SAMPLED_BLOCK_BYTES, else the size
    and SAMPLED_BLOCKS blocks spread evenly from the first to the last byte (a few MB read per file, not terabytes)."""
    size = os.path.getsize(path)
    if size <= SAMPLED_BLOCKS * SAMPLED_BLOCK_BYTES:
        return file_sha256(path), "whole file"
    hasher = hashlib.sha256(f"{size}:".encode())
    step = (size - SAMPLED_BLOCK_BYTES) // (SAMPLED_BLOCKS - 1)
    with open(path, "rb") as handle:
        for i in range(SAMPLED_BLOCKS):
            handle.seek(i * step)
            hasher.update(handle.read(SAMPLED_BLOCK_BYTES))
    return hasher.hexdigest(), SAMPLED_SCHEME


SAMPLED_SCHEME = f"size and {SAMPLED_BLOCKS} evenly spaced blocks of {SAMPLED_BLOCK_BYTES} bytes"


def file_identity(path: str, hasher: Any = None) -> dict:
    """Size, mtime and sha256 (of the bytes `hasher` was fed while reading, else of sampled blocks)."""
    stat = os.stat(path)
    sha, covered = (hasher.hexdigest(), "whole file") if hasher is not None else sampled_sha256(path)
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha, "sha256_of": covered}


def scan_file(task: tuple[str, ScanContext]) -> FileScan:
    """Map step: one pass over one file."""
    path, ctx = task
    hasher = hashlib.sha256() if ctx.input_hash == "full" else None
    scanner = Scanner(ctx.settings, path)
    for doc, key in _read_docs(path, ctx, hasher=hasher, scanner=scanner):
        scanner.add(doc, key)
    return scanner.finish(file_identity(path, hasher))


def collect_file(task: tuple[str, ScanContext, np.ndarray, np.ndarray]) -> list[Doc]:
    """Second-pass step: the copies in one file whose key or doc-id hash is wanted."""
    path, ctx, keys, ids = task
    settings = ctx.settings
    key_set, id_set = set(int(k) for k in keys), set(int(i) for i in ids)

    def keep(rec: CorpusRecord, sha: str) -> bool:
        ident = sha if settings.dedup else rec.doc_id
        return sampling_key(settings.seed, ident) in key_set or doc_id_hash(rec.doc_id) in id_set

    return [doc for doc, _ in _read_docs(path, ctx, keep=keep)]


def scan_group(files: Sequence[str], ctx: ScanContext, *, threads: int, group: str = "0") -> ScanPartial:
    """Map step of the manifest: scan one group of corpus files into its partial."""
    token_counter(ctx.tokenizer)  # fail early, before any worker starts
    if ctx.lazy:
        from capatlas.corpus.lazy_scan import LazyGroupScan

        return LazyGroupScan(files, ctx, threads=threads, group=group).run()
    scans = list(pool_map(scan_file, [(path, ctx) for path in files], threads, f"manifest scan {group}"))
    return group_partial(scans, ctx.settings, group=group, settings_digest=ctx.digest())


def merge_partials(
    partials: Sequence[ScanPartial], ctx: ScanContext, *, threads: int, chunk_records: int = MERGE_CHUNK_RECORDS
) -> ManifestResult:
    """Reduce step: the manifest from every group's partial, re-reading only files with disagreeing copies."""

    def rescan(requests: dict[str, tuple[np.ndarray, np.ndarray]]) -> list[Doc]:
        tasks = [(path, ctx, keys, ids) for path, (keys, ids) in sorted(requests.items())]
        # Lazy labels classify in the rescan: one process, so the classifier loads once.
        workers = 1 if ctx.lazy else threads
        return [doc for docs in pool_map(collect_file, tasks, workers, "manifest rescan") for doc in docs]

    return Merge(ctx.settings, partials, chunk_records=chunk_records).finish(rescan)


def build_manifest(
    files: Sequence[str],
    config: Mapping[str, Any],
    *,
    tokenizer: str,
    labels_dir: str | None = None,
    labels_files: Mapping[str, str] | None = None,
    threads: int | None = None,
    groups: Sequence[Sequence[str]] | None = None,
) -> ManifestResult:
    """Scan and merge in one process: the map-reduce of the workflow's manifest_scan and manifest jobs."""
    ctx = ScanContext.from_config(config, tokenizer=tokenizer, labels_dir=labels_dir, labels_files=labels_files)
    threads = int(config["manifest"]["threads"] if threads is None else threads)
    groups = groups if groups is not None else [list(files)]
    partials = [scan_group(group, ctx, threads=threads, group=str(g)) for g, group in enumerate(groups)]
    return merge_partials(partials, ctx, threads=threads)


# --------------------------------------------------------------------------- outputs


def manifest_table(docs: Sequence[Candidate]) -> pa.Table:
    bins = np.array([c.bin_id for c in docs], dtype=np.int32)
    return pa.table(
        [
            pa.array([c.doc_id for c in docs], pa.string()),
            pa.array(bins // N_FORMATS, pa.int32()),
            pa.array(bins % N_FORMATS, pa.int32()),
            pa.array(bins, pa.int32()),
            pa.array([c.n_tokens for c in docs], pa.int64()),
            pa.array([c.text_sha256 for c in docs], pa.string()),
        ],
        schema=MANIFEST_SCHEMA,
    )


def locations_table(docs: Sequence[Candidate]) -> pa.Table:
    ordered = sorted(docs, key=lambda c: c.doc_id)
    return pa.table(
        [
            pa.array([c.doc_id for c in ordered], pa.string()),
            pa.array([c.source_file for c in ordered], pa.string()),
            pa.array([c.row for c in ordered], pa.int64()),
        ],
        schema=LOCATIONS_SCHEMA,
    )


def summary_csv(result: ManifestResult) -> str:
    buffer = io.StringIO()
    rows = summary_rows(result.population, result.after_dedup, result.after_filter, result.sampled)
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


# Manifest keys that change how the work is split, never the outputs: left out of the contract.
EXECUTION_KEYS = ("threads", "files_per_scan")


def write_manifest(
    result: ManifestResult,
    out_dir: str | os.PathLike,
    *,
    config: Mapping[str, Any],
    tokenizer: str,
    extra: dict | None = None,
) -> None:
    """Write the four outputs into `out_dir`, replacing it as a whole only when all are written."""
    with atomic_path(out_dir, directory=True) as tmp:
        write_parquet(manifest_table(result.docs), tmp / "manifest.parquet")
        write_parquet(locations_table(result.docs), tmp / "locations.parquet")
        write_text(summary_csv(result), tmp / "bin_summary.csv")
        empty = [b for b in range(N_BINS) if result.sampled[b] == 0]
        contract = {
            "capatlas_version": __version__,
            "seed": int(config["seed"]),
            "allocation": config["manifest"]["allocation"],
            "manifest": {k: v for k, v in config["manifest"].items() if k not in EXECUTION_KEYS},
            "corpus": {
                "id_field": config["corpus"]["id_field"],
                "text_field": config["corpus"]["text_field"],
                "labels": config["corpus"]["labels"],
            },
            "tokenizer": str(tokenizer),
            "inputs": result.inputs,
            "counts": result.counts,
            "empty_bins": [{"bin_id": b, "bin": bin_slug(b)} for b in empty],
            "outputs": {"manifest.parquet": file_sha256(tmp / "manifest.parquet")},
            "second_pass_files": result.rescanned_files,
            **(
                {"lazy_labels": {"streams": result.classified, "estimates": result.estimates}}
                if result.classified
                else {}
            ),
            "sampling_key": (
                "first 8 bytes of sha256(f'{seed}:{text_sha256}') as big-endian uint64"
                if config["manifest"]["dedup"]
                else "first 8 bytes of sha256(f'{seed}:{doc_id}') as big-endian uint64"
            ),
            **(extra or {}),
        }
        write_json(contract, tmp / "contract.json")


def resolve_tokenizer(config: Mapping[str, Any], cli_value: str | None) -> str:
    path = cli_value or config["models"]["tokenizer"] or config["models"]["document"]["path"]
    if not path:
        raise CapatlasError(
            "the manifest needs a tokenizer for n_tokens and the min-token filter: pass --tokenizer "
            "or set config key 'models.tokenizer' (or 'models.document.path')"
        )
    return str(path)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output directory (replaced atomically)")
    parser.add_argument("--files", nargs="+", default=None, help="corpus files or globs (default: config corpus.paths)")
    parser.add_argument(
        "--scans",
        nargs="+",
        default=None,
        help="merge these `capatlas manifest-scan` directories (which must cover the corpus files exactly) "
        "instead of scanning in this process",
    )
    parser.add_argument(
        "--labels-dir", default=None, help="directory of labels/<file-key>.parquet from `capatlas labels`"
    )
    parser.add_argument(
        "--tokenizer", default=None, help="tokenizer directory (default: models.tokenizer, else models.document.path)"
    )
    parser.add_argument("--threads", type=int, default=None, help="processes (default: manifest.threads)")


def check_coverage(partials: Sequence[ScanPartial], files: Sequence[str]) -> None:
    """The scans must cover exactly the corpus files (each once): a missing or extra file would change the sample."""
    scanned = [f["path"] for p in partials for f in p.files]
    expected = set(files)
    missing = sorted(expected - set(scanned))
    extra = sorted(set(scanned) - expected)
    if missing or extra:
        raise CapatlasError(
            f"the manifest scans do not match the corpus files: {len(missing)} not scanned"
            + (f" (e.g. {missing[0]})" if missing else "")
            + f", {len(extra)} scanned but not in the corpus"
            + (f" (e.g. {extra[0]})" if extra else "")
            + ": rerun the manifest_scan jobs"
        )


def run(args: argparse.Namespace, config: dict | None) -> None:
    globs = args.files or config["corpus"]["paths"]
    if not globs:
        raise CapatlasError("no corpus files: pass --files or set config key 'corpus.paths'")
    files = expand_paths(globs)
    tokenizer = resolve_tokenizer(config, args.tokenizer)
    ctx = ScanContext.from_config(config, tokenizer=tokenizer, labels_dir=args.labels_dir)
    threads = int(config["manifest"]["threads"] if args.threads is None else args.threads)
    if args.scans:
        digest = ctx.digest()
        partials = [read_partial(d, settings_sha256=digest) for d in args.scans]
        check_coverage(partials, files)
        log.info("manifest merge of %d scans over %d files", len(partials), len(files))
    else:
        log.info("manifest over %d files with tokenizer %s", len(files), tokenizer)
        partials = [scan_group(files, ctx, threads=threads)]
    result = merge_partials(partials, ctx, threads=threads)
    if not result.docs:
        raise CapatlasError(
            f"no document passed the filters (min_tokens={config['manifest']['min_tokens']}, "
            f"{result.counts['distinct']} distinct texts): nothing to sample"
        )
    write_manifest(
        result,
        args.out,
        config=config,
        tokenizer=tokenizer,
        extra={"labels_dir": args.labels_dir} if args.labels_dir else None,
    )
    counts = result.counts
    log.info(
        "%d records, %d duplicates, %d filtered, %d sampled into %d bins (%d empty) -> %s",
        counts["records"],
        counts["duplicates"],
        counts["filtered"],
        counts["sampled"],
        counts["bins_nonempty"],
        counts["bins_empty"],
        args.out,
    )

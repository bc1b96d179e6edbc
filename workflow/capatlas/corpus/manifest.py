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
from capatlas.corpus.pool import pool_map
from capatlas.corpus.readers import CorpusRecord, LabelResolver, expand_paths, iter_records, record_location
from capatlas.artifacts.bin_summary import summary_rows
from capatlas.errors import CapatlasError
from capatlas.fileio import atomic_path, file_sha256, write_json, write_parquet, write_text
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
    """What one file contributes to the merge."""

    source_file: str
    n_records: int
    population: np.ndarray  # int64[N_BINS]
    pair_keys: np.ndarray  # uint64, unique (key, category) pairs
    pair_cats: np.ndarray  # uint16, category = 2 * bin_id + passed
    id_hashes: np.ndarray  # uint64, one per record, sorted
    candidates: list[Candidate]
    size: int = 0
    sha256: str = ""


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

    def add(self, doc: Doc) -> None:
        settings = self.settings
        key = doc_key(settings, doc)
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

    def finish(self, size: int = 0, sha256: str = "") -> FileScan:
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
            size=size,
            sha256=sha256,
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


class Merger:
    """Combines `FileScan`s (in any order) into the final sample and counts."""

    def __init__(self, settings: ManifestSettings) -> None:
        self.settings = settings
        self.population = np.zeros(N_BINS, dtype=np.int64)
        self._bins: dict[int, BinCandidates] = {}
        self._files: list[tuple[str, np.ndarray, np.ndarray]] = []  # (file, pair_keys, id_hashes)
        self._pair_keys: list[np.ndarray] = []
        self._pair_cats: list[np.ndarray] = []
        self.inputs: list[dict] = []

    def add(self, scan: FileScan) -> None:
        self.population += scan.population
        for c in scan.candidates:
            holder = self._bins.get(c.bin_id)
            if holder is None:
                holder = self._bins[c.bin_id] = BinCandidates(self.settings.quota, self.settings.dedup)
            holder.offer(c)
        self._files.append((scan.source_file, scan.pair_keys, scan.id_hashes))
        self._pair_keys.append(scan.pair_keys)
        self._pair_cats.append(scan.pair_cats)
        self.inputs.append(
            {"path": scan.source_file, "size": scan.size, "sha256": scan.sha256, "records": scan.n_records}
        )

    def _wanted_keys(self, keys: np.ndarray, cats: np.ndarray, ambiguous: np.ndarray) -> tuple[np.ndarray, set[int]]:
        """Keys to re-read: the ambiguous texts and, under quota, each affected bin's first candidates."""
        settings = self.settings
        if settings.allocation != "quota" or not len(ambiguous):
            return ambiguous, set()
        amb_pass = np.isin(keys, ambiguous) & (cats % 2 == 1)
        amb_bins = {int(b) for b in np.unique(cats[amb_pass] // 2)}
        prefixes = [ambiguous]
        for b in sorted(amb_bins):
            in_bin = keys[cats == 2 * b + 1]  # already sorted, unique within the category
            a_b = int(np.isin(in_bin, ambiguous).sum())
            prefixes.append(in_bin[: settings.docs_per_bin + a_b])
        return np.unique(np.concatenate(prefixes)), amb_bins

    def _resolve_copies(self, wanted, dup_ids, ambiguous, rescan: Rescan) -> tuple[list[Candidate], int]:
        """Re-read the files holding `wanted` keys or repeated ids; the wanted candidates and the file count."""
        if not (len(wanted) or len(dup_ids)):
            return [], 0
        requests = {}
        for path, file_keys, file_ids in self._files:
            w = wanted[np.isin(wanted, file_keys)] if len(wanted) else wanted
            d = dup_ids[np.isin(dup_ids, file_ids)] if len(dup_ids) else dup_ids
            if len(w) or len(d):
                requests[path] = (w, d)
        log.info(
            "%d texts have copies that disagree on bin or filter and %d doc ids repeat: "
            "re-reading %d files to resolve them",
            len(ambiguous),
            len(dup_ids),
            len(requests),
        )
        docs = rescan(requests)
        _check_duplicate_ids(docs, dup_ids, self.settings.dedup)
        wanted_set = set(int(k) for k in wanted)
        return [c for c in (candidate(self.settings, d) for d in docs) if c.key in wanted_set], len(requests)

    def finish(self, rescan: Rescan) -> ManifestResult:
        settings = self.settings
        if int(self.population.sum()) == 0:
            raise CapatlasError("the corpus is empty: no records in " + _describe_files([f for f, _, _ in self._files]))
        keys, cats = _unique_pairs(
            np.concatenate(self._pair_keys) if self._pair_keys else np.zeros(0, np.uint64),
            np.concatenate(self._pair_cats) if self._pair_cats else np.zeros(0, np.uint16),
        )
        self._pair_keys = self._pair_cats = []
        repeated = np.zeros(len(keys), dtype=bool)
        repeated[1:] = keys[1:] == keys[:-1]
        ambiguous = np.unique(keys[repeated])  # copies disagreeing on bin or filter
        single = ~np.isin(keys, ambiguous)
        per_cat = np.bincount(cats[single].astype(np.int64), minlength=2 * N_BINS)
        after_dedup = per_cat[0::2] + per_cat[1::2]
        after_filter = per_cat[1::2].copy()

        ids = np.sort(np.concatenate([h for _, _, h in self._files])) if self._files else np.zeros(0, np.uint64)
        dup_ids = np.unique(ids[1:][ids[1:] == ids[:-1]])
        del ids

        wanted, amb_bins = self._wanted_keys(keys, cats, ambiguous)
        del keys, cats
        copies, rescanned = self._resolve_copies(wanted, dup_ids, ambiguous, rescan)

        ambiguous_set = set(int(k) for k in ambiguous)
        owners = dedup_owners((c for c in copies if c.key in ambiguous_set or c.bin_id in amb_bins), settings.dedup)
        for c in owners.values():
            if c.key in ambiguous_set:
                after_dedup[c.bin_id] += 1
                if c.n_tokens >= settings.min_tokens:
                    after_filter[c.bin_id] += 1

        pool: list[Candidate] = []
        for b, holder in self._bins.items():
            if b in amb_bins:
                continue
            pool.extend(c for c in holder.values() if c.key not in ambiguous_set)
        passing = [c for c in owners.values() if c.n_tokens >= settings.min_tokens]
        if settings.allocation == "quota":
            pool.extend(c for c in passing if c.bin_id in amb_bins)
        else:
            pool.extend(c for c in passing if c.key in ambiguous_set)
        chosen = select(pool, settings.allocation, docs_per_bin=settings.docs_per_bin, fraction=settings.fraction)
        sampled = np.bincount(np.array([c.bin_id for c in chosen], dtype=np.int64), minlength=N_BINS).astype(np.int64)
        return ManifestResult(
            docs=chosen,
            population=self.population.copy(),
            after_dedup=after_dedup.astype(np.int64),
            after_filter=after_filter.astype(np.int64),
            sampled=sampled,
            inputs=sorted(self.inputs, key=lambda i: i["path"]),
            rescanned_files=rescanned,
        )


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


def build_manifest_from_docs(docs_by_file: Mapping[str, Sequence[Doc]], settings: ManifestSettings) -> ManifestResult:
    """The whole sampling rule on in-memory documents (one Scanner per 'file')."""
    merger = Merger(settings)
    for name, docs in docs_by_file.items():
        scanner = Scanner(settings, name)
        for doc in docs:
            scanner.add(doc._replace(source_file=doc.source_file or name))
        merger.add(scanner.finish())

    def rescan(requests: dict[str, tuple[np.ndarray, np.ndarray]]) -> list[Doc]:
        out = []
        for name, (keys, ids) in requests.items():
            k, i = set(int(x) for x in keys), set(int(x) for x in ids)
            for doc in docs_by_file[name]:
                doc = doc._replace(source_file=doc.source_file or name)
                if doc_key(settings, doc) in k or doc_id_hash(doc.doc_id) in i:
                    out.append(doc)
        return out

    return merger.finish(rescan)


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

    def resolver(self) -> LabelResolver:
        return LabelResolver(self.labels, labels_files=self.labels_files, labels_dir=self.labels_dir)

    def columns(self) -> list[str]:
        return [self.id_field, self.text_field, *self.resolver().record_fields]


def _read_docs(
    path: str, ctx: ScanContext, *, keep: Callable[[CorpusRecord, str], bool] | None = None, hasher: Any = None
) -> Iterable[Doc]:
    """Label, hash and tokenise the records of one file (those `keep` accepts), in batches."""
    labeler = ctx.resolver().for_file(path)
    counter = token_counter(ctx.tokenizer)
    pending: list[tuple[CorpusRecord, int, int, str]] = []
    n_records = 0

    def flush() -> list[Doc]:
        counts = counter.count([rec.text for rec, _, _, _ in pending])
        docs = [
            Doc(rec.doc_id, t, f, n, sha, path, rec.row) for (rec, t, f, sha), n in zip(pending, counts, strict=True)
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
        topic, format_ = labeler(rec)
        pending.append((rec, topic, format_, sha))
        if len(pending) >= TOKENIZE_BATCH:
            yield from flush()
    if pending:
        yield from flush()
    if keep is None:
        labeler.finish(n_records)


def scan_file(task: tuple[str, ScanContext]) -> FileScan:
    """Map step: one pass over one file."""
    path, ctx = task
    hasher = hashlib.sha256()
    scanner = Scanner(ctx.settings, path)
    for doc in _read_docs(path, ctx, hasher=hasher):
        scanner.add(doc)
    return scanner.finish(size=os.path.getsize(path), sha256=hasher.hexdigest())


def collect_file(task: tuple[str, ScanContext, np.ndarray, np.ndarray]) -> list[Doc]:
    """Second-pass step: the copies in one file whose key or doc-id hash is wanted."""
    path, ctx, keys, ids = task
    settings = ctx.settings
    key_set, id_set = set(int(k) for k in keys), set(int(i) for i in ids)

    def keep(rec: CorpusRecord, sha: str) -> bool:
        ident = sha if settings.dedup else rec.doc_id
        return sampling_key(settings.seed, ident) in key_set or doc_id_hash(rec.doc_id) in id_set

    return list(_read_docs(path, ctx, keep=keep))


def build_manifest(
    files: Sequence[str],
    config: Mapping[str, Any],
    *,
    tokenizer: str,
    labels_dir: str | None = None,
    labels_files: Mapping[str, str] | None = None,
    threads: int | None = None,
) -> ManifestResult:
    """Scan `files` (map, in parallel), merge, and resolve rare ambiguities with a targeted second pass."""
    settings = ManifestSettings.from_config(config)
    ctx = ScanContext(
        settings=settings,
        labels={k: dict(v) for k, v in config["corpus"]["labels"].items()},
        id_field=config["corpus"]["id_field"],
        text_field=config["corpus"]["text_field"],
        tokenizer=tokenizer,
        labels_files=dict(labels_files) if labels_files else None,
        labels_dir=labels_dir,
    )
    resolver = ctx.resolver()
    if resolver.classifier_facets and labels_dir is None and not labels_files:
        raise CapatlasError(
            f"corpus.labels.{resolver.classifier_facets[0]}.source is 'classifier': pass --labels-dir "
            "with the parquet files written by `capatlas labels`"
        )
    token_counter(tokenizer)  # fail early, before any worker starts
    threads = int(config["manifest"]["threads"] if threads is None else threads)
    merger = Merger(settings)
    for scan in pool_map(scan_file, [(path, ctx) for path in files], threads, "manifest scan"):
        merger.add(scan)

    def rescan(requests: dict[str, tuple[np.ndarray, np.ndarray]]) -> list[Doc]:
        tasks = [(path, ctx, keys, ids) for path, (keys, ids) in sorted(requests.items())]
        return [doc for docs in pool_map(collect_file, tasks, threads, "manifest rescan") for doc in docs]

    return merger.finish(rescan)


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
            "manifest": dict(config["manifest"]),
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
        "--labels-dir", default=None, help="directory of labels/<file-key>.parquet from `capatlas labels`"
    )
    parser.add_argument(
        "--tokenizer", default=None, help="tokenizer directory (default: models.tokenizer, else models.document.path)"
    )
    parser.add_argument("--threads", type=int, default=None, help="processes (default: manifest.threads)")


def run(args: argparse.Namespace, config: dict | None) -> None:
    globs = args.files or config["corpus"]["paths"]
    if not globs:
        raise CapatlasError("no corpus files: pass --files or set config key 'corpus.paths'")
    files = expand_paths(globs)
    tokenizer = resolve_tokenizer(config, args.tokenizer)
    log.info("manifest over %d files with tokenizer %s", len(files), tokenizer)
    result = build_manifest(files, config, tokenizer=tokenizer, labels_dir=args.labels_dir, threads=args.threads)
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

"""Lazy labels: a manifest scan that runs the WebOrganizer classifier only where the sample needs it.

A document can be sampled only if its key is among the smallest of its
bin. Where a facet comes from a classifier, the group's records are split
into streams by what is already known (the topic from the Dolma path or a
field, else the format, else one stream), and each stream is classified in
ascending key order, in rounds of doubling size, until every bin the
stream can fill holds ``docs_per_bin`` passing texts (later records have
larger keys and cannot enter) or the stream is exhausted. The candidates
are then exactly those that classifying every record would give.

Records left unclassified keep a category "stream s, format unknown"
(`unknown_category`) in the partial, so the merge (`capatlas.corpus.manifest.Merge`)
can (a) classify any copy of a text whose other copies were classified
(dedup needs every copy's bin), (b) check that no unclassified record could
have entered a bin's final sample, classifying any that could, and
(c) estimate bin-level counts of the unclassified records from the
classified ones (the smallest keys of a stream are a uniform sample of it).

Pass 0 reads every record once (key, doc-id hash, known labels, and the
min-token filter decided on a bounded head); each round re-reads the
group's files and classifies only the round's rows. Reading is two to three
orders of magnitude cheaper than classifying, so the rounds cost little.
"""

from __future__ import annotations

import hashlib
import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from capatlas.corpus.labels import classifier_input, classify_texts, load_classifier
from capatlas.corpus.readers import iter_records
from capatlas.devices import resolve_device
from capatlas.errors import CapatlasError
from capatlas.taxonomy import N_BINS, N_FORMATS

log = logging.getLogger(__name__)

# Categories beyond the labelled ones (2 * bin + passed): 2 * stream + passed, offset by this.
UNKNOWN_BASE = 2 * N_BINS
# Streams: the topic (0-23) when it is known, else 24 + the format, else 48 (one stream).
N_STREAMS = 49


def stream_of(topic: int, format_: int) -> int:
    if topic >= 0:
        return topic
    if format_ >= 0:
        return N_FORMATS + format_
    return 2 * N_FORMATS


def stream_bins(stream: int) -> list[int]:
    """The bins a stream's records can fall into."""
    if stream < N_FORMATS:
        return [stream * N_FORMATS + f for f in range(N_FORMATS)]
    if stream < 2 * N_FORMATS:
        return [t * N_FORMATS + (stream - N_FORMATS) for t in range(N_FORMATS)]
    return list(range(N_BINS))


def unknown_category(stream: int, passed: bool) -> int:
    return UNKNOWN_BASE + 2 * stream + int(passed)


def is_unknown(cats: np.ndarray) -> np.ndarray:
    return cats >= UNKNOWN_BASE


@dataclass
class FileIndex:
    """Pass 0 of one file: one entry per record."""

    path: str
    keys: np.ndarray  # uint64
    id_hashes: np.ndarray  # uint64
    topics: np.ndarray  # int16, -1 where a classifier decides
    formats: np.ndarray  # int16, -1 where a classifier decides
    passed: np.ndarray  # bool, the min-token filter
    identity: dict = field(default_factory=dict)


class Classifier:
    """The configured classifier facets, loaded once per process."""

    def __init__(self, corpus: Mapping[str, Any], facets: Sequence[str]):
        settings = corpus["classifier"]
        self.settings = settings
        self.facets = list(facets)
        device = resolve_device(settings["device"], key="corpus.classifier.device")
        self.models = {
            facet: load_classifier(
                corpus["labels"][facet]["model"],
                trust_remote_code=settings["trust_remote_code"],
                device=device,
                precision=settings["precision"],
            )
            for facet in self.facets
        }
        self.n_classified = 0

    def classify(self, records: Sequence[Any]) -> dict[str, np.ndarray]:
        """facet -> class ids of `records` (CorpusRecords), in order."""
        texts = [classifier_input(self.settings["input_template"], rec) for rec in records]
        self.n_classified += len(texts)
        return {
            facet: classify_texts(model, tokenizer, texts, self.settings["batch_size"], self.settings["max_length"])[0]
            for facet, (model, tokenizer) in self.models.items()
        }


_CLASSIFIERS: dict[str, Classifier] = {}


def classifier_for(corpus: Mapping[str, Any], facets: Sequence[str]) -> Classifier:
    key = repr((sorted((f, corpus["labels"][f]["model"]) for f in facets), sorted(corpus["classifier"].items())))
    found = _CLASSIFIERS.get(key)
    if found is None:
        found = _CLASSIFIERS[key] = Classifier(corpus, facets)
    return found


def known_label(labeler: Any, facet: str, rec: Any, classified: Sequence[str]) -> int:
    return -1 if facet in classified else labeler.facet(facet, rec)


def index_file(task: tuple[str, Any]) -> FileIndex:
    """Pass 0 (a pool worker): keys, id hashes, the labels that need no classifier, and the filter."""
    from capatlas.corpus import manifest as m

    path, ctx = task
    settings = ctx.settings
    facets = ctx.resolver().classifier_facets
    labeler = ctx.resolver().for_file(path, skip=facets)
    counter = m.token_counter(ctx.tokenizer)
    keys, ids, topics, formats, texts = [], [], [], [], []
    passed: list[bool] = []
    hasher = hashlib.sha256() if ctx.input_hash == "full" else None
    n = 0
    for rec in iter_records(path, id_field=ctx.id_field, text_field=ctx.text_field, columns=ctx.columns(), hasher=hasher):
        n += 1
        sha = m.text_sha256(rec.text)
        keys.append(m.sampling_key(settings.seed, sha if settings.dedup else rec.doc_id))
        ids.append(m.doc_id_hash(rec.doc_id))
        topics.append(known_label(labeler, "topic", rec, facets))
        formats.append(known_label(labeler, "format", rec, facets))
        texts.append(rec.text)
        if len(texts) >= m.TOKENIZE_BATCH:
            passed.extend(c >= settings.min_tokens for c in m.decision_counts(counter, texts, settings.min_tokens))
            texts.clear()
    passed.extend(c >= settings.min_tokens for c in m.decision_counts(counter, texts, settings.min_tokens))
    labeler.finish(n)
    return FileIndex(
        path=path,
        keys=np.array(keys, dtype=np.uint64),
        id_hashes=np.array(ids, dtype=np.uint64),
        topics=np.array(topics, dtype=np.int16),
        formats=np.array(formats, dtype=np.int16),
        passed=np.array(passed, dtype=bool),
        identity=m.file_identity(path, hasher),
    )


class LazyGroupScan:
    """Classify one group's streams in ascending key order until every bin is decided; then its partial."""

    def __init__(self, files: Sequence[str], ctx: Any, *, threads: int, group: str) -> None:
        from capatlas.corpus import manifest as m
        from capatlas.corpus.pool import pool_map

        self.m = m
        self.ctx = ctx
        self.group = group
        self.settings = ctx.settings
        self.facets = ctx.resolver().classifier_facets
        classifier_for(ctx.corpus, self.facets)  # a missing or wrong model fails before any file is read
        self.index = sorted(pool_map(index_file, [(p, ctx) for p in files], threads, f"manifest index {group}"), key=lambda f: f.path)
        self.offsets = np.cumsum([0] + [len(f.keys) for f in self.index])
        self.keys = np.concatenate([f.keys for f in self.index] or [np.zeros(0, np.uint64)])
        topics = np.concatenate([f.topics for f in self.index] or [np.zeros(0, np.int16)])
        formats = np.concatenate([f.formats for f in self.index] or [np.zeros(0, np.int16)])
        self.passed = np.concatenate([f.passed for f in self.index] or [np.zeros(0, bool)])
        # stream_of, vectorised: the topic if known, else 24 + the format if known, else 48.
        self.streams = np.where(
            topics >= 0, topics, np.where(formats >= 0, N_FORMATS + formats, 2 * N_FORMATS)
        ).astype(np.int16)
        self.bins = np.full(len(self.keys), -1, dtype=np.int32)  # set once classified
        self.holders: dict[int, Any] = {}
        self.thresholds: dict[int, int | None] = {}  # stream -> largest classified key (None: all classified)

    def _decided(self, stream: int) -> bool:
        quota = self.settings.quota
        return all(
            (holder := self.holders.get(b)) is not None and len(holder.items) >= quota for b in stream_bins(stream)
        )

    def _rounds(self):
        """Yield, round by round, the record numbers to classify; record each stream's threshold at the end."""
        settings = self.settings
        plan: dict[int, np.ndarray] = {}
        for s in np.unique(self.streams).tolist():
            members = np.flatnonzero(self.streams == s)
            plan[s] = members[np.argsort(self.keys[members], kind="stable")]
        done = {s: 0 for s in plan}
        if settings.allocation == "proportional":
            # Only keys below the sampling threshold can be sampled: one round.
            for s, order in plan.items():
                done[s] = int(np.searchsorted(self.keys[order], np.uint64(min(settings.threshold, (1 << 64) - 1))))
            yield np.concatenate([order[: done[s]] for s, order in plan.items()] or [np.zeros(0, np.int64)])
        else:
            step = {s: max(64, len(stream_bins(s)) * settings.docs_per_bin) for s in plan}
            while True:
                batch = []
                for s, order in plan.items():
                    if done[s] >= len(order) or (done[s] and self._decided(s)):
                        continue
                    batch.append(order[done[s] : done[s] + step[s]])
                    done[s] = min(len(order), done[s] + step[s])
                    step[s] *= 2
                if not batch:
                    break
                yield np.concatenate(batch)
        for s, order in plan.items():
            self.thresholds[s] = None if done[s] >= len(order) else (int(self.keys[order[done[s] - 1]]) if done[s] else -1)

    def _classify(self, chosen: np.ndarray) -> None:
        """Classify the chosen records (file by file), count tokens where they could be candidates, offer them."""
        m, ctx = self.m, self.ctx
        counter = m.token_counter(ctx.tokenizer)
        chosen = np.sort(chosen)
        file_of = np.searchsorted(self.offsets, chosen, side="right") - 1
        for fi in np.unique(file_of).tolist():
            wanted = set((chosen[file_of == fi] - self.offsets[fi]).tolist())
            path = self.index[fi].path
            labeler = ctx.resolver().for_file(path, skip=self.facets)
            batch: list = []
            for rec in iter_records(path, id_field=ctx.id_field, text_field=ctx.text_field, columns=ctx.columns()):
                if rec.row in wanted:
                    batch.append(rec)
                    if len(batch) >= ctx.corpus["classifier"]["batch_size"] * 16:
                        self._offer(batch, fi, labeler, counter)
                        batch = []
            if batch:
                self._offer(batch, fi, labeler, counter)

    def _offer(self, records, fi, labeler, counter) -> None:
        m, settings = self.m, self.settings
        docs = []
        for rec, (topic, format_) in zip(records, classify_records(self.ctx, records, labeler), strict=True):
            g = int(self.offsets[fi]) + rec.row
            bin_ = topic * N_FORMATS + format_
            self.bins[g] = bin_
            if not self.passed[g]:
                continue
            holder = self.holders.get(bin_)
            key = int(self.keys[g])
            if holder is not None and holder.bound is not None and key > holder.bound[0]:
                continue
            docs.append((g, rec, topic, format_, key))
        counts = counter.count([rec.text for _, rec, _, _, _ in docs])
        for (g, rec, topic, format_, key), n in zip(docs, counts, strict=True):
            if n < settings.min_tokens:
                # The head decided "passes"; a whole-text count below the limit would contradict it.
                raise CapatlasError(f"{rec.where}: token count {n} contradicts its head's count (tokenizer not prefix-monotone)")
            doc = m.Doc(rec.doc_id, topic, format_, n, m.text_sha256(rec.text), self.index[fi].path, rec.row)
            holder = self.holders.get(doc.bin_id)
            if holder is None:
                holder = self.holders[doc.bin_id] = m.BinCandidates(settings.quota, settings.dedup)
            holder.offer(m.candidate(settings, doc, key))

    def run(self):
        """The group's partial."""
        from tqdm import tqdm

        m = self.m
        progress = tqdm(total=len(self.keys), desc=f"classify {self.group}", unit="doc", file=sys.stderr, mininterval=5)
        for chosen in self._rounds():
            self._classify(chosen)
            progress.update(len(chosen))
        progress.close()
        classified = self.bins >= 0
        cats = np.where(
            classified,
            2 * self.bins + self.passed,
            UNKNOWN_BASE + 2 * self.streams.astype(np.int64) + self.passed,
        ).astype(np.uint16)
        scans = []
        for fi, index in enumerate(self.index):
            a, b = int(self.offsets[fi]), int(self.offsets[fi + 1])
            keys, file_cats = m._unique_pairs(self.keys[a:b].copy(), cats[a:b].copy())
            population = np.bincount(self.bins[a:b][classified[a:b]], minlength=N_BINS).astype(np.int64)
            scans.append(
                m.FileScan(
                    source_file=index.path,
                    n_records=b - a,
                    population=population,
                    pair_keys=keys,
                    pair_cats=file_cats,
                    id_hashes=np.sort(index.id_hashes),
                    candidates=[],
                    identity=index.identity,
                )
            )
        streams = {}
        for s in np.unique(self.streams).tolist():
            members = self.streams == s
            streams[str(s)] = {
                "records": int(members.sum()),
                "classified": int((members & classified).sum()),
                "threshold": self.thresholds.get(s),
            }
        partial = m.group_partial(scans, self.settings, group=self.group, settings_digest=self.ctx.digest())
        partial.candidates = m.candidates_table([c for h in self.holders.values() for c in h.values()])
        partial.classified = streams
        log.info(
            "group %s: classified %d of %d records (%.1f%%)",
            self.group,
            int(classified.sum()),
            len(self.keys),
            100.0 * classified.sum() / max(1, len(self.keys)),
        )
        return partial


def classify_records(ctx: Any, records: Sequence[Any], labeler: Any) -> list[tuple[int, int]]:
    """(topic, format) of one file's records: the classifier facets classified, the others from `labeler`
    (the file's label sources, built with the classifier facets skipped)."""
    if not records:
        return []
    labels = classifier_for(ctx.corpus, ctx.resolver().classifier_facets).classify(records)
    return [
        (
            int(labels["topic"][i]) if "topic" in labels else labeler.facet("topic", rec),
            int(labels["format"][i]) if "format" in labels else labeler.facet("format", rec),
        )
        for i, rec in enumerate(records)
    ]

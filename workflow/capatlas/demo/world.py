"""`capatlas demo-world`: a synthetic labelled corpus with planted capabilities.

The demo world stands in for Dolma 3 + the four benchmarks at laptop scale,
with a known answer. Every one of the 576 WebOrganizer bins gets documents
whose words follow its topic and whose layout follows its format. For each
of four demo benchmarks (the study's 2 x 2: social/STEM x reasoning/
knowledge) a few bins are *planted*: only their documents state the facts
or patterns that the benchmark's correct answers depend on. Attribution
should find those bins, and unlearning them should hurt that benchmark.

Output (written atomically as one directory)::

    corpus/part-0000.jsonl.zst ...        Dolma-style records, labels in metadata.weborganizer
    benchmarks/social_i_qa/validation.jsonl          SocialIQA schema
    benchmarks/mmlu/test.jsonl, dev.jsonl            MMLU schema (both MMLU benchmarks, by subject)
    benchmarks/ai2_arc/ARC-Challenge/test.jsonl      ARC schema
    ground_truth.json                     planted bins, facts, items, corpus counts
    world.json                            the config that made it

The same config (and seed) gives byte-identical output.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capatlas.command import Command
from capatlas.demo import text
from capatlas.errors import CapatlasError
from capatlas.fileio import atomic_path
from capatlas.taxonomy import FORMAT, FORMAT_SLUGS, N_BINS, N_FORMATS, TOPIC, TOPIC_SLUGS, bin_id, split_bin

log = logging.getLogger(__name__)

COMMAND = Command(config_help="capatlas config YAML (uses keys seed and demo)")

# Fact sentences per planted document; with planted_docs_per_bin x bins of
# them per benchmark, each fact or pattern recurs often enough for a tiny
# model to learn it.
SENTENCES_PER_PLANTED_DOC = 16
# Share of a planted document's units that are worked examples (a benchmark
# item with its answer) rather than a statement of the fact. Statements alone
# left the reasoning benchmarks' planted bins within the filler's spread on
# some seeds (docs/DESIGN.md, "The demo world"): the tiny model learns the
# answer from either, but a worked example's gradient shares the item's own
# tokens and so aligns with its query.
WORKED_EXAMPLE_SHARE = 0.75
FILLER_PER_PLANTED_DOC = 2
# Items per reasoning pattern (SocialIQA, ARC). With items held out of
# attribution (item_roles held_out), a pattern's evaluation items are
# reached through its query items: six per pattern leave about three on
# each side, so every pattern has both; and fewer patterns recur more often
# in the planted documents (docs/DESIGN.md, "The demo world").
ITEMS_PER_PATTERN = 6
# Draws of a reasoning item's names and setting before a repeat of an
# earlier item's prompt is refused (two items with one text could land on
# both sides of the query/evaluation split).
ITEM_DRAWS = 50
DOC_WORDS = (60, 150)
MMLU_DEV_PER_SUBJECT = 5
ZSTD_LEVEL = 9
# Every this-many-th ARC item uses numeric choice labels, as some real ones do.
ARC_NUMERIC_EVERY = 6

CORPUS_DIR = "corpus"
SOCIALIQA_FILE = "benchmarks/social_i_qa/validation.jsonl"
MMLU_TEST_FILE = "benchmarks/mmlu/test.jsonl"
MMLU_DEV_FILE = "benchmarks/mmlu/dev.jsonl"
ARC_FILE = "benchmarks/ai2_arc/ARC-Challenge/test.jsonl"


@dataclass(frozen=True)
class DemoBenchmark:
    name: str
    domain: str
    capability: str
    kind: str  # "social", "physical" or "knowledge": how facts and items are made
    items_file: str
    topics: tuple[str, ...]  # where planted bins are drawn from, first choice
    formats: tuple[str, ...]
    relations: tuple[text.Relation, ...] = ()

    @property
    def n_choices(self) -> int:
        return 3 if self.kind == "social" else 4


DEMO_BENCHMARKS: tuple[DemoBenchmark, ...] = (
    DemoBenchmark(
        "socialiqa", "social", "reasoning", "social", SOCIALIQA_FILE,
        ("social_life", "literature", "entertainment"),
        ("creative_writing", "comment_section", "customer_support", "personal_blog"),
    ),
    DemoBenchmark(
        "mmlu_social_sciences", "social", "knowledge", "knowledge", MMLU_TEST_FILE,
        ("politics", "education_and_jobs", "finance_and_business", "history_and_geography"),
        ("knowledge_article", "academic_writing", "news_article"),
        text.SOCIAL_RELATIONS,
    ),
    DemoBenchmark(
        "arc_challenge", "stem", "reasoning", "physical", ARC_FILE,
        ("science_math_and_technology", "electronics_and_hardware", "health"),
        ("tutorial", "q_a_forum", "faq"),
    ),
    DemoBenchmark(
        "mmlu_stem", "stem", "knowledge", "knowledge", MMLU_TEST_FILE,
        ("science_math_and_technology", "health", "software_development"),
        ("academic_writing", "knowledge_article", "documentation"),
        text.STEM_RELATIONS,
    ),
)


# ------------------------------------------------------------------ helpers


def _stream(seed: int, *purpose: object) -> random.Random:
    # String seeds are hashed with SHA-512 by `random`, so each purpose gets an
    # independent stream that does not depend on PYTHONHASHSEED or call order.
    return random.Random(":".join(str(p) for p in (seed, *purpose)))


def _digest(*parts: object) -> str:
    return hashlib.sha256(":".join(str(p) for p in parts).encode()).hexdigest()


def _balanced_positions(rng: random.Random, n_items: int, n_choices: int) -> list[int]:
    positions = [i % n_choices for i in range(n_items)]
    rng.shuffle(positions)
    return positions


def _place(correct: str, distractors: Sequence[str], position: int) -> list[str]:
    choices = list(distractors)
    choices.insert(position, correct)
    return choices


def _cycle(rng: random.Random, units: Sequence[Any]) -> Iterator[Any]:
    """Endless sequence of fresh permutations, so every unit recurs equally often."""
    while True:
        order = list(units)
        rng.shuffle(order)
        yield from order


def _dumps(obj: object) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


# --------------------------------------------------------------- planted bins


def choose_planted_bins(seed: int, per_benchmark: int) -> dict[str, list[int]]:
    """Planted bins per benchmark: disjoint, thematic first, deterministic in the seed."""
    rng = _stream(seed, "planted-bins")
    used: set[int] = set()
    planted: dict[str, list[int]] = {}
    for bench in DEMO_BENCHMARKS:
        primary = sorted(
            bin_id(TOPIC.resolve(t), FORMAT.resolve(f)) for t in bench.topics for f in bench.formats
        )
        # Beyond the thematic cells: the benchmark's topics in any format, then anything.
        secondary = sorted(bin_id(TOPIC.resolve(t), f) for t in bench.topics for f in range(N_FORMATS))
        chosen: list[int] = []
        for pool in (primary, secondary, list(range(N_BINS))):
            free = [b for b in pool if b not in used and b not in chosen]
            take = min(per_benchmark - len(chosen), len(free))
            chosen += rng.sample(free, take)
            if len(chosen) == per_benchmark:
                break
        used.update(chosen)
        planted[bench.name] = sorted(chosen)
    return planted


# -------------------------------------------------------- facts and patterns


def _pseudo_words(rng: random.Random, n: int, taken: set[str]) -> list[str]:
    forbidden = text.filler_words() | {w.lower() for w in text.SOCIAL_DOC_NAMES}
    words: list[str] = []
    while len(words) < n:
        # Two syllables: short enough to become one or two BPE tokens.
        word = text.pseudo_word(rng, 2)
        if word.lower() in forbidden or word in taken:
            continue
        taken.add(word)
        words.append(word)
    return words


def _make_facts(bench: DemoBenchmark, seed: int, n_items: int, taken: set[str]) -> list[dict]:
    rng = _stream(seed, "facts", bench.name)
    if bench.kind == "social":
        # Each pattern is tested by ITEMS_PER_PATTERN items with new names and settings.
        n = min(len(text.SOCIAL_PATTERNS), max(bench.n_choices, math.ceil(n_items / ITEMS_PER_PATTERN)))
        chosen = rng.sample(text.SOCIAL_PATTERNS, n)
        return [
            {
                "id": f"{bench.name}-{i:02d}",
                "action": p.action,
                "answer": p.reaction,
                "pattern": f"When <person> {p.action}, <person> felt {p.reaction}.",
            }
            for i, p in enumerate(chosen)
        ]
    if bench.kind == "physical":
        n = min(len(text.PHYSICAL_RULES), max(bench.n_choices, math.ceil(n_items / ITEMS_PER_PATTERN)))
        chosen = rng.sample(text.PHYSICAL_RULES, n)
        return [
            {
                "id": f"{bench.name}-{i:02d}",
                "material": r.material,
                "cause": r.passive,
                "answer": r.outcome,
                "pattern": f"When the {r.material} {r.passive}, it {r.outcome}.",
            }
            for i, r in enumerate(chosen)
        ]
    # Knowledge: each fact is asked in every phrasing of its relation (four), so
    # with items held out a fact's evaluation items ask what its query items
    # ask in other words; four facts per relation at least, so every question
    # has three same-kind distractors.
    phrasings = min(len(r.questions) for r in bench.relations)
    per_relation = max(bench.n_choices, math.ceil(n_items / (phrasings * len(bench.relations))))
    facts = []
    for relation in bench.relations:
        entities = _pseudo_words(rng, per_relation, taken)
        attributes = _pseudo_words(rng, per_relation, taken)
        for entity, attribute in zip(entities, attributes):
            facts.append(
                {
                    "id": f"{bench.name}-{len(facts):02d}",
                    "subject": relation.subject,
                    "entity": entity,
                    "answer": attribute,
                    "statement": relation.statements[0].format(e=entity, a=attribute),
                    "questions": [q.format(e=entity) for q in relation.questions],
                }
            )
    return facts


def _relation(bench: DemoBenchmark, subject: str) -> text.Relation:
    return next(r for r in bench.relations if r.subject == subject)


def fact_sentence(bench: DemoBenchmark, fact: dict, rng: random.Random) -> str:
    """One planted sentence stating `fact`, in a randomly chosen phrasing."""
    if bench.kind == "social":
        name = rng.choice(text.SOCIAL_DOC_NAMES)
        frame = rng.choice(text.SOCIAL_DOC_FRAMES)
        return frame.format(
            name=name,
            action=fact["action"],
            reaction=fact["answer"],
            setting=rng.choice(text.SOCIAL_SETTINGS),
            question=rng.choice(text.SOCIAL_QUESTIONS).format(name=name),
        )
    if bench.kind == "physical":
        rule = next(r for r in text.PHYSICAL_RULES if r.material == fact["material"])
        frame = rng.choice(text.ARC_DOC_FRAMES)
        sentence = frame.format(
            m_the=f"the {rule.material}",
            passive=rule.passive,
            active=rule.active.format(m=rule.material),
            agent=rng.choice(text.ARC_AGENTS),
            setting=rng.choice(text.ARC_SETTINGS),
            question=rng.choice(text.ARC_QUESTIONS).format(m=rule.material),
            outcome=rule.outcome,
        )
        return sentence[0].upper() + sentence[1:]
    relation = _relation(bench, fact["subject"])
    # Statements, plus the item's own question followed by its answer, so the
    # planted text reads like prompt + correct completion.
    options = [s.format(e=fact["entity"], a=fact["answer"]) for s in relation.statements]
    options += [f"{q}\nAnswer: {fact['answer']}." for q in fact["questions"]]
    return rng.choice(options)


# --------------------------------------------------------------------- items


def _decoys(bench: DemoBenchmark, seed: int, taken: set[str]) -> list[str]:
    """Answers of the benchmark's kind that no document states (see demo_text.DECOY_REACTIONS)."""
    if bench.kind == "social":
        return list(text.DECOY_REACTIONS)
    if bench.kind == "physical":
        return list(text.DECOY_OUTCOMES)
    return _pseudo_words(_stream(seed, "decoys", bench.name), 16, taken)


def _make_items(bench: DemoBenchmark, facts: list[dict], seed: int, n_items: int, decoys: list[str]) -> list[dict]:
    rng = _stream(seed, "items", bench.name)
    positions = _balanced_positions(rng, n_items, bench.n_choices)
    items = []
    prompts: set[str] = set()

    def fresh(draw: Callable[[], tuple[str, ...]]) -> tuple[str, ...]:
        for _ in range(ITEM_DRAWS):
            parts = draw()
            if " ".join(parts) not in prompts:
                prompts.add(" ".join(parts))
                return parts
        raise CapatlasError(
            f"demo benchmark {bench.name}: no new item text in {ITEM_DRAWS} draws; lower demo.items_per_benchmark"
        )

    for i in range(n_items):
        fact = facts[i % len(facts)]
        choices = _place(fact["answer"], rng.sample(decoys, bench.n_choices - 1), positions[i])
        if bench.kind == "social":

            def social() -> tuple[str, ...]:
                name = rng.choice(text.SOCIAL_ITEM_NAMES)
                context = f"{name} {fact['action']} {rng.choice(text.SOCIAL_SETTINGS)}."
                return context, rng.choice(text.SOCIAL_QUESTIONS).format(name=name)

            context, question = fresh(social)
            items.append(
                {
                    "context": context,
                    "question": question,
                    "answerA": choices[0],
                    "answerB": choices[1],
                    "answerC": choices[2],
                    "label": str(positions[i] + 1),
                }
            )
        elif bench.kind == "physical":
            rule = next(r for r in text.PHYSICAL_RULES if r.material == fact["material"])

            def physical() -> tuple[str, ...]:
                agent = rng.choice(text.ARC_AGENTS)
                return (
                    f"{agent} {rule.active.format(m=rule.material)} {rng.choice(text.ARC_SETTINGS)}. "
                    + rng.choice(text.ARC_QUESTIONS).format(m=rule.material),
                )

            (question,) = fresh(physical)
            labels = ["1", "2", "3", "4"] if i % ARC_NUMERIC_EVERY == ARC_NUMERIC_EVERY - 1 else ["A", "B", "C", "D"]
            items.append(
                {
                    "id": f"DemoARC_{seed}_{i + 1:04d}",
                    "question": question,
                    "choices": {"text": choices, "label": labels},
                    "answerKey": labels[positions[i]],
                }
            )
        else:
            # Cycle facts first, then phrasings, so both phrasings of a fact are asked.
            phrasing = (i // len(facts)) % len(fact["questions"])
            items.append(
                {
                    "question": fact["questions"][phrasing],
                    "subject": fact["subject"],
                    "choices": choices,
                    "answer": positions[i],
                }
            )
    return items


def _make_mmlu_dev(bench: DemoBenchmark, seed: int, taken: set[str]) -> list[dict]:
    """Few-shot examples per subject, on facts of their own (never planted)."""
    rng = _stream(seed, "mmlu-dev", bench.name)
    items = []
    for relation in bench.relations:
        entities = _pseudo_words(rng, MMLU_DEV_PER_SUBJECT, taken)
        attributes = _pseudo_words(rng, MMLU_DEV_PER_SUBJECT, taken)
        positions = _balanced_positions(rng, MMLU_DEV_PER_SUBJECT, 4)
        for k, (entity, attribute) in enumerate(zip(entities, attributes)):
            distractors = rng.sample([a for a in attributes if a != attribute], 3)
            items.append(
                {
                    "question": relation.questions[0].format(e=entity),
                    "subject": relation.subject,
                    "choices": _place(attribute, distractors, positions[k]),
                    "answer": positions[k],
                }
            )
    return items


# ------------------------------------------------------------------- corpus


@dataclass
class Doc:
    id: str
    bin_id: int
    text: str
    kind: str  # "filler", "planted", "short" or "duplicate"
    benchmark: str | None = None


def _doc_id(seed: int, *parts: object) -> str:
    return "demo-" + _digest(seed, *parts)[:16]


def _render(rng: random.Random, bin_: int, body: Sequence[str]) -> str:
    topic_id, format_id = split_bin(bin_)
    writer = text.Writer(rng, TOPIC_SLUGS[topic_id])
    return text.FORMAT_TEMPLATES[FORMAT_SLUGS[format_id]](writer, body)


def _filler_doc(seed: int, bin_: int, k: int) -> str:
    rng = _stream(seed, "doc", bin_, k)
    topic_id, _ = split_bin(bin_)
    writer = text.Writer(rng, TOPIC_SLUGS[topic_id])
    target = rng.randint(*DOC_WORDS)
    body = writer.sentences(target)
    # Templates add words of their own (titles, "Step 3:", "Q: ..."), more in
    # some formats than others; drop body sentences until the whole fits.
    while True:
        rendered = _render(rng, bin_, body)
        if len(rendered.split()) <= target or len(body) <= 2:
            return rendered
        body = body[:-1]


def _planted_doc(seed: int, bin_: int, k: int, sentences: list[str]) -> str:
    rng = _stream(seed, "doc", bin_, k)
    topic_id, _ = split_bin(bin_)
    writer = text.Writer(rng, TOPIC_SLUGS[topic_id])
    body = list(sentences)
    for _ in range(FILLER_PER_PLANTED_DOC):
        body.insert(rng.randint(1, len(body)), writer.sentence())
    return _render(rng, bin_, body)


def _bin_sizes(demo: dict, seed: int, planted_bins: set[int]) -> tuple[list[int], list[int]]:
    rng = _stream(seed, "small-bins")
    sizes = [demo["planted_docs_per_bin"] if b in planted_bins else demo["docs_per_bin"] for b in range(N_BINS)]
    candidates = [b for b in range(N_BINS) if b not in planted_bins]
    n_small = min(len(candidates), round(demo["small_bin_fraction"] * N_BINS))
    small = sorted(rng.sample(candidates, n_small))
    for b in small:
        # "Fewer than quota": one or two documents, fewer than a normal bin where possible.
        sizes[b] = max(1, min(rng.choice((1, 2)), demo["docs_per_bin"] - 1))
    return sizes, small


def item_prompt(bench: DemoBenchmark, item: dict) -> str:
    if bench.kind == "social":
        return f"{item['context']} {item['question']}"
    return item["question"]


def item_answer(bench: DemoBenchmark, item: dict) -> str:
    if bench.kind == "social":
        return item["answer" + "ABC"[int(item["label"]) - 1]]
    if bench.kind == "physical":
        return item["choices"]["text"][item["choices"]["label"].index(item["answerKey"])]
    return item["choices"][item["answer"]]


def _planted_unit(bench: DemoBenchmark, fact: dict, items: list[dict], rng: random.Random) -> str:
    if rng.random() < WORKED_EXAMPLE_SHARE:
        item = rng.choice(items)
        return f"{item_prompt(bench, item)}\nAnswer: {item_answer(bench, item)}."
    return fact_sentence(bench, fact, rng)


def _make_docs(
    demo: dict,
    seed: int,
    planted: dict[str, list[int]],
    facts: dict[str, list[dict]],
    items: dict[str, list[dict]],
) -> tuple[list[Doc], dict[str, Any]]:
    bench_by_bin = {b: bench for bench in DEMO_BENCHMARKS for b in planted[bench.name]}
    sizes, small_bins = _bin_sizes(demo, seed, set(bench_by_bin))
    fact_streams = {
        bench.name: _cycle(_stream(seed, "fact-order", bench.name), facts[bench.name]) for bench in DEMO_BENCHMARKS
    }
    docs: list[Doc] = []
    for b in range(N_BINS):
        bench = bench_by_bin.get(b)
        for k in range(sizes[b]):
            doc_id = _doc_id(seed, b, k)
            if bench is None:
                docs.append(Doc(doc_id, b, _filler_doc(seed, b, k), "filler"))
                continue
            rng = _stream(seed, "fact-phrasing", b, k)
            units = [next(fact_streams[bench.name]) for _ in range(SENTENCES_PER_PLANTED_DOC)]
            sentences = [_planted_unit(bench, unit, items[bench.name], rng) for unit in units]
            docs.append(Doc(doc_id, b, _planted_doc(seed, b, k, sentences), "planted", bench.name))

    rng = _stream(seed, "shorts-and-duplicates")
    n_base = len(docs)
    # At most one short doc per bin, only in bins with a second doc, so no bin
    # is emptied by the min-token filter.
    short_bins = [b for b in range(N_BINS) if b not in bench_by_bin and sizes[b] >= 2]
    n_short = min(len(short_bins), round(demo["short_fraction"] * n_base))
    first_doc = {}
    for index, doc in enumerate(docs):
        first_doc.setdefault(doc.bin_id, index)
    for b in sorted(rng.sample(short_bins, n_short)):
        doc = docs[first_doc[b] + rng.randrange(sizes[b])]
        doc.text = text.Writer(_stream(seed, "short", doc.id), TOPIC_SLUGS[split_bin(b)[0]]).short_text()
        doc.kind = "short"

    fillers = [doc for doc in docs if doc.kind == "filler"]
    n_dup = min(len(fillers), round(demo["duplicate_fraction"] * n_base))
    for j, original in enumerate(rng.sample(fillers, n_dup)):
        docs.append(Doc(_doc_id(seed, "duplicate", j), original.bin_id, original.text, "duplicate"))

    per_bin = [0] * N_BINS
    for doc in docs:
        per_bin[doc.bin_id] += 1
    counts = {
        "docs": len(docs),
        "unique_texts": len({doc.text for doc in docs}),
        "planted_docs": sum(doc.kind == "planted" for doc in docs),
        "duplicates": n_dup,
        "shorts": n_short,
        "small_bins": small_bins,
        "docs_per_bin": per_bin,
    }
    return docs, counts


def _label_spelling(doc_id: str, facet: Any, idx: int, salt: str) -> str | int:
    # Readers must accept all three spellings the wild uses: slug, display name, id.
    style = int(_digest(doc_id, salt)[:8], 16) % 3
    if style == 0:
        return facet.slug(idx)
    if style == 1:
        return facet.display(idx)
    return idx


def _record(doc: Doc) -> dict:
    topic_id, format_id = split_bin(doc.bin_id)
    return {
        "id": doc.id,
        "text": doc.text,
        "source": "demo",
        "metadata": {
            "weborganizer": {
                "topic": _label_spelling(doc.id, TOPIC, topic_id, "topic"),
                "format": _label_spelling(doc.id, FORMAT, format_id, "format"),
            },
            "url": f"https://{TOPIC_SLUGS[topic_id].replace('_', '-')}.demo.example/{doc.id}",
        },
    }


def _write_corpus_file(path: Path, docs: Sequence[Doc]) -> None:
    import zstandard

    payload = "".join(_dumps(_record(doc)) + "\n" for doc in docs).encode()
    path.write_bytes(zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(payload))


def _write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(_dumps(row) + "\n" for row in rows))


def _write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------------- main


def build_world(config: dict, out_dir: Path) -> dict:
    """Write the demo world for `config` into `out_dir` (atomically); return its ground truth."""
    demo = config["demo"]
    seed = int(config["seed"])
    n_items = int(demo["items_per_benchmark"])
    planted = choose_planted_bins(seed, int(demo["planted_bins_per_benchmark"]))

    taken: set[str] = set()
    facts = {bench.name: _make_facts(bench, seed, n_items, taken) for bench in DEMO_BENCHMARKS}
    decoys = {bench.name: _decoys(bench, seed, taken) for bench in DEMO_BENCHMARKS}
    items = {
        bench.name: _make_items(bench, facts[bench.name], seed, n_items, decoys[bench.name])
        for bench in DEMO_BENCHMARKS
    }
    mmlu_dev = [row for bench in DEMO_BENCHMARKS if bench.kind == "knowledge" for row in _make_mmlu_dev(bench, seed, taken)]
    docs, counts = _make_docs(demo, seed, planted, facts, items)

    files: dict[int, list[Doc]] = {i: [] for i in range(demo["n_files"])}
    for doc in docs:
        # By id hash, not by bin: a reader cannot rely on bins being contiguous.
        files[int(_digest(doc.id)[:8], 16) % demo["n_files"]].append(doc)
    file_names = [f"{CORPUS_DIR}/part-{i:04d}.jsonl.zst" for i in files]

    ground_truth = {
        "seed": seed,
        "benchmarks": {},
        "corpus": {**counts, "files": file_names},
    }
    for bench in DEMO_BENCHMARKS:
        bench_docs = [doc for doc in docs if doc.benchmark == bench.name]
        entry = {
            "name": bench.name,
            "domain": bench.domain,
            "capability": bench.capability,
            "items_file": bench.items_file,
            "n_items": len(items[bench.name]),
            "n_choices": bench.n_choices,
            "planted_bins": [
                {"bin_id": b, "topic": TOPIC_SLUGS[split_bin(b)[0]], "format": FORMAT_SLUGS[split_bin(b)[1]]}
                for b in planted[bench.name]
            ],
            "planted_doc_ids": sorted(doc.id for doc in bench_docs),
            "fact_kind": "pattern" if bench.capability == "reasoning" else "fact",
            "facts": facts[bench.name],
            "decoys": decoys[bench.name],
        }
        if bench.kind == "knowledge":
            entry["subjects"] = [r.subject for r in bench.relations]
        ground_truth["benchmarks"][bench.name] = entry

    mmlu_test = sorted(
        (row for bench in DEMO_BENCHMARKS if bench.kind == "knowledge" for row in items[bench.name]),
        key=lambda row: row["subject"],
    )
    world = {
        "generator": "capatlas.demo.world",
        "seed": seed,
        "demo": {k: v for k, v in demo.items() if k not in ("model", "train")},
        "sentences_per_planted_doc": SENTENCES_PER_PLANTED_DOC,
        "files": file_names,
    }

    with atomic_path(out_dir, directory=True) as tmp:
        (tmp / CORPUS_DIR).mkdir()
        for i, name in enumerate(file_names):
            _write_corpus_file(tmp / name, sorted(files[i], key=lambda doc: doc.id))
        _write_jsonl(tmp / SOCIALIQA_FILE, items["socialiqa"])
        _write_jsonl(tmp / MMLU_TEST_FILE, mmlu_test)
        _write_jsonl(tmp / MMLU_DEV_FILE, sorted(mmlu_dev, key=lambda row: row["subject"]))
        _write_jsonl(tmp / ARC_FILE, items["arc_challenge"])
        _write_json(tmp / "ground_truth.json", ground_truth)
        _write_json(tmp / "world.json", world)
    log.info(
        "demo world: %d docs (%d planted, %d duplicates, %d short) in %d files, %d items per benchmark -> %s",
        counts["docs"], counts["planted_docs"], counts["duplicates"], counts["shorts"],
        len(file_names), n_items, out_dir,
    )
    return ground_truth


def corpus_files(world_dir: Path) -> list[Path]:
    corpus = Path(world_dir) / "corpus"
    if not corpus.is_dir():
        raise CapatlasError(f"demo world {world_dir} has no corpus/ directory (run capatlas demo-world first)")
    files = sorted(corpus.glob("*.jsonl.zst"))
    if not files:
        raise CapatlasError(f"demo world corpus {corpus} holds no *.jsonl.zst files")
    return files


def read_corpus(world_dir: Path) -> list[str]:
    """All document texts, in file order then line order."""
    import zstandard

    texts: list[str] = []
    for path in corpus_files(world_dir):
        try:
            payload = zstandard.ZstdDecompressor().decompress(path.read_bytes())
        except zstandard.ZstdError as exc:
            raise CapatlasError(f"{path} is not a readable zstd file: {exc}") from None
        for line_no, line in enumerate(payload.decode("utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                texts.append(json.loads(line)["text"])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise CapatlasError(f"{path} line {line_no}: not a record with a 'text' field ({exc})") from None
    return texts


def load_ground_truth(world_dir: Path) -> dict:
    path = Path(world_dir) / "ground_truth.json"
    if not path.is_file():
        raise CapatlasError(f"{path} does not exist: is {world_dir} a demo world (capatlas demo-world --out)?")
    return json.loads(path.read_text())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="directory to write the demo world into (replaced as a whole)")


def run(args: argparse.Namespace, config: dict | None) -> None:
    build_world(config, Path(args.out))

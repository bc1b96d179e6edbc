"""Benchmark items: loading (HF hub cache or local files), validation, subsampling, prompts.

A benchmark config entry (see workflow/schemas/config.schema.yaml) names a
loader that knows one dataset schema:

- ``socialiqa``: context, question, answerA..C, label "1".."3"
  (allenai/social_i_qa, lighteval/siqa);
- ``mmlu``: question, subject, choices (4), answer 0..3 or "A".."D" (cais/mmlu);
- ``arc``: id, question, choices {text, label}, answerKey (allenai/ai2_arc);
- ``multiple_choice``: any schema, mapped through ``fields``.

`source` is a local path (a file, a directory of split files in the HF
layouts, or a ``save_to_disk`` directory) or an HF hub id, which is read
from the local cache only when offline. Every item is validated; a bad
one raises a `CapatlasError` naming the benchmark, the item and the reason.

`render` turns an item into a prompt and its answer continuations in the
lm-evaluation-harness or OLMES (RC / MC) format. The same `Rendered` serves
attribution queries (prompt + gold continuation) and multiple-choice
log-likelihood evaluation (prompt + each continuation).
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from capatlas.errors import CapatlasError
from capatlas.settings import Benchmark, ItemRoles

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------
# MMLU subjects and groups (reference/benchmarks.md)

MMLU_SUBJECTS: tuple[str, ...] = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge",
    "college_biology", "college_chemistry", "college_computer_science", "college_mathematics",
    "college_medicine", "college_physics", "computer_security", "conceptual_physics",
    "econometrics", "electrical_engineering", "elementary_mathematics", "formal_logic",
    "global_facts", "high_school_biology", "high_school_chemistry",
    "high_school_computer_science", "high_school_european_history", "high_school_geography",
    "high_school_government_and_politics", "high_school_macroeconomics",
    "high_school_mathematics", "high_school_microeconomics", "high_school_physics",
    "high_school_psychology", "high_school_statistics", "high_school_us_history",
    "high_school_world_history", "human_aging", "human_sexuality", "international_law",
    "jurisprudence", "logical_fallacies", "machine_learning", "management", "marketing",
    "medical_genetics", "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition",
    "philosophy", "prehistory", "professional_accounting", "professional_law",
    "professional_medicine", "professional_psychology", "public_relations",
    "security_studies", "sociology", "us_foreign_policy", "virology", "world_religions",
)  # fmt: skip

_SOCIAL_SCIENCES = (
    "econometrics", "high_school_geography", "high_school_government_and_politics",
    "high_school_macroeconomics", "high_school_microeconomics", "high_school_psychology",
    "human_sexuality", "professional_psychology", "public_relations", "security_studies",
    "sociology", "us_foreign_policy",
)  # fmt: skip

_STEM_HENDRYCKS = (
    "abstract_algebra", "astronomy", "college_biology", "college_chemistry",
    "college_computer_science", "college_mathematics", "college_physics", "computer_security",
    "conceptual_physics", "electrical_engineering", "elementary_mathematics",
    "high_school_biology", "high_school_chemistry", "high_school_computer_science",
    "high_school_mathematics", "high_school_physics", "high_school_statistics",
    "machine_learning",
)  # fmt: skip

# "stem" follows lm-evaluation-harness (19, with anatomy), the grouping the
# reference study's MMLU-STEM count matches; hendrycks/test and OLMES file
# anatomy under "health", available as "stem_hendrycks" (18).
MMLU_GROUPS: dict[str, tuple[str, ...]] = {
    "social_sciences": _SOCIAL_SCIENCES,
    "stem": tuple(sorted(_STEM_HENDRYCKS + ("anatomy",))),
    "stem_hendrycks": _STEM_HENDRYCKS,
}

LOADERS = ("socialiqa", "mmlu", "arc", "multiple_choice")
PROMPT_FORMATS = ("olmes_rc", "olmes_mc", "lm_eval")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


def resolve_subjects(
    value: str | Sequence[str] | None, *, benchmark: str = "?", loader: str = "mmlu"
) -> list[str] | None:
    """Subject list for a benchmark's ``subjects`` value: None, a group name, a subject, or a list of either.

    For the mmlu loader every name must be an MMLU subject or group; other
    loaders filter on their own subject field, so their names are taken as given.
    """
    if value is None:
        return None
    names = [value] if isinstance(value, str) else list(value)
    if not names:
        raise CapatlasError(f"benchmark '{benchmark}': 'subjects' is an empty list (use null for all subjects)")
    resolved: list[str] = []
    for name in names:
        if name in MMLU_GROUPS:
            resolved.extend(MMLU_GROUPS[name])
        elif loader != "mmlu" or name in MMLU_SUBJECTS:
            resolved.append(name)
        else:
            hint = difflib.get_close_matches(name, list(MMLU_GROUPS) + list(MMLU_SUBJECTS), n=1)
            suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
            raise CapatlasError(
                f"benchmark '{benchmark}': unknown MMLU subject or group '{name}'{suggestion}; "
                f"groups: {', '.join(MMLU_GROUPS)}"
            )
    return list(dict.fromkeys(resolved))


def benchmark_spec(bench: Benchmark | Mapping) -> Benchmark:
    """A benchmarks[] entry as its typed section; keys it leaves out take the schema's defaults."""
    if isinstance(bench, Benchmark):
        return bench
    return Benchmark.of(bench, where=f"benchmark '{bench.get('name', '?')}'")


def benchmark_roles(config: dict) -> dict[str, tuple[str, str]]:
    """Benchmark name -> (domain, capability), in config order."""
    return {b["name"]: (b["domain"], b["capability"]) for b in config.get("benchmarks", [])}


def benchmark_config(config: dict, name: str) -> dict:
    """The config entry of benchmark `name`; the error lists the configured names."""
    for bench in config.get("benchmarks", []):
        if bench["name"] == name:
            return bench
    names = [b["name"] for b in config.get("benchmarks", [])]
    raise CapatlasError(
        f"benchmark '{name}' is not in the config's 'benchmarks' (configured: {', '.join(names) or 'none'})"
    )


# ---------------------------------------------------------------------------
# Items


@dataclass(frozen=True)
class MCItem:
    """One multiple-choice item, independent of the dataset schema it came from."""

    item_id: str
    question: str
    choices: list[str]
    gold: int
    subject: str | None = None
    context: str | None = None  # SocialIQA's situation, kept apart from the question
    row: int = -1  # row index in the source split (before any filtering)

    @property
    def full_question(self) -> str:
        """Question with its context in front (OLMES's SocialIQA question)."""
        return f"{self.context} {self.question}" if self.context else self.question


def stable_hash(text: str) -> int:
    """A 32-bit hash that, unlike hash(), is the same in every process."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")


class SplitNotFoundError(CapatlasError):
    """The source exists but has no such split (callers may fall back to another)."""


def _bad(name: str, where: str, reason: str) -> CapatlasError:
    return CapatlasError(f"benchmark '{name}': item {where}: {reason}")


def _text(value: Any, name: str, where: str, what: str) -> str:
    if value is None:
        raise _bad(name, where, f"missing {what}")
    if isinstance(value, float) and np.isnan(value):
        raise _bad(name, where, f"missing {what}")
    return str(value)


def _check_choices(choices: Any, name: str, where: str) -> list[str]:
    if choices is None or (not isinstance(choices, (list, tuple)) and not hasattr(choices, "tolist")):
        raise _bad(name, where, f"choices must be a list, not {type(choices).__name__}")
    choices = list(choices.tolist() if hasattr(choices, "tolist") else choices)
    if not choices:
        raise _bad(name, where, "empty choices")
    out = []
    for k, choice in enumerate(choices):
        if choice is None:
            raise _bad(name, where, f"choice {k} is missing")
        out.append(str(choice))
    return out


def _check_gold(gold: int, choices: list[str], name: str, where: str, shown: Any) -> int:
    if not 0 <= gold < len(choices):
        raise _bad(name, where, f"answer {shown!r} is out of range for {len(choices)} choices")
    if not choices[gold].strip():
        raise _bad(name, where, f"the correct choice ({shown!r}) is empty")
    return gold


def _is_missing(value: Any) -> bool:
    return (
        value is None
        or (isinstance(value, str) and not value.strip())
        or (isinstance(value, float) and np.isnan(value))
    )


def _parse_socialiqa(row: dict, idx: int, name: str, split: str) -> MCItem:
    item_id = f"{name}-{split}-{idx}"
    where = f"{item_id} (row {idx})"
    choices = _check_choices([row.get("answerA"), row.get("answerB"), row.get("answerC")], name, where)
    label = row.get("label")
    if _is_missing(label):
        raise _bad(name, where, "missing answer ('label')")
    try:
        number = int(str(label).strip())
    except ValueError:
        raise _bad(name, where, f"label {label!r} is not 1, 2 or 3") from None
    gold = _check_gold(number - 1, choices, name, where, label)
    return MCItem(
        item_id=item_id,
        question=_text(row.get("question"), name, where, "question"),
        choices=choices,
        gold=gold,
        context=_text(row.get("context"), name, where, "context"),
        row=idx,
    )


def _parse_mmlu(row: dict, idx: int, name: str, split: str) -> MCItem:
    item_id = f"{name}-{split}-{idx}"
    where = f"{item_id} (row {idx})"
    choices = _check_choices(row.get("choices"), name, where)
    answer = row.get("answer")
    if _is_missing(answer):
        raise _bad(name, where, "missing answer")
    gold = _answer_index(answer, choices, name, where, kinds=("index", "letter"))
    subject = row.get("subject")
    return MCItem(
        item_id=item_id,
        question=_text(row.get("question"), name, where, "question"),
        choices=choices,
        gold=gold,
        subject=None if _is_missing(subject) else str(subject),
        row=idx,
    )


def _parse_arc(row: dict, idx: int, name: str, split: str) -> MCItem:
    item_id = str(row["id"]) if not _is_missing(row.get("id")) else f"{name}-{split}-{idx}"
    where = f"{item_id} (row {idx})"
    raw = row.get("choices")
    if not isinstance(raw, dict) or "text" not in raw or "label" not in raw:
        raise _bad(name, where, "choices must be {text: [...], label: [...]}")
    choices = _check_choices(raw["text"], name, where)
    labels = [str(x).strip() for x in (raw["label"] or [])]
    if len(labels) != len(choices):
        raise _bad(name, where, f"{len(choices)} choice texts but {len(labels)} labels")
    key = row.get("answerKey")
    if _is_missing(key):
        raise _bad(name, where, "missing answer ('answerKey')")
    # Some ARC items label their choices "1".."5"; the key is then one of
    # those labels, so going through the label list covers both kinds.
    key = str(key).strip()
    if key not in labels:
        raise _bad(name, where, f"answerKey {key!r} is not among the choice labels {labels}")
    gold = _check_gold(labels.index(key), choices, name, where, key)
    return MCItem(
        item_id=item_id,
        question=_text(row.get("question"), name, where, "question"),
        choices=choices,
        gold=gold,
        row=idx,
    )


def _read_answer(kind: str, answer: Any, choices: list[str], labels: Sequence[str] | None) -> int | None:
    """The index `answer` names when read as `kind` (possibly out of range), or None if it is not one."""
    if kind in ("index", "index1"):
        value = answer
        if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
            value = int(value)
        if isinstance(value, (int, np.integer)):
            return int(value) - (kind == "index1")
    elif kind == "text" and isinstance(answer, str):
        matches = [k for k, c in enumerate(choices) if c == answer]
        if len(matches) == 1:
            return matches[0]
    elif kind == "label" and labels is not None and str(answer).strip() in labels:
        return list(labels).index(str(answer).strip())
    elif kind == "letter" and isinstance(answer, str):
        key = answer.strip().upper()
        if len(key) == 1 and key in LETTERS:
            return LETTERS.index(key)
    return None


def _answer_index(
    answer: Any,
    choices: list[str],
    name: str,
    where: str,
    *,
    kinds: Sequence[str] = ("index", "text", "letter"),
    labels: Sequence[str] | None = None,
) -> int:
    """Gold index from an int index, a choice's text, a letter or a choice label.

    ``kinds`` lists what the value may be: "index" (0-based; a digit string
    counts), "index1" (1-based), "text", "letter", and "label", which applies
    only where the choices carry labels ({text, label} like ARC) and wins
    when it matches. Two readings that name different in-range choices
    (answer "3" with choices "3".."6") are an error, not a guess.
    """
    shown = answer
    if isinstance(answer, (bool, np.bool_)):
        raise _bad(name, where, f"answer {shown!r} is not an index, letter or choice")
    if isinstance(answer, (float, np.floating)) and float(answer).is_integer():
        answer = int(answer)
    readings = [(kind, idx) for kind in kinds if (idx := _read_answer(kind, answer, choices, labels)) is not None]
    if not readings:
        raise _bad(name, where, f"answer {shown!r} is not a valid {' / '.join(kinds)} for {len(choices)} choices")
    if readings[0][0] == "label":
        return _check_gold(readings[0][1], choices, name, where, shown)
    in_range = [(kind, idx) for kind, idx in readings if 0 <= idx < len(choices)]
    if len({idx for _, idx in in_range}) > 1:
        named = ", ".join(f"{kind} -> choice {idx}" for kind, idx in in_range)
        raise _bad(name, where, f"answer {shown!r} is ambiguous ({named}); set fields.answer_type")
    kind, idx = (in_range or readings)[0]
    return _check_gold(idx, choices, name, where, shown)


def _as_integer(value: Any) -> int | None:
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        return int(value)
    return None


def _check_auto_indices(rows: Sequence[dict], fields: dict, name: str, split: str) -> None:
    """Refuse integer answers that never use 0: read 0-based they would be 1-based labels, one choice off.

    Item by item, answer "1" is as good a 0-based index as a 1-based one; only
    the split as a whole tells them apart. Answers that are choice labels
    ({text, label} choices) are read as labels and are not counted here.
    """
    spec = fields.get("answer", "answer")
    choices_spec = fields.get("choices", "choices")
    values = []
    for row in rows:
        if isinstance(choices_spec, str) and isinstance(row.get(choices_spec), dict):
            return  # labelled choices: the label reading wins
        value = _as_integer(row.get(spec)) if "{" not in spec else None
        if value is None:
            return  # letters or texts: no index ambiguity across the split
        values.append(value)
    if values and min(values) >= 1:
        raise CapatlasError(
            f"benchmark '{name}', split '{split}': every answer is an integer from {min(values)} to {max(values)} "
            "and none is 0, so they may be 1-based; answer_type 'auto' would read them as 0-based. "
            "Set fields.answer_type to 'index1' (1-based) or 'index' (0-based)"
        )


_ANSWER_KINDS = {
    "auto": ("label", "index", "text", "letter"),
    "label": ("label",),
    "index": ("index",),
    "index1": ("index1",),
    "letter": ("letter",),
    "text": ("text",),
}


def _field(row: dict, spec: str | None, name: str, where: str, what: str, *, required: bool = True) -> Any:
    """A row value by column name, or a str.format template over the row ("{context} {question}")."""
    if spec is None:
        return None
    if "{" in spec:
        try:
            return spec.format(**row)
        except (KeyError, IndexError, ValueError) as exc:
            raise _bad(name, where, f"fields.{what} template {spec!r} cannot be filled: {exc}") from None
    if spec not in row:
        if required:
            raise _bad(name, where, f"no column '{spec}' (fields.{what}); columns: {', '.join(sorted(row))}")
        return None
    return row[spec]


def _parse_generic(row: dict, idx: int, name: str, split: str, fields: dict) -> MCItem:
    id_field = fields.get("id", "id")
    item_id = str(row[id_field]) if id_field in row and not _is_missing(row[id_field]) else f"{name}-{split}-{idx}"
    where = f"{item_id} (row {idx})"
    spec = fields.get("choices", "choices")
    labels = None
    if isinstance(spec, list):
        raw: Any = [_field(row, col, name, where, "choices") for col in spec]
    else:
        raw = _field(row, spec, name, where, "choices")
    if isinstance(raw, dict) and "text" in raw:
        labels = [str(x).strip() for x in (raw.get("label") or [])] or None
        raw = raw["text"]
    choices = _check_choices(raw, name, where)
    question = _text(_field(row, fields.get("question", "question"), name, where, "question"), name, where, "question")
    answer = _field(row, fields.get("answer", "answer"), name, where, "answer")
    if _is_missing(answer):
        raise _bad(name, where, "missing answer")
    answer_type = fields.get("answer_type", "auto")
    if answer_type not in _ANSWER_KINDS:
        raise CapatlasError(
            f"benchmark '{name}': fields.answer_type must be one of {', '.join(_ANSWER_KINDS)}, not {answer_type!r}"
        )
    gold = _answer_index(answer, choices, name, where, kinds=_ANSWER_KINDS[answer_type], labels=labels)
    context = _field(row, fields.get("context"), name, where, "context", required=False)
    subject = _field(row, fields.get("subject", "subject"), name, where, "subject", required=False)
    return MCItem(
        item_id=item_id,
        question=question,
        choices=choices,
        gold=gold,
        subject=None if _is_missing(subject) else str(subject),
        context=None if _is_missing(context) else str(context),
        row=idx,
    )


def parse_rows(rows: Iterable[dict], bench: Benchmark | Mapping) -> list[MCItem]:
    """Validated items from raw rows of one split (no subject filter, no limit)."""
    bench = benchmark_spec(bench)
    name, loader, split = bench.name, bench.loader, bench.split
    fields = bench.fields
    items = []
    for idx, row in enumerate(rows):
        if not isinstance(row, dict):
            raise _bad(name, f"row {idx}", f"is a {type(row).__name__}, not a record")
        if loader == "socialiqa":
            items.append(_parse_socialiqa(row, idx, name, split))
        elif loader == "mmlu":
            items.append(_parse_mmlu(row, idx, name, split))
        elif loader == "arc":
            items.append(_parse_arc(row, idx, name, split))
        elif loader == "multiple_choice":
            items.append(_parse_generic(row, idx, name, split, fields))
        else:
            raise CapatlasError(f"benchmark '{name}': unknown loader '{loader}' (one of {', '.join(LOADERS)})")
    if loader == "multiple_choice" and fields.get("answer_type", "auto") == "auto":
        _check_auto_indices(rows, fields, name, split)
    ids = [item.item_id for item in items]
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = next(i for i in ids if i in seen or seen.add(i))  # type: ignore[func-returns-value]
        raise CapatlasError(f"benchmark '{name}': item id '{dup}' occurs more than once in split '{split}'")
    return items


# ---------------------------------------------------------------------------
# Sources


def missing_local_inputs(config: dict) -> list[str]:
    """Config keys naming a local path that does not exist: benchmark sources, models, classifiers.

    Hub ids ("owner/name") are read from the local cache at run time and are
    not checked here; `{world}` sources are made by the demo's DAG.
    """
    named: list[tuple[str, str | None]] = [
        (f"benchmarks[{b['name']}].source", None if "{world}" in b["source"] else b["source"])
        for b in config["benchmarks"]
    ]
    named += [(f"models.{role}.path", (config["models"][role] or {}).get("path")) for role in ("document", "query")]
    named += [("models.tokenizer", config["models"].get("tokenizer"))]
    named += [
        (f"corpus.labels.{facet}.model", config["corpus"]["labels"][facet].get("model"))
        for facet in ("topic", "format")
        if config["corpus"]["labels"][facet]["source"] == "classifier"
    ]
    named += [("attribution.optimizer_state", config["attribution"].get("optimizer_state"))]
    return [
        f"{key}: {value}"
        for key, value in named
        if value and looks_like_path(str(value)) and not Path(str(value)).expanduser().exists()
    ]


def resolve_source(source: str, world_dir: str | os.PathLike | None, *, benchmark: str = "?") -> str:
    if "{world}" in source:
        if world_dir is None:
            raise CapatlasError(
                f"benchmark '{benchmark}': source {source!r} uses {{world}} but no demo world directory was given"
            )
        source = source.replace("{world}", str(world_dir))
    return source


def looks_like_path(source: str) -> bool:
    """True for what can only be a filesystem path, never an HF hub id ("owner/name" or "name")."""
    return (
        source.startswith(("/", ".", "~"))
        or source.count("/") > 1
        or (os.sep != "/" and os.sep in source)
        or source.lower().endswith(DATA_SUFFIXES)
    )


def _read_json_file(path: Path) -> list[dict]:
    text = path.read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return _read_jsonl_text(text, path)
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        lists = {k: v for k, v in data.items() if isinstance(v, list)}
        if len(lists) == 1 and all(isinstance(r, dict) for r in next(iter(lists.values()))):
            return next(iter(lists.values()))
        if lists and len(lists) == len(data) and len({len(v) for v in lists.values()}) == 1:
            keys = list(lists)
            return [dict(zip(keys, values)) for values in zip(*lists.values())]
        return [data]
    raise CapatlasError(f"{path}: expected a JSON list of records, got {type(data).__name__}")


def _read_jsonl_text(text: str, path: Path) -> list[dict]:
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise CapatlasError(f"{path}:{lineno}: not valid JSON: {exc.msg}") from None
    return rows


def read_rows(path: str | os.PathLike) -> list[dict]:
    """Records of one local data file (.jsonl, .json, .parquet, .csv)."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            return _read_jsonl_text(path.read_text(), path)
        if suffix == ".json":
            return _read_json_file(path)
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
        if suffix == ".csv":
            # csv keeps every value a string: "1" is a SocialIQA label, not a number.
            with open(path, newline="") as handle:
                return [dict(row) for row in csv.DictReader(handle)]
    except CapatlasError:
        raise
    except Exception as exc:
        raise CapatlasError(f"cannot read {path}: {exc}") from exc
    raise CapatlasError(f"{path}: unsupported file type '{suffix}' (use {', '.join(DATA_SUFFIXES)})")


def _split_files(base: Path, split: str) -> list[Path]:
    """Data files of `split` under `base` in the layouts HF repos and exports use."""
    patterns = [
        *(f"{split}{s}" for s in DATA_SUFFIXES),
        *(f"{split}-*{s}" for s in DATA_SUFFIXES),  # hub shards: test-00000-of-00001.parquet
        *(f"data/{split}{s}" for s in DATA_SUFFIXES),
        *(f"data/{split}-*{s}" for s in DATA_SUFFIXES),
        *(f"{split}/*{s}" for s in DATA_SUFFIXES),  # parquet-converter: <config>/<split>/0000.parquet
    ]
    for pattern in patterns:
        found = sorted(p for p in base.glob(pattern) if p.is_file())
        if found:
            return found
    return []


def _is_saved_dataset(path: Path) -> str | None:
    if (path / "dataset_dict.json").is_file():
        return "dict"
    if (path / "state.json").is_file() and (path / "dataset_info.json").is_file():
        return "dataset"
    return None


def _rows_from_saved(path: Path, split: str, bench: Benchmark) -> list[dict]:
    import datasets

    name = bench.name
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:
        raise CapatlasError(f"benchmark '{name}': cannot load the saved dataset {path}: {exc}") from exc
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise SplitNotFoundError(
                f"benchmark '{name}': saved dataset {path} has no split '{split}' (splits: {', '.join(loaded)})"
            )
        loaded = loaded[split]
    elif split != bench.split:
        # A single saved split is the benchmark's own split, never also its dev split.
        raise SplitNotFoundError(f"benchmark '{name}': {path} holds one saved split, not a '{split}' split")
    else:
        log.info("benchmark %s: %s is a single saved split; using it as '%s'", name, path, split)
    return loaded.to_list()


# AI2's own SocialIQA release (socialiqa-train-dev.zip) names the validation split "dev"
# and keeps the answers apart: dev.jsonl + dev-labels.lst, one 1-based label a line.
_AI2_SPLITS = {"validation": "dev"}


def _socialiqa_original(base: Path, split: str, name: str) -> tuple[list[dict], list[str]] | None:
    for stem in dict.fromkeys((split, _AI2_SPLITS.get(split, split))):
        data, labels = base / f"{stem}.jsonl", base / f"{stem}-labels.lst"
        if not (data.is_file() and labels.is_file()):
            continue
        rows = read_rows(data)
        answers = [line.strip() for line in labels.read_text(encoding="utf-8").splitlines() if line.strip()]
        if len(answers) != len(rows):
            raise CapatlasError(
                f"benchmark '{name}': {labels} holds {len(answers)} labels but {data} holds {len(rows)} items"
            )
        return [{**row, "label": answer} for row, answer in zip(rows, answers)], [str(data), str(labels)]
    return None


def _rows_from_dir(base: Path, bench: Benchmark, split: str) -> tuple[list[dict], list[str]]:
    name, config_name = bench.name, bench.config_name
    if bench.loader == "socialiqa" and not config_name:
        original = _socialiqa_original(base, split, name)
        if original is not None:
            return original
    # The hub's parquet branch (refs/convert/parquet) holds <config>/<split>/0000.parquet;
    # a dataset with one config calls it "default".
    if not config_name and not _split_files(base, split) and not _is_saved_dataset(base):
        if _split_files(base / "default", split) or _is_saved_dataset(base / "default"):
            config_name = "default"
    bases = [base / config_name] if config_name and (base / config_name).is_dir() else [base]
    if config_name and not (base / config_name).is_dir() and not (_is_saved_dataset(base) or _split_files(base, split)):
        configs = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
        raise CapatlasError(
            f"benchmark '{name}': {base} has no config directory '{config_name}' "
            f"(directories: {', '.join(configs) or 'none'})"
        )
    # cais/mmlu without a config name: the "all" config, else one directory per subject.
    if (
        bench.loader == "mmlu"
        and not config_name
        and not _split_files(base, split)
        and not _is_saved_dataset(base)
    ):
        if (base / "all").is_dir():
            bases = [base / "all"]
        else:
            subjects = resolve_subjects(bench.subjects, benchmark=name) or list(MMLU_SUBJECTS)
            per_subject = [base / s for s in subjects if (base / s).is_dir()]
            if per_subject:
                rows, used = [], []
                for sub in per_subject:
                    sub_rows, sub_used = _rows_from_dir(sub, dataclasses.replace(bench, loader="_"), split)
                    rows.extend({**r, "subject": r.get("subject") or sub.name} for r in sub_rows)
                    used.extend(sub_used)
                return rows, used
    for candidate in bases:
        if _is_saved_dataset(candidate):
            return _rows_from_saved(candidate, split, bench), [str(candidate)]
        files = _split_files(candidate, split)
        if files:
            rows: list[dict] = []
            for path in files:
                rows.extend(read_rows(path))
            return rows, [str(p) for p in files]
    present = sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file())[:20]
    raise SplitNotFoundError(
        f"benchmark '{name}': no split '{split}' under {', '.join(str(b) for b in bases)}: looked for "
        f"{split}.jsonl/.json/.parquet/.csv, {split}-*.parquet shards (also under data/ and {split}/) "
        f"and a save_to_disk directory; files there: {', '.join(present) or 'none'}"
    )


def _rows_from_hub(source: str, bench: Benchmark, split: str) -> list[dict]:
    import datasets

    name, config_name = bench.name, bench.config_name
    offline = os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
    try:
        dataset = datasets.load_dataset(source, config_name, split=split)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, ValueError) and "split" in str(exc).lower() and "unknown" in str(exc).lower():
            raise SplitNotFoundError(
                f"benchmark '{name}': HF dataset '{source}' has no split '{split}': {first}"
            ) from exc
        why = (
            "it is not in the local cache (offline: HF_HUB_OFFLINE/HF_DATASETS_OFFLINE forbid downloading)"
            if offline
            else "loading it failed"
        )
        raise CapatlasError(
            f"benchmark '{name}': cannot load HF dataset '{source}' (config {config_name!r}, split '{split}'): "
            f"{why}. Pass a local path as 'source' (a .jsonl/.parquet file, a directory of split files, or a "
            f"save_to_disk directory). Cause: {type(exc).__name__}: {first}"
        ) from exc
    return dataset.to_list()


def load_rows(
    bench: Benchmark | Mapping, *, split: str | None = None, world_dir: str | os.PathLike | None = None
) -> tuple[list[dict], str]:
    """Raw rows of one split and a description of where they came from."""
    bench = benchmark_spec(bench)
    name = bench.name
    split = split or bench.split
    source = resolve_source(bench.source, world_dir, benchmark=name)
    path = Path(source).expanduser()
    if path.is_file():
        if split != bench.split:
            raise SplitNotFoundError(f"benchmark '{name}': source {path} is one file, not a '{split}' split")
        return read_rows(path), str(path.resolve())
    if path.is_dir():
        rows, used = _rows_from_dir(path, bench, split)
        return rows, str(path.resolve()) if len(used) != 1 else used[0]
    if looks_like_path(source):
        raise CapatlasError(f"benchmark '{name}': source {source} does not exist")
    return _rows_from_hub(source, bench, split), f"hf:{source}"


def filter_subjects(items: list[MCItem], bench: Benchmark | Mapping) -> list[MCItem]:
    bench = benchmark_spec(bench)
    name = bench.name
    subjects = resolve_subjects(bench.subjects, benchmark=name, loader=bench.loader)
    if subjects is None:
        return items
    if bench.loader in ("socialiqa", "arc"):
        raise CapatlasError(f"benchmark '{name}': 'subjects' applies to the mmlu and multiple_choice loaders only")
    for item in items:
        if item.subject is None:
            raise _bad(name, f"{item.item_id} (row {item.row})", "has no subject, but 'subjects' is set")
    wanted = set(subjects)
    kept = [item for item in items if item.subject in wanted]
    found = {item.subject for item in kept}
    missing = [s for s in subjects if s not in found]
    if not kept:
        raise CapatlasError(
            f"benchmark '{name}': no item has one of the {len(subjects)} requested subjects "
            f"(the source's subjects: {', '.join(sorted({str(i.subject) for i in items})[:20]) or 'none'})"
        )
    if missing:
        log.warning("benchmark %s: no items for %d subjects: %s", name, len(missing), ", ".join(missing))
    return kept


def subsample(items: list[MCItem], limit: int | None, *, seed: int, name: str) -> list[MCItem]:
    """At most `limit` items, a seeded sample in the original order."""
    if limit is None or limit >= len(items):
        return list(items)
    rng = np.random.default_rng(seed + stable_hash(name))
    keep = np.sort(rng.choice(len(items), size=limit, replace=False))
    return [items[i] for i in keep]


def load_all_items(
    bench: Benchmark | Mapping, *, split: str | None = None, world_dir: str | os.PathLike | None = None
) -> list[MCItem]:
    """Every validated item of a split after the subject filter, before `limit`."""
    bench = benchmark_spec(bench)
    split = split or bench.split
    rows, where = load_rows(bench, split=split, world_dir=world_dir)
    items = filter_subjects(parse_rows(rows, dataclasses.replace(bench, split=split)), bench)
    log.info("benchmark %s: %d items in split %s of %s", bench.name, len(items), split, where)
    return items


def load_items(bench: Benchmark | Mapping, *, seed: int, world_dir: str | os.PathLike | None = None) -> list[MCItem]:
    """The benchmark's items: validated, subject-filtered, subsampled to `limit` (every role)."""
    bench = benchmark_spec(bench)
    items = load_all_items(bench, world_dir=world_dir)
    return subsample(items, bench.limit, seed=seed, name=bench.name)


# ---------------------------------------------------------------------------
# Item roles: attribution queries, evaluation, guard

ROLES = ("queries", "evaluation", "guard")


def assign_roles(items: Sequence[MCItem], roles: ItemRoles | Mapping, *, seed: int, name: str) -> list[str]:
    """Each item's role, in `items`' order.

    held_out: within each subject (all items one stratum when they have
    none) a seeded order, and the item at position i of n is a query if
    (i + 0.5) / n < queries, a guard item if below queries + guard, an
    evaluation item otherwise, so every subject is split in the same
    proportions. overlapping (the study's design): every item plays every role.
    """
    roles = roles if isinstance(roles, ItemRoles) else ItemRoles.of(roles)
    if roles.design == "overlapping":
        return ["all"] * len(items)
    if roles.queries + roles.guard >= 1:
        raise CapatlasError(
            f"config key 'item_roles': queries ({roles.queries}) + guard ({roles.guard}) leave no evaluation items"
        )
    strata: dict[str | None, list[int]] = {}
    for index, item in enumerate(items):
        strata.setdefault(item.subject, []).append(index)
    assigned = [""] * len(items)
    for subject, members in strata.items():
        rng = np.random.default_rng([seed, stable_hash(name), stable_hash(str(subject))])
        for position, index in enumerate(rng.permutation(members)):
            share = (position + 0.5) / len(members)
            assigned[index] = "queries" if share < roles.queries else "guard" if share < roles.queries + roles.guard else "evaluation"
    return assigned


def items_for_role(items: Sequence[MCItem], role: str, roles: ItemRoles | Mapping, *, seed: int, name: str) -> list[MCItem]:
    """The items of `role` (queries, evaluation or guard) in their original order; refuse an empty role."""
    if role not in ROLES:
        raise CapatlasError(f"unknown item role '{role}' ({', '.join(ROLES)})")
    kept = [item for item, r in zip(items, assign_roles(items, roles, seed=seed, name=name)) if r in (role, "all")]
    if not kept:
        raise CapatlasError(
            f"benchmark '{name}': none of its {len(items)} items is a {role} item under config key 'item_roles' "
            "(raise the fraction, or the benchmark's limit)"
        )
    return kept


def role_counts(items: Sequence[MCItem], roles: ItemRoles | Mapping, *, seed: int, name: str) -> dict:
    """What provenance records of a benchmark's split: the design, the fractions and the items in each role."""
    roles = roles if isinstance(roles, ItemRoles) else ItemRoles.of(roles)
    assigned = assign_roles(items, roles, seed=seed, name=name)
    counts = {role: sum(r in (role, "all") for r in assigned) for role in ROLES}
    return {"design": roles.design, "queries_fraction": roles.queries, "guard_fraction": roles.guard, "items": counts}


# ---------------------------------------------------------------------------
# Few-shot examples


@dataclass
class FewshotPool:
    items: list[MCItem]
    source: str  # "dev", "train" or the evaluation split's name
    same_split: bool


def load_fewshot_pool(
    bench: Benchmark | Mapping, all_items: list[MCItem], *, world_dir: str | os.PathLike | None = None
) -> FewshotPool:
    """Where few-shot examples come from, as lm-eval and OLMES take them: MMLU's dev split, SocialIQA's and
    ARC's train split, when the source has it; else the evaluated split itself (an item is never its own shot)."""
    bench = benchmark_spec(bench)
    split = bench.split
    pool_split = _FEWSHOT_SPLITS.get(bench.loader)
    if pool_split and split != pool_split:
        try:
            rows, _ = load_rows(bench, split=pool_split, world_dir=world_dir)
        except SplitNotFoundError:
            log.info(
                "benchmark %s: no %s split; few-shot examples come from '%s'", bench.name, pool_split, split
            )
        else:
            return FewshotPool(parse_rows(rows, dataclasses.replace(bench, split=pool_split)), pool_split, False)
    return FewshotPool(list(all_items), split, True)


# The split lm-eval's and OLMES's task definitions draw few-shot examples from.
_FEWSHOT_SPLITS = {"mmlu": "dev", "socialiqa": "train", "arc": "train"}


def select_fewshot(item: MCItem, pool: FewshotPool, k: int, *, seed: int, name: str) -> list[MCItem]:
    """`k` examples for `item`: same subject where subjects exist, never the item itself.

    From a dev split the first k of the subject (lm-evaluation-harness's
    choice); from the evaluation split a sample seeded by (seed, benchmark,
    item id), so an item's examples do not depend on which other items run.
    """
    if k <= 0:
        return []
    # Never the item itself, also not a copy of it in another split (its answer would be in the prompt).
    candidates = [
        c
        for c in pool.items
        if not (c.item_id == item.item_id and pool.same_split)
        and (c.question, c.choices, c.context) != (item.question, item.choices, item.context)
    ]
    if item.subject is not None:
        same = [c for c in candidates if c.subject == item.subject]
        candidates = same or candidates
    if len(candidates) < k:
        log.warning(
            "benchmark %s: item %s gets %d few-shot examples, not %d (pool %s)",
            name, item.item_id, len(candidates), k, pool.source,
        )  # fmt: skip
    if not pool.same_split:
        return candidates[:k]
    rng = np.random.default_rng([seed, stable_hash(name), stable_hash(item.item_id)])
    take = min(k, len(candidates))
    return [candidates[i] for i in rng.choice(len(candidates), size=take, replace=False)]


# ---------------------------------------------------------------------------
# Prompts


@dataclass(frozen=True)
class Rendered:
    """A prompt and its answer continuations; each continuation starts with its separating space."""

    prompt: str
    continuations: list[str]
    gold: int
    choice_texts: list[str] = field(default_factory=list)  # the answers as text (acc_norm / per-char lengths)

    @property
    def completion(self) -> str:
        return self.continuations[self.gold]


MMLU_HEADER = "The following are multiple choice questions (with answers) about {subject}.\n\n"
FEWSHOT_SEPARATOR = "\n\n"


def _mmlu_header(item: MCItem) -> str:
    subject = (item.subject or "").replace("_", " ").strip()
    return MMLU_HEADER.format(subject=subject) if subject else ""


def _render_one(item: MCItem, fmt: str, loader: str) -> tuple[str, list[str]]:
    """Prompt (without header or few-shot) and continuations of one item."""
    letters = LETTERS[: len(item.choices)]
    if len(item.choices) > len(LETTERS):
        raise CapatlasError(f"item {item.item_id}: more than {len(LETTERS)} choices")
    if fmt == "lm_eval":
        if loader == "socialiqa":
            return f"Q: {item.context} {item.question}\nA:", [f" {c}" for c in item.choices]
        if loader == "mmlu":
            lines = "".join(f"\n{letter}. {choice}" for letter, choice in zip(letters, item.choices))
            return f"{item.question.strip()}{lines}\nAnswer:", [f" {letter}" for letter in letters]
        return f"Question: {item.full_question}\nAnswer:", [f" {c}" for c in item.choices]
    if fmt == "olmes_rc":
        return f"Question: {item.full_question}\nAnswer:", [f" {c}" for c in item.choices]
    if fmt == "olmes_mc":
        lines = "".join(f"\n {letter}. {choice}" for letter, choice in zip(letters, item.choices))
        return f"Question: {item.full_question}{lines}\nAnswer:", [f" {letter}" for letter in letters]
    raise CapatlasError(f"unknown prompt format '{fmt}' (one of {', '.join(PROMPT_FORMATS)})")


def render(
    item: MCItem,
    fmt: str,
    *,
    benchmark_loader: str,
    fewshot_items: Sequence[MCItem] = (),
    subject_header: bool = True,
) -> Rendered:
    """Prompt and continuations of `item` in format `fmt`, with few-shot examples in front.

    Each example is its prompt plus its gold continuation; examples and the
    prompt are separated by a blank line. MMLU prompts start with the
    subject header lm-eval and OLMES both use (in every format), once, at
    the very top, unless `subject_header` is off.
    """
    prompt, continuations = _render_one(item, fmt, benchmark_loader)
    shots = []
    for shot in fewshot_items:
        shot_prompt, shot_conts = _render_one(shot, fmt, benchmark_loader)
        shots.append(shot_prompt + shot_conts[shot.gold])
    text = FEWSHOT_SEPARATOR.join([*shots, prompt])
    if subject_header and benchmark_loader == "mmlu":
        text = _mmlu_header(item) + text
    return Rendered(prompt=text, continuations=continuations, gold=item.gold, choice_texts=list(item.choices))


def render_items(
    items: Sequence[MCItem],
    bench: Benchmark | Mapping,
    *,
    seed: int,
    pool: FewshotPool | None = None,
) -> list[Rendered]:
    """Render every item with the benchmark's format and few-shot setting."""
    bench = benchmark_spec(bench)
    k = bench.fewshot
    fmt = bench.prompt_format
    if k and pool is None:
        raise CapatlasError(f"benchmark '{bench.name}': fewshot={k} needs a pool of examples")
    out = []
    for item in items:
        shots = select_fewshot(item, pool, k, seed=seed, name=bench.name) if k else []
        out.append(
            render(
                item,
                fmt,
                benchmark_loader=bench.loader,
                fewshot_items=shots,
                subject_header=bench.subject_header,
            )
        )
    return out

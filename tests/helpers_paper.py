"""Stand-ins shaped like the paper-scale inputs, at the README's own paths under a scratch root.

README's paper-scale step 2 shows the site file a user writes; its paths
(/data/..., /models/..., /scratch/...) are taken from the README as written
and moved under a temporary root, and the stand-ins are built exactly there:

- a Dolma 3 mix tree, data/<source>-<topic_slug>-<NNNN>/*.jsonl.zst, with a
  topic-less source (data/stack_edu-0004/) that the documented glob leaves out;
- tiny random Olmo3ForCausalLM models as the base and the Instruct model
  (different weights, one tokenizer, as OLMo-3 7B and its Instruct share);
- a tiny random 24-class format classifier;
- SocialIQA, MMLU and ARC files in the layouts their hub repositories hold.

Nothing is downloaded; everything is a few hundred kilobytes.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from helpers_corpus import WORDS, build_classifier, text_of, write_records
from helpers_unlearning import tiny_model_dir

REPO_ROOT = Path(__file__).resolve().parent.parent
README = REPO_ROOT / "README.md"
PAPER_CONFIG = REPO_ROOT / "config" / "olmo3-7b.yaml"
SCALE_DOWN = REPO_ROOT / ".test" / "config" / "scale-down.yaml"
# Absolute roots the README's site file uses; each is moved under the test's root.
SITE_ROOTS = ("/data/", "/models/", "/scratch/")
# Web sources with a WebOrganizer topic in their directory, and a code source without one.
TOPICAL_DIRS = ("common_crawl-social_life-0002", "olmocr_science_pdfs-science_math_and_technology-0003")
TOPICLESS_DIR = "stack_edu-0004"
DOCS_PER_FILE = 60
ITEMS_PER_BENCHMARK = 8


# --------------------------------------------------------------------------- README


def readme_section() -> str:
    text = README.read_text()
    start = text.index("## The paper-scale study, step by step")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def readme_site() -> dict:
    """README step 2's site file, parsed as written."""
    blocks = re.findall(r"```yaml\n(.*?)```", readme_section(), flags=re.S)
    assert len(blocks) == 1, "README's paper-scale section should show exactly one site file"
    return yaml.safe_load(re.sub(r"^ {3}", "", blocks[0], flags=re.M))


def readme_commands() -> list[str]:
    """Every `snakemake ...` command the paper-scale section shows, in order."""
    return re.findall(r"`(snakemake [^`]+)`", readme_section())


def relocate(value, root: Path):
    """`value` with every README root (/data/, /models/, /scratch/) moved under `root`."""
    if isinstance(value, dict):
        return {k: relocate(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [relocate(v, root) for v in value]
    if isinstance(value, str) and value.startswith(SITE_ROOTS):
        return str(root) + value
    return value


def write_site(root: Path, site: dict | None = None) -> Path:
    """config/site.yaml as README step 2 writes it, relocated under `root`."""
    path = root / "config" / "site.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(relocate(site or readme_site(), root), sort_keys=False))
    return path


# --------------------------------------------------------------------------- stand-ins


def write_dolma(dolma_root: Path, directories=(*TOPICAL_DIRS, TOPICLESS_DIR), docs: int = DOCS_PER_FILE) -> list[Path]:
    """A Dolma 3 mix layout: data/<source>-<topic_slug>-<NNNN>/<shard>.jsonl.zst (two zstd frames)."""
    files = []
    for directory in directories:
        rng = random.Random(directory)
        records = [
            {
                "id": f"{directory}-{i:04d}",
                "text": text_of(rng.randint(12, 60), rng),
                "added": "2025-10-01",
                "metadata": {"url": f"https://example.org/{directory}/{i}"},
            }
            for i in range(docs)
        ]
        files.append(write_records(dolma_root / "data" / directory / "shard_00000000.jsonl.zst", records, frames=2))
    return files


def empty_benchmark_root(benchmark_root: Path) -> Path:
    """The three dataset directories the paper config names, empty (enough for planning)."""
    for name in ("allenai/social_i_qa", "cais/mmlu", "allenai/ai2_arc"):
        (benchmark_root / name).mkdir(parents=True, exist_ok=True)
    return benchmark_root


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _parquet(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def write_benchmarks(benchmark_root: Path, n: int = ITEMS_PER_BENCHMARK) -> None:
    """allenai/social_i_qa (parquet branch), cais/mmlu and allenai/ai2_arc as hub snapshots hold them."""
    rng = random.Random(0)
    siqa = benchmark_root / "allenai" / "social_i_qa"
    (siqa / "social_i_qa.py").parent.mkdir(parents=True, exist_ok=True)
    (siqa / "social_i_qa.py").write_text("# the main branch's loading script\n")
    for split in ("train", "validation"):
        rows = [
            {
                "context": _sentence(rng, 10),
                "question": f"What does {rng.choice(WORDS)} want?",
                "answerA": _sentence(rng, 3),
                "answerB": _sentence(rng, 3),
                "answerC": _sentence(rng, 3),
                "label": str(1 + k % 3),
            }
            for k in range(n)
        ]
        _parquet(siqa / "default" / split / "0000.parquet", rows)

    # Two MMLU subjects in each of the study's groups (social sciences, STEM).
    subjects = ["sociology", "econometrics", "astronomy", "college_physics"]
    mmlu = benchmark_root / "cais" / "mmlu"
    for split, per_subject in (("test", n // 2), ("dev", 5)):
        rows = [
            {
                "question": f"{_sentence(rng, 8)}?",
                "subject": subject,
                "choices": [_sentence(rng, 2) for _ in range(4)],
                "answer": k % 4,
            }
            for subject in subjects
            for k in range(per_subject)
        ]
        _parquet(mmlu / "all" / f"{split}-00000-of-00001.parquet", rows)

    arc = benchmark_root / "allenai" / "ai2_arc"
    for split in ("train", "test"):
        rows = []
        for k in range(n):
            labels = ["A", "B", "C", "D"] if k % 4 else ["1", "2", "3", "4"]
            rows.append(
                {
                    "id": f"Mercury_{split}_{k}",
                    "question": f"{_sentence(rng, 8)}?",
                    "choices": {"text": [_sentence(rng, 2) for _ in labels], "label": labels},
                    "answerKey": labels[k % 4],
                }
            )
        _parquet(arc / "ARC-Challenge" / f"{split}-00000-of-00001.parquet", rows)


def write_models(site: dict) -> None:
    """Base and Instruct models (one tokenizer, different weights) and the format classifier at the site's paths."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = tiny_model_dir(Path(site["models"]["document"]["path"]), seed=0)
    instruct = Path(site["models"]["query"]["path"])
    model = AutoModelForCausalLM.from_pretrained(base, local_files_only=True)
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    model.save_pretrained(instruct)
    AutoTokenizer.from_pretrained(base, local_files_only=True).save_pretrained(instruct)
    build_classifier(Path(site["corpus"]["labels"]["format"]["model"]))


def build_stand_ins(root: Path) -> dict:
    """Every input README step 1 lists, under `root` at the README's paths; returns the relocated site."""
    site = relocate(readme_site(), root)
    corpus_glob = Path(site["corpus"]["paths"][0])
    # .../dolma3_mix-6T-1025-7B/data/<pattern>/<file pattern>
    write_dolma(corpus_glob.parent.parent.parent)
    write_benchmarks(Path(site["benchmark_root"]))
    write_models(site)
    return site


def provenance(path: Path) -> dict:
    return json.loads(path.read_text())

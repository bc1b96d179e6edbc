"""Shared machinery of the three TrackStar stages (Bergson, unit-normalised, R^-1/2 on both sides).

The stages live in ``attribution_precondition`` (`capatlas preconditioner`),
``attribution_queries`` (`capatlas query-gradients`) and
``attribution_score`` (`capatlas score-shard`). This module holds what
they share:

* the attribution settings read from the config and the *fingerprint*
  of the settings that change scores. ``device``, ``token_batch_size``
  (except where it shortens the effective context) and
  ``max_batch_size`` and ``ranks`` only change batching or hardware, so a shard rerun
  on another GPU is not refused for them;
* the model identity: a local directory (hub ids are resolved in the
  local cache only) and a sha256 over its weight, config and tokenizer
  files;
* provenance files and the check that an upstream artefact was made
  with the same model, Bergson version and attribution fingerprint as
  the job reading it;
* tokenisation of documents, validation of pre-tokenised query sets and
  the ``datasets`` directories Bergson reads;
* Bergson run directories: a temporary work directory beside the output
  (same file system, so results move by rename), absolute paths and
  ``validate_run_path`` before every Bergson step (bergson-notes 7, 9).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import sys
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from capatlas import __version__

from capatlas.errors import CapatlasError
from capatlas.settings import Attribution

log = logging.getLogger(__name__)

HESSIAN_DIR = "hessian"
INDEX_DIR = "index"
ITEMS_FILE = "items.parquet"
SAMPLE_FILE = "sample.parquet"
IGNORE_INDEX = -100

# A run fixes these Bergson settings; they are recorded so that a change of
# Bergson's defaults shows up as a provenance difference rather than silently.
PROJECTION_TYPE = "rademacher"
PROJECTION_SCALE = "jl"
LOSS_REDUCTION = "sum"  # documents: summed token CE over the whole text (TrackStar)
SCORE_PRECISION = "fp32"

# Files that make up a model for attribution: weights, configs, tokenizer.
_MODEL_SUFFIXES = (".safetensors", ".bin", ".json", ".model", ".txt", ".jinja", ".py", ".tiktoken")
# Files beside a model that are not the model: training state, logs, and the
# demo's train_summary.json, whose wall-clock timings would otherwise give
# every run of the same model another identity.
_NOT_MODEL_FILES = re.compile(
    r"^(optimizer.*|scheduler.*|trainer_state\.json|training_args\.bin|rng_state.*|train_log.*|train_summary\.json|.*\.lock)$"
)
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class AttributionSettings:
    """The config's ``attribution`` section (plus the global seed) as typed values."""

    projection_dim: int
    precision: str
    token_batch_size: int
    max_length: int
    truncation: bool
    preconditioner_docs: int
    target_downweight_components: int
    optimizer_state: str | None
    device: str
    seed: int
    max_batch_size: int | None
    ranks: int | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, optimizer_state: str | None = None) -> AttributionSettings:
        section = Attribution.of(config["attribution"])
        state = optimizer_state if optimizer_state is not None else section.optimizer_state
        # max_batch_size 1 (the default) makes a document's score independent
        # of the other documents in its shard, bit for bit; null lifts it to
        # Bergson's token budget.
        return cls(
            projection_dim=section.projection_dim,
            precision=section.precision,
            token_batch_size=section.token_batch_size,
            max_length=section.max_length,
            truncation=section.truncation,
            preconditioner_docs=section.preconditioner_docs,
            target_downweight_components=section.target_downweight_components,
            optimizer_state=str(state) if state else None,
            device=section.device,
            seed=int(config["seed"]),
            max_batch_size=section.max_batch_size,
            ranks=section.ranks,
        )


def bergson_version() -> str:
    try:
        return version("bergson")
    except PackageNotFoundError:  # pragma: no cover - bergson is a hard dependency
        return "unknown"


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class ModelInfo:
    path: Path
    revision: str | None
    sha256: str
    files: dict[str, str]
    max_length: int

    def describe(self) -> dict:
        return {
            "path": str(self.path),
            "revision": self.revision,
            "sha256": self.sha256,
            "files": dict(sorted(self.files.items())),
            "max_length": self.max_length,
        }


def _file_digest(path: Path) -> str:
    # The HF cache stores LFS files (the weights) under blobs/<sha256>, so a
    # multi-GB checkpoint need not be re-read by every shard job.
    real = path.resolve()
    if path.is_symlink() and real.parent.name == "blobs" and _HEX64.match(real.name):
        return real.name
    from capatlas.fileio import file_sha256

    return file_sha256(real)


def resolve_model_dir(model: str | os.PathLike, revision: str | None = None) -> Path:
    """An absolute local directory for a model path or a hub id already in the local cache."""
    local = Path(model).expanduser()
    if local.is_dir():
        return local.resolve()
    if local.exists():
        raise CapatlasError(f"model {model} is a file; pass the model's directory")
    text = str(model)
    if text.count("/") == 1 and not text.startswith((".", "/")):
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(text, revision=revision, local_files_only=True)).resolve()
        except Exception as exc:
            raise CapatlasError(
                f"model {text!r} is not a local directory and not in the local Hugging Face cache "
                f"({type(exc).__name__}); download it first or pass its directory"
            ) from None
    raise CapatlasError(f"model directory {model} does not exist")


def model_info(model: str | os.PathLike, revision: str | None = None) -> ModelInfo:
    """Resolve `model` and fingerprint its weights, config and tokenizer files."""
    directory = resolve_model_dir(model, revision)
    files = {}
    for entry in sorted(directory.iterdir()):
        if not entry.is_file() or _NOT_MODEL_FILES.match(entry.name) or entry.name.startswith("."):
            continue
        if entry.suffix in _MODEL_SUFFIXES:
            files[entry.name] = _file_digest(entry)
    if not any(name.endswith((".safetensors", ".bin")) for name in files):
        raise CapatlasError(f"model directory {directory} holds no weights (*.safetensors or *.bin)")
    digest = hashlib.sha256()
    for name, file_digest in sorted(files.items()):
        digest.update(f"{name}\0{file_digest}\n".encode())
    return ModelInfo(
        path=directory,
        revision=revision,
        sha256=digest.hexdigest(),
        files=files,
        max_length=_model_max_length(directory, revision),
    )


def _model_max_length(directory: Path, revision: str | None) -> int:
    # Bergson's own limit (min of tokenizer.model_max_length and
    # max_position_embeddings); token_batch_size above it fails inside Bergson.
    from bergson.utils.worker_utils import max_tokens_for_model

    tokenizer = load_tokenizer(directory, revision)
    return int(max_tokens_for_model(tokenizer, str(directory), revision))


def load_tokenizer(directory: Path, revision: str | None = None):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(directory), revision=revision)
    except Exception as exc:
        raise CapatlasError(f"cannot load the tokenizer of {directory}: {type(exc).__name__}: {exc}") from None


# --------------------------------------------------------------------------- job


@dataclass(frozen=True)
class Job:
    """One stage invocation: settings, the model it runs and the device."""

    settings: AttributionSettings
    model: ModelInfo
    device: str
    optimizer_state_sha256: str | None = None

    @property
    def effective_max_length(self) -> int:
        # Bergson truncates to min(model max, token_batch_size) when it
        # tokenises, and a longer document cannot fit a token batch, so the
        # usable context is the smallest of the three.
        s = self.settings
        return min(s.max_length, s.token_batch_size, self.model.max_length)

    def fingerprint(self) -> dict:
        """The attribution settings that change scores; compared across stages."""
        s = self.settings
        return {
            "projection_dim": s.projection_dim,
            "precision": s.precision,
            "max_length": s.max_length,
            "effective_max_length": self.effective_max_length,
            "truncation": s.truncation,
            "preconditioner_docs": s.preconditioner_docs,
            "target_downweight_components": s.target_downweight_components,
            "optimizer_state_sha256": self.optimizer_state_sha256,
            "seed": s.seed,
            "bergson": bergson_fixed_settings(),
        }

    def identity(self, *, model: ModelInfo | None = None) -> dict:
        """What an upstream artefact must share with this job."""
        return {
            "bergson_version": bergson_version(),
            "model_sha256": (model or self.model).sha256,
            "attribution": self.fingerprint(),
        }

    def index_config(self, run_path: Path, dataset: Path):
        from bergson.config.config import DataConfig, DistributedConfig, IndexConfig

        s = self.settings
        return IndexConfig(
            run_path=str(Path(run_path).resolve()),
            overwrite=True,
            model=str(self.model.path),
            revision=None,
            precision=s.precision,
            projection_dim=s.projection_dim,
            projection_type=PROJECTION_TYPE,
            projection_scale=PROJECTION_SCALE,
            projection_target="per_module",
            include_bias=False,
            token_batch_size=s.token_batch_size,
            max_batch_size=s.max_batch_size,
            optimizer_state=str(Path(s.optimizer_state).resolve()) if s.optimizer_state else "",
            loss_fn="ce",
            loss_reduction=LOSS_REDUCTION,
            data=DataConfig(dataset=str(Path(dataset).resolve()), split="train"),
            # Data-parallel ranks: attribution.ranks, else one per GPU this job sees.
            distributed=DistributedConfig(nproc_per_node=s.ranks or (1 if self.device == "cpu" else _cuda_count())),
        )


def bergson_fixed_settings() -> dict:
    from bergson.config.config import InversionConfig

    inversion = InversionConfig()
    return {
        "projection_type": PROJECTION_TYPE,
        "projection_scale": PROJECTION_SCALE,
        "projection_target": "per_module",
        "projection_seed": None,
        "include_bias": False,
        "loss_fn": "ce",
        "loss_reduction": LOSS_REDUCTION,
        "hessian": "autocorrelation",
        "unit_normalize": True,
        "inversion": inversion.inversion,
        "damping_factor": inversion.damping_factor,
        "score_precision": SCORE_PRECISION,
    }


def bergson_score_command(
    run_dir: str | os.PathLike,
    *,
    model: str | os.PathLike,
    dataset: str | os.PathLike,
    query_index: str | os.PathLike,
    hessian: str | os.PathLike,
    attribution: Mapping[str, Any],
    optimizer_state: str | os.PathLike | None = None,
) -> list[str]:
    """The `bergson score` command line that scores `dataset` (jsonl, column "text") as score-shard does.

    Same TrackStar settings from the `attribution` config section, the run's
    preconditioner (`hessian`) and one benchmark's query index; per-query
    cosines land in `run_dir` (read them with ``bergson.data.load_scores``).
    For reproducing a shard with Bergson's own CLI, and for the tests and
    benches that compare against it. Paths are made absolute: Bergson looks
    a relative path that resembles a hub id up online.
    """
    command = [
        str(Path(sys.executable).parent / "bergson"), "score", str(Path(run_dir).resolve()),
        "--model", str(Path(model).resolve()),
        "--dataset", str(Path(dataset).resolve()),
        "--prompt_column", "text",
        "--truncation", str(bool(attribution["truncation"])).lower(),
        "--token_batch_size", str(attribution["token_batch_size"]),
        "--projection_dim", str(attribution["projection_dim"]),
        "--index_cfg.precision", attribution["precision"],
        "--query_path", str(Path(query_index).resolve()),
        "--hessian_path", str(Path(hessian).resolve()),
        "--unit_normalize", "true",
        "--score", "individual",
        "--nproc_per_node", "1",
        "--overwrite", "true",
    ]  # fmt: skip
    if attribution.get("max_batch_size") is not None:
        command += ["--max_batch_size", str(attribution["max_batch_size"])]
    if optimizer_state:
        command += ["--optimizer_state", str(Path(optimizer_state).resolve())]
    return command


def _cuda_count() -> int:
    import torch

    return max(1, torch.cuda.device_count())


def optimizer_state_sha256(path: str | None) -> str | None:
    if not path:
        return None
    resolved = _optimizer_state_file(path)
    from capatlas.fileio import file_sha256

    return file_sha256(resolved)


def _optimizer_state_file(path: str) -> Path:
    local = Path(path).expanduser()
    if local.is_dir():
        local = local / "optimizer.pt"
    if not local.is_file():
        raise CapatlasError(
            f"optimizer state {path} does not exist (config key 'attribution.optimizer_state'; "
            "a file or a directory holding optimizer.pt)"
        )
    return local.resolve()


def resolve_device(spec: str) -> str:
    """'cpu' or 'cuda' for attribution.device (auto, cpu, cuda, cuda:N).

    Bergson puts the model on CUDA whenever it is visible, so 'cpu' hides
    the GPUs from this process (possible only before CUDA is initialised).
    """
    import torch

    value = (spec or "auto").strip().lower()
    if value == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if value == "cpu":
        if torch.cuda.is_initialized():
            raise CapatlasError("config key 'attribution.device' is 'cpu' but CUDA is already in use by this process")
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        return "cpu"
    match = re.fullmatch(r"cuda(?::(\d+))?", value)
    if match is None:
        raise CapatlasError(f"config key 'attribution.device' must be auto, cpu, cuda or cuda:N, not {spec!r}")
    if match.group(1) is not None and not torch.cuda.is_initialized():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        devices = [d.strip() for d in visible.split(",") if d.strip()] if visible else None
        index = int(match.group(1))
        if devices is not None and index >= len(devices):
            raise CapatlasError(
                f"config key 'attribution.device' is {spec!r} but only {len(devices)} GPU(s) are visible"
            )
        os.environ["CUDA_VISIBLE_DEVICES"] = devices[index] if devices is not None else str(index)
    if not torch.cuda.is_available():
        raise CapatlasError(f"config key 'attribution.device' is {spec!r} but no CUDA device is available")
    return "cuda"


def make_job(
    config: Mapping[str, Any], model: str, *, revision: str | None = None, optimizer_state: str | None = None
) -> Job:
    settings = AttributionSettings.from_config(config, optimizer_state=optimizer_state)
    device = resolve_device(settings.device)
    info = model_info(model, revision)
    s = settings
    if s.token_batch_size > info.max_length:
        raise CapatlasError(
            f"config key 'attribution.token_batch_size' ({s.token_batch_size}) exceeds the maximum length "
            f"of the model at {info.path} ({info.max_length} tokens); lower it to {info.max_length} or less"
        )
    job = Job(
        settings=settings, model=info, device=device, optimizer_state_sha256=optimizer_state_sha256(s.optimizer_state)
    )
    if job.effective_max_length < s.max_length:
        log.warning(
            "documents are cut to %d tokens, not attribution.max_length=%d: a document must fit one token batch "
            "(attribution.token_batch_size=%d) and the model takes at most %d tokens",
            job.effective_max_length,
            s.max_length,
            s.token_batch_size,
            info.max_length,
        )
    return job


def add_model_arguments(parser, *, model_help: str) -> None:
    """The options every attribution stage shares: the model, its revision, the optimizer state."""
    parser.add_argument("--model", required=True, help=model_help)
    parser.add_argument("--revision", default=None, help="model revision (hub ids only)")
    parser.add_argument(
        "--optimizer-state",
        default=None,
        help="optimizer.pt (or its directory) for the Adam normalizer; default: attribution.optimizer_state",
    )


@contextlib.contextmanager
def deterministic_torch() -> Iterator[None]:
    """Deterministic kernels where PyTorch has them (most CPU ops already are), restored afterwards."""
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark = torch.backends.cudnn.benchmark
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
        torch.backends.cudnn.benchmark = benchmark


@contextlib.contextmanager
def one_preconditioner_inversion() -> Iterator[None]:
    """Within the block, Bergson's builds invert a given preconditioner once, not once per build.

    `build_query` inverts R (an eigendecomposition per module, ~7 s for
    the demo) every time it is called; query-gradients calls it once per
    benchmark with the same hessian_path. Bergson has no argument for a
    loaded preconditioner, so its builder's `load_preconditioner` is
    memoised for the block by its arguments. The inverse is only read
    (`Preconditioner.apply`), so every build gets the bytes it would get
    alone (tests/test_attribution.py). If a Bergson version moves the call,
    the block does nothing and each build inverts R itself.
    """
    from bergson import builder

    original = getattr(builder, "load_preconditioner", None)
    if original is None:
        yield
        return
    loaded: dict = {}

    def load_once(hessian_path, **kwargs):
        key = (str(hessian_path), repr(sorted(kwargs.items())))
        if key not in loaded:
            loaded[key] = original(hessian_path, **kwargs)
        return loaded[key]

    builder.load_preconditioner = load_once
    try:
        yield
    finally:
        builder.load_preconditioner = original


def _torch_threads() -> int:
    import torch

    return int(torch.get_num_threads())


def base_provenance(stage: str, job: Job, **extra: Any) -> dict:
    return {
        "stage": stage,
        "capatlas_version": __version__,
        "bergson_version": bergson_version(),
        "identity": job.identity(),
        "model": job.model.describe(),
        "attribution": job.fingerprint(),
        "settings": {
            "token_batch_size": job.settings.token_batch_size,
            "max_batch_size": job.settings.max_batch_size,
            "device": job.device,
            "torch_threads": _torch_threads(),
            "optimizer_state": job.settings.optimizer_state,
        },
        **extra,
    }


# --------------------------------------------------------------------------- datasets


def tokenize_documents(
    tokenizer,
    texts: Sequence[str],
    doc_ids: Sequence[str],
    *,
    max_length: int,
    truncation: bool,
    where: str,
    batch_size: int = 512,
) -> list[list[int]]:
    """Token ids per document, tokenised as Bergson tokenises a text column."""
    out: list[list[int]] = []
    kwargs: dict[str, Any] = {"return_attention_mask": False, "truncation": truncation}
    if truncation:
        kwargs["max_length"] = max_length
    for start in range(0, len(texts), batch_size):
        batch = list(texts[start : start + batch_size])
        encoded = tokenizer(batch, **kwargs)["input_ids"]
        for offset, ids in enumerate(encoded):
            if len(ids) > max_length:
                raise CapatlasError(
                    f"{where}: document {doc_ids[start + offset]!r} has {len(ids)} tokens, more than fit one "
                    f"token batch ({max_length}); turn on attribution.truncation or raise "
                    "attribution.token_batch_size / attribution.max_length"
                )
            out.append(list(ids))
    return out


def save_token_dataset(
    path: Path, input_ids: Sequence[Sequence[int]], labels: Sequence[Sequence[int]] | None = None
) -> Path:
    """A `datasets` directory with input_ids, length (and labels): Bergson skips its own tokenisation."""
    from datasets import Dataset
    from datasets.table import InMemoryTable

    columns = {
        "input_ids": pa.array(input_ids, type=pa.list_(pa.int32())),
        "length": pa.array([len(ids) for ids in input_ids], type=pa.int64()),
    }
    if labels is not None:
        columns["labels"] = pa.array(labels, type=pa.list_(pa.int32()))
    Dataset(InMemoryTable(pa.table(columns))).save_to_disk(str(path))
    return path


@dataclass(frozen=True)
class QuerySet:
    name: str
    path: Path
    input_ids: list[list[int]]
    labels: list[list[int]]
    item_ids: list[str]
    n_label_tokens: list[int]
    sha256: str

    def describe(self) -> dict:
        return {"path": str(self.path), "n_queries": len(self.item_ids), "sha256": self.sha256}


def _list_column(table: pa.Table, name: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    column = table.column(name).combine_chunks()
    if not pa.types.is_list(column.type) and not pa.types.is_large_list(column.type):
        raise CapatlasError(f"{where}: column {name!r} must hold lists of token ids, not {column.type}")
    if column.null_count:
        raise CapatlasError(f"{where}: column {name!r} has missing rows")
    offsets = column.offsets.to_numpy().astype(np.int64)
    values = column.values.to_numpy(zero_copy_only=False).astype(np.int64)
    # Sliced arrays keep their parent's buffers; rebase to this slice.
    values = values[offsets[0] : offsets[-1]]
    return offsets - offsets[0], values


def load_query_set(path: str | os.PathLike, *, name: str, max_length: int) -> QuerySet:
    """Read and check a pre-tokenised query set (input_ids, labels with -100 on the prompt, item_id)."""
    from datasets import load_from_disk

    directory = Path(path).resolve()
    where = f"query set {directory}"
    if not directory.is_dir():
        raise CapatlasError(f"{where} does not exist: run `capatlas queries` first")
    try:
        ds = load_from_disk(str(directory))
    except Exception as exc:
        raise CapatlasError(f"{where} is not a `datasets` directory ({type(exc).__name__}: {exc})") from None
    if not hasattr(ds, "column_names") or isinstance(ds.column_names, dict):
        raise CapatlasError(f"{where} holds several splits; expected one saved Dataset")
    missing = [c for c in ("input_ids", "labels", "item_id") if c not in ds.column_names]
    if missing:
        raise CapatlasError(f"{where} lacks column(s) {', '.join(missing)}")
    if len(ds) == 0:
        raise CapatlasError(f"{where} has no rows")
    table = ds.select_columns(["input_ids", "labels", "item_id"]).data.table
    if ds._indices is not None:  # a saved selection: materialise its rows
        table = ds.select_columns(["input_ids", "labels", "item_id"]).flatten_indices().data.table
    ids_offsets, ids = _list_column(table, "input_ids", where)
    label_offsets, labels = _list_column(table, "labels", where)
    item_ids = [str(x) for x in table.column("item_id").to_pylist()]
    n = len(item_ids)

    lengths = np.diff(ids_offsets)
    bad = np.flatnonzero(np.diff(label_offsets) != lengths)
    if len(bad):
        i = int(bad[0])
        raise CapatlasError(
            f"{where}: item {item_ids[i]!r} has {lengths[i]} input_ids but {np.diff(label_offsets)[i]} labels"
        )
    too_long = np.flatnonzero(lengths > max_length)
    if len(too_long):
        i = int(too_long[0])
        raise CapatlasError(
            f"{where}: item {item_ids[i]!r} has {lengths[i]} tokens, more than fit one token batch ({max_length}); "
            "queries are never truncated here (the answer would be lost): shorten them in `capatlas queries` "
            "or raise attribution.token_batch_size / attribution.max_length"
        )
    row = np.repeat(np.arange(n), lengths)
    position = np.arange(len(ids)) - ids_offsets[row]
    labelled = labels != IGNORE_INDEX
    mismatch = np.flatnonzero(labelled & (labels != ids))
    if len(mismatch):
        i = int(row[mismatch[0]])
        raise CapatlasError(
            f"{where}: item {item_ids[i]!r} has a label that differs from its input token at position "
            f"{int(position[mismatch[0]])}; labels must be the input ids with -100 on prompt tokens"
        )
    # Position 0 is never a prediction target, so a label there adds no loss.
    supervised = np.bincount(row, weights=(labelled & (position >= 1)), minlength=n).astype(np.int64)
    empty = np.flatnonzero(supervised == 0)
    if len(empty):
        i = int(empty[0])
        raise CapatlasError(
            f"{where}: item {item_ids[i]!r} has no label token after position 0; its gradient would be empty"
        )
    seen: dict[str, int] = {}
    for i, item in enumerate(item_ids):
        if item in seen:
            raise CapatlasError(f"{where}: item_id {item!r} appears in rows {seen[item]} and {i}")
        seen[item] = i

    digest = hashlib.sha256()
    for array in (ids_offsets, ids, labels):
        digest.update(np.ascontiguousarray(array, dtype=np.int64).tobytes())
    digest.update("\0".join(item_ids).encode())
    return QuerySet(
        name=name,
        path=directory,
        input_ids=[ids[a:b].tolist() for a, b in zip(ids_offsets[:-1], ids_offsets[1:])],
        labels=[labels[a:b].tolist() for a, b in zip(label_offsets[:-1], label_offsets[1:])],
        item_ids=item_ids,
        n_label_tokens=supervised.tolist(),
        sha256=digest.hexdigest(),
    )


# --------------------------------------------------------------------------- bergson runs


@contextlib.contextmanager
def bergson_workdir(output: str | os.PathLike) -> Iterator[Path]:
    """A scratch directory beside `output` for Bergson's run directories, always removed."""
    final = Path(output).resolve()
    final.parent.mkdir(parents=True, exist_ok=True)
    # A job killed outright (SIGKILL, a lost node) could not clean up; only one job writes `output` at a time,
    # so any scratch of this output's name is such a leftover.
    for stale in final.parent.glob(f".{final.name}.bergson-*"):
        log.warning("removing stale scratch %s of an earlier, killed job", stale)
        shutil.rmtree(stale, ignore_errors=True)
    work = final.parent / f".{final.name}.bergson-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    work.mkdir()
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def prepare_run_path(index_cfg) -> None:
    """Clear `<run>` and `<run>.part`: Bergson nests its result in an existing run dir (bergson-notes 7)."""
    from bergson.utils.worker_utils import validate_run_path

    validate_run_path(index_cfg)


def parse_named_paths(values: Sequence[str], *, flag: str, require_name: bool) -> dict[str, Path]:
    """NAME=PATH (or PATH, named by its directory) pairs, in the order given."""
    named: dict[str, Path] = {}
    for value in values:
        if "=" in value:
            name, _, path = value.partition("=")
        elif require_name:
            raise CapatlasError(f"{flag} takes NAME=PATH, not {value!r}")
        else:
            path = value
            name = Path(value.rstrip("/")).name
        name = name.strip()
        if not name or not path:
            raise CapatlasError(f"{flag}: {value!r} lacks a name or a path")
        if name in named:
            raise CapatlasError(f"{flag}: benchmark {name!r} is given twice")
        named[name] = Path(path)
    return named

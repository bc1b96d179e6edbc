"""Typed config sections, generated from workflow/schemas/config.schema.yaml: do not edit.

Regenerate with `python -m capatlas.settings_schema` after changing the
schema (tests/test_config.py fails until then). Each section is a frozen
dataclass whose fields and defaults are the schema's; build one from a
config (validated or partial) with `Section.of(mapping)`, e.g.
`Attribution.of(config["attribution"])` or `Benchmark.of(entry)`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from capatlas.sections import Section


@dataclass(frozen=True)
class DemoModel(Section):
    """The DemoModel keys."""

    vocab_size: int = 2048
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    max_position_embeddings: int = 256
    sliding_window: int = 128


@dataclass(frozen=True)
class DemoTrain(Section):
    """The DemoTrain keys."""

    steps: int = 250
    batch_size: int = 8
    seq_len: int = 256
    lr: float = 0.003
    warmup_steps: int = 30
    weight_decay: float = 0.01
    threads: int = 1


@dataclass(frozen=True)
class Demo(Section):
    """The Demo keys."""

    enabled: bool = False
    n_files: int = 4
    docs_per_bin: int = 5
    small_bin_fraction: float = 0.05
    duplicate_fraction: float = 0.02
    short_fraction: float = 0.02
    items_per_benchmark: int = 24
    planted_bins_per_benchmark: int = 4
    planted_docs_per_bin: int = 12
    model: DemoModel = dataclasses.field(default_factory=lambda: DemoModel.of({}))
    train: DemoTrain = dataclasses.field(default_factory=lambda: DemoTrain.of({}))


@dataclass(frozen=True)
class LabelSource(Section):
    """The LabelSource keys."""

    source: str = 'field'
    field: str = ''  # Dotted path into the record, e.g. metadata.weborganizer.topic.
    sidecar: str = ''
    model: str = ''  # Local directory of the classifier (source = classifier).


@dataclass(frozen=True)
class CorpusLabels(Section):
    """The CorpusLabels keys."""

    topic: LabelSource = dataclasses.field(default_factory=lambda: LabelSource.of({}))
    format: LabelSource = dataclasses.field(default_factory=lambda: LabelSource.of({}))


@dataclass(frozen=True)
class CorpusClassifier(Section):
    """The CorpusClassifier keys."""

    batch_size: int = 64
    max_length: int = 512
    device: str = 'auto'
    precision: dict = 'auto'  # auto: bf16 on a GPU (its fast path), fp32 on a CPU.
    input_template: str = '{text}'
    trust_remote_code: bool = True


@dataclass(frozen=True)
class Corpus(Section):
    """The Corpus keys."""

    paths: list[str] = dataclasses.field(default_factory=lambda: [])
    id_field: str = 'id'
    text_field: str = 'text'
    labels: CorpusLabels = dataclasses.field(default_factory=lambda: CorpusLabels.of({}))
    classifier: CorpusClassifier = dataclasses.field(default_factory=lambda: CorpusClassifier.of({}))


@dataclass(frozen=True)
class ModelRef(Section):
    """The ModelRef keys."""

    path: str | None = None  # Local directory or HF hub id (read from the local cache).
    revision: str | None = None


@dataclass(frozen=True)
class Models(Section):
    """The Models keys."""

    document: ModelRef = dataclasses.field(default_factory=lambda: ModelRef.of({}))
    query: ModelRef = dataclasses.field(default_factory=lambda: ModelRef.of({}))
    tokenizer: str | None = None  # Tokenizer for the min-token filter; defaults to the document model's.


@dataclass(frozen=True)
class Manifest(Section):
    """The Manifest keys."""

    allocation: str = 'quota'
    docs_per_bin: int = 10000
    fraction: float = 0.01
    min_tokens: int = 512
    dedup: bool = True
    threads: int = 1
    files_per_scan: int = 64  # Corpus files per manifest scan job (the map step); the sample does not depend on it.
    input_hash: str = 'sampled'
    study_manifest: str | None = None
    study_population: str | None = None


@dataclass(frozen=True)
class Shards(Section):
    """The Shards keys."""

    count: int = 8
    target_hours: float | None = None
    mean_tokens: int | None = None


@dataclass(frozen=True)
class Attribution(Section):
    """TrackStar with Bergson (unit-normalised, R^-1/2 on both sides)."""

    projection_dim: int = 16  # Per-module two-sided random projection to p x p.
    precision: str = 'fp32'
    token_batch_size: int = 4096
    max_length: int = 4096
    truncation: bool = True
    preconditioner_docs: int = 10000  # Documents in the seeded sample (across all shards) that R is fitted on.
    target_downweight_components: int = 1000
    optimizer_state: str | None = None
    max_batch_size: int | None = 1
    ranks: int | None = None
    device: str = 'auto'
    threads: int | None = None


@dataclass(frozen=True)
class Analysis(Section):
    """Bin matrix, 2 x 2 contrasts, their uncertainty and robustness (influence, contrast)."""

    bootstrap: int = 1000
    permutations: int = 1000  # Permutations for the sharpness and per-bin interaction p-values; 0 turns them off.
    ci_level: float = 0.95
    top_k: int = 10  # Bins listed per benchmark in the summary's top_bins (highest and lowest z).


@dataclass(frozen=True)
class Benchmark(Section):
    """The Benchmark keys."""

    name: str
    domain: str
    capability: str
    loader: str
    source: str  # HF hub id (read from the local cache) or a local parquet/jsonl/save_to_disk path.
    config_name: str | None = None
    split: str = 'test'
    subjects: list[str] | str | None = None  # MMLU subjects, or a group name (social_sciences, stem, stem_hendrycks).
    prompt_format: str = 'olmes_rc'
    subject_header: bool = True
    fewshot: int = 0
    limit: int | None = None
    fields: dict = dataclasses.field(default_factory=lambda: {})


@dataclass(frozen=True)
class ItemRoles(Section):
    """How each benchmark's items (after `limit`) are divided between the attribution queries, the evaluation before and after unlearning, and the unlearning guard."""

    design: str = 'held_out'
    queries: float = 0.5
    guard: float = 0.0


@dataclass(frozen=True)
class Evaluation(Section):
    """Multiple-choice log-likelihood evaluation (capatlas evaluate, and after every unlearning run)."""

    batch_size: int = 32  # Sequences (item x choice) per forward pass.
    max_length: int | None = None
    prefix_token: str = 'eos'  # Token put in front of every context (the document separator the model saw).
    precision: str = 'fp32'
    device: str = 'auto'
    threads: int = 2


@dataclass(frozen=True)
class UnlearningUnits(Section):
    """The UnlearningUnits keys."""

    select: str = 'top_k'
    top_k: int = 1
    rank_by: str = 'zscore'
    aggregate: str = 'mean'
    explicit: list[str] = dataclasses.field(default_factory=lambda: [])


@dataclass(frozen=True)
class UnlearningForget(Section):
    """The UnlearningForget keys."""

    n_docs: int = 200
    random_n_docs: int | None = None
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0, 1, 2])
    conditions: list[str] = dataclasses.field(default_factory=lambda: ['influence', 'random'])
    match_tokens: bool = True
    match_pool: int = 5
    token_tolerance: float = 0.05


@dataclass(frozen=True)
class UnlearningRetain(Section):
    """The UnlearningRetain keys."""

    docs_per_unit: int = 1000
    resample_every: int = 200


@dataclass(frozen=True)
class UnlearningLora(Section):
    """The UnlearningLora keys."""

    enabled: bool = True
    r: int = 8
    alpha: float = 16
    dropout: float = 0.05
    target_modules: list[str] = dataclasses.field(default_factory=lambda: ['q_proj', 'k_proj', 'v_proj', 'o_proj'])


@dataclass(frozen=True)
class UnlearningTrainAutoLr(Section):
    """The study's NGDiff learning-rate search: every `every` optimizer steps, three probe steps at lr - delta, lr and lr + delta (each from the same parameters and optimizer state, then undone) measured on one retain example; the minimiser of the parabola through the three losses, clamped to [min, max], becomes the lr."""

    enabled: bool = False
    every: int = 10
    delta: float = 1e-05
    min: float = 1e-07
    max: float = 0.001


@dataclass(frozen=True)
class UnlearningTrain(Section):
    """The UnlearningTrain keys."""

    optimizer: str = 'adamw'
    lr: float = 0.0001
    weight_decay: float = 0.0
    batch_size: int = 4
    grad_accum: int = 4
    max_steps: int = 200
    max_length: int = 2048
    auto_lr: UnlearningTrainAutoLr = dataclasses.field(default_factory=lambda: UnlearningTrainAutoLr.of({}))


@dataclass(frozen=True)
class UnlearningStopPerplexity(Section):
    """The study's perplexity stop: every `every` optimizer steps the forget set's perplexity (exp of the mean next-token cross-entropy over all its chunks); the run stops once it reaches `threshold`: a number, or `shuffled` (the base model's perplexity on the forget chunks with their tokens shuffled within each chunk, seeded: forgetting until the set reads as word salad), or null (off)."""

    every: int = 200
    threshold: dict = None


@dataclass(frozen=True)
class UnlearningStop(Section):
    """The UnlearningStop keys."""

    guard_benchmark: str | None = None
    guard_metric: str = 'acc'
    guard_fraction: float = 0.9
    guard_every: int = 25
    forget_loss_threshold: float | None = None
    perplexity: UnlearningStopPerplexity = dataclasses.field(default_factory=lambda: UnlearningStopPerplexity.of({}))
    dose: str = 'matched'


@dataclass(frozen=True)
class UnlearningStats(Section):
    """The UnlearningStats keys."""

    metrics: list[str] = dataclasses.field(default_factory=lambda: ['acc', 'logprob'])
    confidence: float = 0.95
    bootstrap_resamples: int = 9999


@dataclass(frozen=True)
class Unlearning(Section):
    """Forget sets, per-unit unlearning runs and their paired statistics."""

    enabled: bool = False  # Put the unlearning runs and their summary into the default targets.
    unit: str = 'topic'
    targets: list[str] | None = None  # Target benchmarks; null means every configured benchmark.
    units: UnlearningUnits = dataclasses.field(default_factory=lambda: UnlearningUnits.of({}))
    forget: UnlearningForget = dataclasses.field(default_factory=lambda: UnlearningForget.of({}))
    retain: UnlearningRetain = dataclasses.field(default_factory=lambda: UnlearningRetain.of({}))
    method: str = 'ngdiff'
    retain_weight: float = 1.0
    npo_beta: float = 0.1
    lora: UnlearningLora = dataclasses.field(default_factory=lambda: UnlearningLora.of({}))
    train: UnlearningTrain = dataclasses.field(default_factory=lambda: UnlearningTrain.of({}))
    stop: UnlearningStop = dataclasses.field(default_factory=lambda: UnlearningStop.of({}))
    stats: UnlearningStats = dataclasses.field(default_factory=lambda: UnlearningStats.of({}))
    precision: str = 'fp32'
    device: str = 'auto'
    threads: int = 2
    seeds_per_job: str = 'one'


@dataclass(frozen=True)
class Export(Section):
    """The release bundle (capatlas export, results/<run>/release/)."""

    enabled: bool = False  # Build the bundle as part of the run's default targets.
    adapters_max_mb: float = 0
    license: str = 'odc-by'  # The data card's license (Dolma is ODC-BY; the model's and benchmarks' terms also apply).


@dataclass(frozen=True)
class CpuResource(Section):
    """The CpuResource keys."""

    threads: int = 2
    mem_mb: int = 4000
    runtime: int = 60  # minutes, first attempt
    gpu: int = 0


@dataclass(frozen=True)
class GpuResource(Section):
    """GPU rules (classifier labels, attribution, unlearning); gpu 0 runs them on CPU."""

    threads: int = 8
    mem_mb: int = 64000
    runtime: int = 240  # minutes, first attempt
    gpu: int = 1


@dataclass(frozen=True)
class ResourcesScoring(Section):
    """Each score_shard job's runtime from its shard's tokens (capatlas.resources)."""

    tokens_per_second: float | None = None
    safety: float = 1.5  # runtime = startup + safety x tokens / throughput
    startup_minutes: int = 15  # model load, preconditioner, query indices


@dataclass(frozen=True)
class Resources(Section):
    """Site-neutral resources per rule family; runtime and memory grow with the attempt."""

    cpu: CpuResource = dataclasses.field(default_factory=lambda: CpuResource.of({}))
    gpu: GpuResource = dataclasses.field(default_factory=lambda: GpuResource.of({}))
    scoring: ResourcesScoring = dataclasses.field(default_factory=lambda: ResourcesScoring.of({}))


@dataclass(frozen=True)
class Settings(Section):
    """A whole capatlas config."""

    run: str = 'demo'  # Run name; outputs go to <results_dir>/<run>/.
    results_dir: str = 'results'
    benchmark_root: str | None = None
    seed: int = 42
    offline: bool = True  # Set HF_HUB_OFFLINE=1 and HF_DATASETS_OFFLINE=1 for every stage.
    demo: Demo = dataclasses.field(default_factory=lambda: Demo.of({}))
    corpus: Corpus = dataclasses.field(default_factory=lambda: Corpus.of({}))
    models: Models = dataclasses.field(default_factory=lambda: Models.of({}))
    manifest: Manifest = dataclasses.field(default_factory=lambda: Manifest.of({}))
    shards: Shards = dataclasses.field(default_factory=lambda: Shards.of({}))
    attribution: Attribution = dataclasses.field(default_factory=lambda: Attribution.of({}))
    analysis: Analysis = dataclasses.field(default_factory=lambda: Analysis.of({}))
    benchmarks: list[Benchmark] = dataclasses.field(default_factory=lambda: [])
    item_roles: ItemRoles = dataclasses.field(default_factory=lambda: ItemRoles.of({}))
    evaluation: Evaluation = dataclasses.field(default_factory=lambda: Evaluation.of({}))
    unlearning: Unlearning = dataclasses.field(default_factory=lambda: Unlearning.of({}))
    export: Export = dataclasses.field(default_factory=lambda: Export.of({}))
    resources: Resources = dataclasses.field(default_factory=lambda: Resources.of({}))

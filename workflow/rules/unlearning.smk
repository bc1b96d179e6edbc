# Benchmark evaluation, forget sets, the unlearning jobs (each runs the
# conditions of a (target, unit) in one seed or all) and the paired
# statistics. Runs are enumerated from the config when the DAG is planned;
# top-k units are rank slots (top1, ...) that the forget_sets job resolves
# from the bin matrix.
from capatlas.plan import (
    GLOBAL_CONDITIONS,
    GLOBAL_UNIT,
    UNIT_CONDITIONS,
    planned_runs,
    unlearning_targets,
)

UNLEARNING = f"{RUN}/unlearning"
EVAL_DIR = f"{RUN}/eval"
UNLEARN_CFG = config["unlearning"]
UNLEARN_MODEL_DIR = "adapter" if UNLEARN_CFG["lora"]["enabled"] else "checkpoint"
WORLD_ARG = flag("--world", DEMO_WORLD if DEMO else None)

try:
    UNLEARN_RUNS = planned_runs(config)
    UNLEARN_TARGETS = unlearning_targets(config)
except CapatlasError as exc:
    raise WorkflowError(str(exc)) from None

FINAL_TARGETS.append(f"{EVAL_DIR}/base.json")
if UNLEARN_CFG["enabled"]:
    FINAL_TARGETS.extend(
        [
            f"{UNLEARNING}/summary.parquet",
            f"{UNLEARNING}/paired_stats.parquet",
            *expand(
                f"{RUN}/figures/unlearning_{{kind}}_{{metric}}.png",
                kind=["paired", "damage"],
                metric=UNLEARN_CFG["stats"]["metrics"],
            ),
        ]
    )


EVALUATE_BASE_LOG = f"{RUN}/logs/eval/base.log"


rule evaluate_base:
    input:
        unpack(world_input),
        model=document_model(),
    output:
        evaluation=f"{EVAL_DIR}/base.json",
    log:
        EVALUATE_BASE_LOG,
    benchmark:
        f"{RUN}/benchmarks/eval/base.tsv"
    conda:
        "../../envs/unlearning.yaml"
    threads: config["evaluation"]["threads"]
    resources:
        **attempt_resources("gpu", rule="evaluate_base", log=EVALUATE_BASE_LOG),
    params:
        section=config_section("seed", "benchmarks", "item_roles", "evaluation"),
        world=WORLD_ARG,
    shell:
        'capatlas evaluate --config "$CAPATLAS_CONFIG" --model {input.model:q}'
        " {params.world:q} --out {output.evaluation:q} > {log:q} 2>&1"


rule forget_sets:
    input:
        unpack(forget_set_inputs),
    output:
        forget=[f"{UNLEARNING}/{r.path}/forget_set.parquet" for r in UNLEARN_RUNS],
        retain=expand(
            f"{UNLEARNING}/retain/seed{{seed}}.parquet",
            seed=UNLEARN_CFG["forget"]["seeds"],
        ),
        summary=f"{UNLEARNING}/forget_sets.json",
    log:
        f"{RUN}/logs/unlearning/forget_sets.log",
    benchmark:
        f"{RUN}/benchmarks/unlearning/forget_sets.tsv"
    # The unlearning chain is the DAG's longest after the bin matrix: the
    # figures and the contrast fill the cores it leaves.
    priority: 1
    conda:
        "../../envs/unlearning.yaml"
    threads: 1
    resources:
        **attempt_resources("cpu"),
    params:
        section=config_section(
            "seed", "benchmarks", "unlearning", ignore=["unlearning.seeds_per_job"]
        ),
        bin_matrix=lambda wildcards, input: flag(
            "--bin-matrix", input.bin_matrix if "bin_matrix" in input.keys() else None
        ),
        # Texts come from every shard; the input is shards.json (SHARDS_SUMMARY).
        shards=SHARD_FILES,
        out=directory_of("output", "summary"),
    shell:
        'capatlas forget-sets --config "$CAPATLAS_CONFIG" --manifest {input.manifest:q}'
        " --scores {input.scores:q} --shards {params.shards:q} {params.bin_matrix:q}"
        " --out {params.out:q} > {log:q} 2>&1"


# One job per (target, unit, seed), or per (target, unit) with
# seeds_per_job: all: the conditions a paired test compares run in one
# process (one start-up, one node, one float path), each from the base
# model. Global units have their own conditions, hence one rule per kind
# of unit, defined by the same loop.
UNLEARN_RULES = [
    ("unlearn", "{unit}", UNIT_CONDITIONS, f"(?!{GLOBAL_UNIT}$)[^/]+"),
    ("unlearn_global", GLOBAL_UNIT, GLOBAL_CONDITIONS, GLOBAL_UNIT),
]
for unlearn_rule, unlearn_unit, kind_conditions, unit_pattern in UNLEARN_RULES:
    runs = unlearn_runs(
        unlearn_unit,
        [c for c in UNLEARN_CFG["forget"]["conditions"] if c in kind_conditions],
    )
    if not runs["forget"]:
        continue

    rule:
        name:
            unlearn_rule
        input:
            unpack(world_input),
            model=document_model(),
            forget=runs["forget"],
            retain=runs["retain"],
            baseline=rules.evaluate_base.output.evaluation,
        output:
            model=[directory(path) for path in runs["model"]],
            train_log=runs["train_log"],
            evaluation=runs["evaluation"],
        log:
            runs["log"],
        benchmark:
            runs["benchmark"]
        wildcard_constraints:
            target="|".join(UNLEARN_TARGETS) or "NONE",
            unit=unit_pattern,
            seed=r"\d+",
        priority: 1
        conda:
            "../../envs/unlearning.yaml"
        threads: UNLEARN_CFG["threads"]
        resources:
            **attempt_resources("gpu", rule=unlearn_rule, log=runs["log"]),
        params:
            section=config_section(
                "seed",
                "benchmarks",
                "item_roles",
                "evaluation",
                "unlearning",
                ignore=["unlearning.seeds_per_job"],
            ),
            world=WORLD_ARG,
            out=lambda wildcards, output: [
                os.path.dirname(path) for path in output.evaluation
            ],
        shell:
            'capatlas unlearn --config "$CAPATLAS_CONFIG" --model {input.model:q}'
            " --forget-set {input.forget:q} --retain-pool {input.retain:q}"
            " --baseline {input.baseline:q} {params.world:q} --out {params.out:q} > {log:q} 2>&1"


rule unlearning_summary:
    input:
        baseline=rules.evaluate_base.output.evaluation,
        runs=[f"{UNLEARNING}/{r.path}/eval.json" for r in UNLEARN_RUNS],
    output:
        summary=report(
            f"{UNLEARNING}/summary.parquet",
            caption="../report/tables.rst",
            category="Tables",
            subcategory="unlearning",
            labels={"table": "unlearning runs"},
        ),
        paired=report(
            f"{UNLEARNING}/paired_stats.parquet",
            caption="../report/tables.rst",
            category="Tables",
            subcategory="unlearning",
            labels={"table": "paired statistics"},
        ),
        overview=f"{UNLEARNING}/summary.json",
        paired_figures=report(
            expand(
                f"{RUN}/figures/unlearning_paired_{{metric}}.png",
                metric=UNLEARN_CFG["stats"]["metrics"],
            ),
            caption="../report/unlearning/paired.rst",
            category="Unlearning",
            subcategory="paired differences",
        ),
        damage_figures=report(
            expand(
                f"{RUN}/figures/unlearning_damage_{{metric}}.png",
                metric=UNLEARN_CFG["stats"]["metrics"],
            ),
            caption="../report/unlearning/damage.rst",
            category="Unlearning",
            subcategory="target vs off-target damage",
        ),
    log:
        f"{RUN}/logs/unlearning/summary.log",
    benchmark:
        f"{RUN}/benchmarks/unlearning/summary.tsv"
    conda:
        "../../envs/unlearning.yaml"
    threads: 1
    resources:
        **attempt_resources("cpu"),
    params:
        section=config_section(
            "seed", "unlearning", ignore=["unlearning.seeds_per_job"]
        ),
        unlearning_dir=directory_of("output", "summary"),
        figures=directory_of("output", "paired_figures"),
    shell:
        'capatlas unlearning-summary --config "$CAPATLAS_CONFIG" --baseline {input.baseline:q}'
        " --unlearning-dir {params.unlearning_dir:q} --figures {params.figures:q} > {log:q} 2>&1"

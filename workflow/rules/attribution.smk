# TrackStar attribution with Bergson: benchmark queries, one preconditioner
# for the whole corpus, one query index per benchmark (built in one job),
# one job per shard.

BENCHMARKS = [b["name"] for b in config["benchmarks"]]
ATTRIBUTION = f"{RUN}/attribution"
QUERY_INDICES = expand(f"{ATTRIBUTION}/queries/{{benchmark}}", benchmark=BENCHMARKS)


QUERY_SETS = expand(f"{RUN}/queries/{{benchmark}}", benchmark=BENCHMARKS)
FINAL_TARGETS.extend(QUERY_SETS)
FINAL_TARGETS.extend(
    expand(
        [
            f"{ATTRIBUTION}/scores/shard-{{shard}}.parquet",
            f"{ATTRIBUTION}/binsums/shard-{{shard}}.safetensors",
        ],
        shard=SHARD_IDS,
    )
)


OPTIMIZER_STATE = optimizer_state()
# A given path overrides attribution.optimizer_state; an empty flag keeps "none".
OPTIMIZER_FLAG = flag("--optimizer-state", OPTIMIZER_STATE)
ATTRIBUTION_SECTION = config_section("seed", "attribution")
ATTRIBUTION_THREADS = (
    config["attribution"]["threads"] or config["resources"]["gpu"]["threads"]
)


# One job for every benchmark's query set: the imports are paid once.
rule queries:
    input:
        unpack(lambda wildcards: {"world": DEMO_WORLD} if DEMO else {}),
        tokenizer=query_tokenizer(),
    output:
        queries=[directory(path) for path in QUERY_SETS],
    log:
        f"{RUN}/logs/queries.log",
    benchmark:
        f"{RUN}/benchmarks/queries.tsv"
    conda:
        "../../envs/attribution.yaml"
    threads: 1
    resources:
        **attempt_resources("cpu"),
    params:
        # What a query set depends on; attribution.threads or device, say, do not change it.
        section=config_section(
            "seed",
            "benchmarks",
            "item_roles",
            "attribution.max_length",
            "attribution.token_batch_size",
            "attribution.truncation",
        ),
        names=BENCHMARKS,
        world=flag("--world", DEMO_WORLD if DEMO else None),
    shell:
        'capatlas queries --config "$CAPATLAS_CONFIG" --benchmark {params.names:q}'
        " --tokenizer {input.tokenizer:q} {params.world:q} --out {output.queries:q} > {log:q} 2>&1"


PRECONDITIONER_LOG = f"{RUN}/logs/attribution/preconditioner.log"


rule preconditioner:
    input:
        unpack(attribution_inputs("model", "shards", "queries")),
    output:
        preconditioner=directory(f"{ATTRIBUTION}/preconditioner"),
    log:
        PRECONDITIONER_LOG,
    benchmark:
        f"{RUN}/benchmarks/attribution/preconditioner.tsv"
    conda:
        "../../envs/attribution.yaml"
    threads: ATTRIBUTION_THREADS
    resources:
        **attempt_resources("gpu", rule="preconditioner", log=PRECONDITIONER_LOG),
    params:
        section=ATTRIBUTION_SECTION,
        revision=revision_flag("document"),
        optimizer_state=OPTIMIZER_FLAG,
        shards=SHARD_FILES,
        queries=lambda wildcards, input: named_paths(input.queries),
    shell:
        'capatlas preconditioner --config "$CAPATLAS_CONFIG" --model {input.model:q} {params.revision:q}'
        " --shards {params.shards:q} --queries {params.queries:q} {params.optimizer_state:q}"
        " --threads {threads:q} --out {output.preconditioner:q} > {log:q} 2>&1"


QUERY_GRADIENTS_LOG = f"{RUN}/logs/attribution/query_gradients.log"


# One job for every benchmark: Bergson's import and the model's hash are paid once.
rule query_gradients:
    input:
        unpack(attribution_inputs("query_model", "queries")),
        preconditioner=f"{ATTRIBUTION}/preconditioner",
    output:
        indices=[directory(path) for path in QUERY_INDICES],
    log:
        QUERY_GRADIENTS_LOG,
    benchmark:
        f"{RUN}/benchmarks/attribution/query_gradients.tsv"
    conda:
        "../../envs/attribution.yaml"
    threads: ATTRIBUTION_THREADS
    resources:
        **attempt_resources("gpu", rule="query_gradients", log=QUERY_GRADIENTS_LOG),
    params:
        section=ATTRIBUTION_SECTION,
        revision=revision_flag("query"),
        optimizer_state=OPTIMIZER_FLAG,
        queries=lambda wildcards, input: named_paths(input.queries),
        out=lambda wildcards, output: named_paths(output.indices),
    shell:
        'capatlas query-gradients --config "$CAPATLAS_CONFIG" --model {input.query_model:q} {params.revision:q}'
        " --queries {params.queries:q} --preconditioner {input.preconditioner:q} {params.optimizer_state:q}"
        " --threads {threads:q} --out {params.out:q} > {log:q} 2>&1"


SCORE_LOG = f"{RUN}/logs/attribution/scores/shard-{{shard}}.log"


rule score_shard:
    input:
        unpack(attribution_inputs("model", "query_model", "query_indices", "shards")),
        preconditioner=f"{ATTRIBUTION}/preconditioner",
    output:
        scores=f"{ATTRIBUTION}/scores/shard-{{shard}}.parquet",
        binsums=f"{ATTRIBUTION}/binsums/shard-{{shard}}.safetensors",
    log:
        SCORE_LOG,
    benchmark:
        f"{RUN}/benchmarks/attribution/scores/shard-{{shard}}.tsv"
    wildcard_constraints:
        shard="[0-9]{5}",
    conda:
        "../../envs/attribution.yaml"
    threads: ATTRIBUTION_THREADS
    resources:
        **attempt_resources(
            "gpu", rule="score_shard", log=SCORE_LOG, runtime=score_runtime
        ),
    params:
        section=ATTRIBUTION_SECTION,
        # The job draws its documents' part of the bootstrap (seed is in the section).
        bootstrap=config["analysis"]["bootstrap"],
        revision=revision_flag("document"),
        # Only a query model of its own is named: hashing a 7B model twice per shard is waste.
        query_model=(
            flag("--query-model", query_model())
            + revision_flag("query", "--query-revision")
            if config["models"]["query"]["path"]
            else []
        ),
        optimizer_state=OPTIMIZER_FLAG,
        # The shard file itself is not a declared output of `shards` (see
        # SHARDS_SUMMARY): the job depends on shards.json and reads this path.
        shard=SHARD_PATTERN,
        indices=lambda wildcards, input: named_paths(input.query_indices),
    shell:
        'capatlas score-shard --config "$CAPATLAS_CONFIG" --model {input.model:q} {params.revision:q}'
        " {params.query_model:q} --shard {params.shard:q}"
        " --preconditioner {input.preconditioner:q} --query-index {params.indices:q}"
        " {params.optimizer_state:q} --threads {threads:q}"
        " --out-scores {output.scores:q} --out-binsums {output.binsums:q} > {log:q} 2>&1"

# The embedded demo: a synthetic corpus with planted structure and a tiny
# OLMo-3-architecture model trained on it, so every later stage can be
# checked against known ground truth on a CPU.

if DEMO:
    FINAL_TARGETS.append(DEMO_MODEL)


rule demo_world:
    output:
        world=directory(DEMO_WORLD),
    log:
        f"{RUN}/logs/demo_world.log",
    benchmark:
        f"{RUN}/benchmarks/demo_world.tsv"
    conda:
        "../../envs/demo.yaml"
    threads: 1
    resources:
        **attempt_resources("cpu"),
    params:
        section=config_section("seed", "demo"),
    shell:
        'capatlas demo-world --config "$CAPATLAS_CONFIG" --out {output.world:q} > {log:q} 2>&1'


# Its own job so that the manifest, shards and queries (which only count and
# cut tokens) run while the model trains.
rule demo_tokenizer:
    input:
        world=DEMO_WORLD,
    output:
        tokenizer=directory(DEMO_TOKENIZER),
    log:
        f"{RUN}/logs/demo_tokenizer.log",
    benchmark:
        f"{RUN}/benchmarks/demo_tokenizer.tsv"
    conda:
        "../../envs/demo.yaml"
    threads: 1
    resources:
        **attempt_resources("cpu"),
    params:
        section=config_section("demo.model.vocab_size"),
    shell:
        'capatlas demo-tokenizer --config "$CAPATLAS_CONFIG" --world {input.world:q}'
        " --out {output.tokenizer:q} > {log:q} 2>&1"


rule demo_model:
    input:
        world=DEMO_WORLD,
        tokenizer=DEMO_TOKENIZER,
    output:
        model=directory(DEMO_MODEL),
    log:
        f"{RUN}/logs/demo_model.log",
    benchmark:
        f"{RUN}/benchmarks/demo_model.tsv"
    # The longest job of the demo: it starts first, the manifest, shards and
    # queries take the other core.
    priority: 2
    conda:
        "../../envs/demo.yaml"
    threads: config["demo"]["train"]["threads"]
    resources:
        **attempt_resources("cpu"),
    params:
        section=config_section("seed", "demo"),
    shell:
        'capatlas demo-model --config "$CAPATLAS_CONFIG" --world {input.world:q}'
        " --tokenizer {input.tokenizer:q} --out {output.model:q} > {log:q} 2>&1"

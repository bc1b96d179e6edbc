# TrackStar attribution with Bergson: benchmark queries, one preconditioner
# for the whole corpus, one query index per benchmark, one job per shard.

BENCHMARKS = [b["name"] for b in config["benchmarks"]]


def query_model():
    return config["models"]["query"]["path"] or document_model()


rule queries:
    input:
        unpack(lambda wildcards: {"world": DEMO_WORLD} if DEMO else {}),
        model=query_model(),
    output:
        queries=directory(f"{RUN}/queries/{{benchmark}}"),
    log:
        f"{RUN}/logs/queries/{{benchmark}}.log",
    wildcard_constraints:
        benchmark="|".join(BENCHMARKS) or "NONE",
    conda:
        "../../envs/attribution.yaml"
    threads: 1
    resources:
        **attempt_resources("cpu"),
    params:
        section=config_section("seed", "benchmarks", "attribution"),
        world=f"--world {DEMO_WORLD}" if DEMO else "",
    shell:
        "{CAPATLAS} queries --config {RESOLVED_CONFIG} --benchmark {wildcards.benchmark}"
        " --tokenizer {input.model} {params.world} --out {output.queries} > {log} 2>&1"

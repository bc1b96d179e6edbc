# Working set: optional classifier labels, the stratified manifest, and
# token-balanced shards whose count is fixed by config (no checkpoint needed).


rule labels:
    input:
        corpus=lambda wildcards: CORPUS_BY_KEY[wildcards.file_key],
        models=[
            config["corpus"]["labels"][facet]["model"]
            for facet in ("topic", "format")
            if config["corpus"]["labels"][facet]["source"] == "classifier"
        ],
    output:
        labels=f"{RUN}/labels/{{file_key}}.parquet",
    log:
        f"{RUN}/logs/labels/{{file_key}}.log",
    benchmark:
        f"{RUN}/benchmarks/labels/{{file_key}}.tsv"
    wildcard_constraints:
        file_key="[^/]+",
    conda:
        "../../envs/labels.yaml"
    threads: config["resources"]["gpu"]["threads"]
    resources:
        **attempt_resources("gpu"),
    params:
        section=config_section("corpus"),
    shell:
        "{CAPATLAS} labels --config {RESOLVED_CONFIG} --file {input.corpus}"
        " --out {output.labels} > {log} 2>&1"


def manifest_inputs(wildcards):
    inputs = {"tokenizer": tokenizer_path()}
    if DEMO:
        inputs["world"] = DEMO_WORLD
    else:
        inputs["corpus"] = CORPUS_FILES
        if CLASSIFIED:
            inputs["labels"] = [f"{RUN}/labels/{key}.parquet" for key in CORPUS_BY_KEY]
    return inputs


rule manifest:
    input:
        unpack(manifest_inputs),
    output:
        manifest=f"{RUN}/manifest/manifest.parquet",
        locations=f"{RUN}/manifest/locations.parquet",
        summary=f"{RUN}/manifest/bin_summary.csv",
        contract=f"{RUN}/manifest/contract.json",
    log:
        f"{RUN}/logs/manifest.log",
    benchmark:
        f"{RUN}/benchmarks/manifest.tsv"
    conda:
        "../../envs/corpus.yaml"
    threads: config["manifest"]["threads"]
    resources:
        **attempt_resources("cpu"),
    params:
        section=config_section("seed", "corpus", "manifest"),
        # Real corpora are expanded from corpus.paths inside the stage (a
        # command line could not hold thousands of file names).
        files=f"--files {DEMO_WORLD}/corpus/*.jsonl.zst" if DEMO else "",
        labels_dir=f"--labels-dir {RUN}/labels" if CLASSIFIED else "",
        out=f"{RUN}/manifest",
    shell:
        "{CAPATLAS} manifest --config {RESOLVED_CONFIG} --out {params.out}"
        " {params.files} {params.labels_dir} --tokenizer {input.tokenizer}"
        " --threads {threads} > {log} 2>&1"


rule shards:
    input:
        manifest=rules.manifest.output.manifest,
        locations=rules.manifest.output.locations,
    output:
        shards=expand(f"{RUN}/shards/shard-{{shard}}.parquet", shard=SHARD_IDS),
        summary=f"{RUN}/shards/shards.json",
    log:
        f"{RUN}/logs/shards.log",
    benchmark:
        f"{RUN}/benchmarks/shards.tsv"
    conda:
        "../../envs/corpus.yaml"
    threads: 1
    resources:
        **attempt_resources("cpu"),
    params:
        section=config_section("shards"),
        manifest_dir=f"{RUN}/manifest",
        out=f"{RUN}/shards",
    shell:
        "{CAPATLAS} shard --config {RESOLVED_CONFIG} --manifest {params.manifest_dir}"
        " --out {params.out} > {log} 2>&1"

# Working set: optional classifier labels, the stratified manifest, and
# token-balanced shards whose count is fixed by config (no checkpoint needed).

FINAL_TARGETS.extend(
    [
        f"{RUN}/manifest/manifest.parquet",
        f"{RUN}/manifest/bin_summary.csv",
        SHARDS_SUMMARY,
    ]
)


LABELS_LOG = f"{RUN}/logs/labels/{{file_key}}.log"


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
        LABELS_LOG,
    benchmark:
        f"{RUN}/benchmarks/labels/{{file_key}}.tsv"
    wildcard_constraints:
        file_key="[^/]+",
    conda:
        "../../envs/labels.yaml"
    threads: config["resources"]["gpu"]["threads"]
    resources:
        **attempt_resources("gpu", rule="labels", log=LABELS_LOG),
    params:
        # Not corpus.paths: adding or removing files must not relabel the others.
        section=config_section(
            "corpus.id_field",
            "corpus.text_field",
            "corpus.labels",
            "corpus.classifier",
        ),
    shell:
        'capatlas labels --config "$CAPATLAS_CONFIG" --file {input.corpus:q}'
        " --out {output.labels:q} > {log:q} 2>&1"


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
        # A glob: `capatlas manifest` expands it (the shell never sees it unquoted).
        files=flag("--files", f"{DEMO_WORLD}/corpus/*.jsonl.zst" if DEMO else None),
        labels_dir=flag("--labels-dir", f"{RUN}/labels" if CLASSIFIED else None),
        out=directory_of("output", "manifest"),
    shell:
        'capatlas manifest --config "$CAPATLAS_CONFIG" --out {params.out:q}'
        " {params.files:q} {params.labels_dir:q} --tokenizer {input.tokenizer:q}"
        " --threads {threads:q} > {log:q} 2>&1"


rule shards:
    input:
        manifest=rules.manifest.output.manifest,
        locations=rules.manifest.output.locations,
    # The shard files (SHARD_FILES) are written beside shards.json, in one
    # atomic directory swap, but only the summary is declared (see SHARDS_SUMMARY).
    output:
        summary=SHARDS_SUMMARY,
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
        manifest_dir=directory_of("input", "manifest"),
        out=directory_of("output", "summary"),
    shell:
        'capatlas shard --config "$CAPATLAS_CONFIG" --manifest {params.manifest_dir:q}'
        " --out {params.out:q} > {log:q} 2>&1"

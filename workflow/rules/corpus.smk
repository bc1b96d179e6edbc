# Working set as map-reduce: one manifest_scan job per group of corpus files
# (classifying lazily where a facet comes from a classifier), one merge into
# the stratified manifest, and token-balanced shards whose count is fixed by
# config (no checkpoint needed).

FINAL_TARGETS.extend(
    [
        f"{RUN}/manifest/manifest.parquet",
        f"{RUN}/manifest/bin_summary.csv",
        SHARDS_SUMMARY,
    ]
)


SCAN_LOG = f"{RUN}/logs/manifest_scan/{{group}}.log"


rule manifest_scan:
    input:
        unpack(scan_inputs),
    output:
        # A directory: the partial's arrays, candidates and scan.json (capatlas.artifacts.scan_partial).
        scan=directory(SCAN_PATTERN),
    log:
        SCAN_LOG,
    benchmark:
        f"{RUN}/benchmarks/manifest_scan/{{group}}.tsv"
    wildcard_constraints:
        group="[^/]+",
    conda:
        "../../envs/corpus.yaml"
    threads: config["manifest"]["threads"]
    resources:
        # With a classifier facet the scan classifies (lazily) on a GPU.
        **attempt_resources(
            "gpu" if CLASSIFIED else "cpu",
            rule="manifest_scan",
            log=SCAN_LOG if CLASSIFIED else None,
        ),
    params:
        section=config_section(
            "seed",
            "corpus.id_field",
            "corpus.text_field",
            "corpus.labels",
            "corpus.classifier",
            "manifest",
            ignore=("manifest.threads",),
        ),
        files=lambda wildcards: SCAN_GROUPS[wildcards.group],
        files_identity=scan_files_identity,
    shell:
        'capatlas manifest-scan --config "$CAPATLAS_CONFIG" --group {wildcards.group:q}'
        " --out {output.scan:q} --files {params.files:q} --tokenizer {input.tokenizer:q}"
        " --threads {threads:q} > {log:q} 2>&1"


if STUDY_MANIFEST:

    # The study's own working set, imported: attribution runs on exactly its documents.
    rule manifest:
        input:
            study=STUDY_MANIFEST,
            tokenizer=tokenizer_path(),
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
            section=config_section(
                "seed", "corpus", "manifest", ignore=("manifest.threads",)
            ),
            population=flag("--population", config["manifest"]["study_population"]),
            out=directory_of("output", "manifest"),
        shell:
            'capatlas import-study-manifest --config "$CAPATLAS_CONFIG" --study {input.study:q}'
            " --out {params.out:q} {params.population:q} --tokenizer {input.tokenizer:q}"
            " --threads {threads:q} > {log:q} 2>&1"

else:

    rule manifest:
        input:
            scans=expand(SCAN_PATTERN, group=SCAN_GROUPS),
            tokenizer=tokenizer_path(),
            classifiers=CLASSIFIER_MODELS,
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
            section=config_section(
                "seed", "corpus", "manifest", ignore=("manifest.threads",)
            ),
            # The merge checks that the scans cover exactly these files (the config's corpus.paths otherwise).
            files=flag("--files", DEMO_CORPUS_GLOB if DEMO else None),
            out=directory_of("output", "manifest"),
        shell:
            'capatlas manifest --config "$CAPATLAS_CONFIG" --out {params.out:q} --scans {input.scans:q}'
            " {params.files:q} --tokenizer {input.tokenizer:q} --threads {threads:q} > {log:q} 2>&1"


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
        # Derived from shards.target_hours and the throughput when set: a new count re-cuts the shards.
        n_shards=len(SHARD_IDS),
        manifest_dir=directory_of("input", "manifest"),
        out=directory_of("output", "summary"),
    shell:
        'capatlas shard --config "$CAPATLAS_CONFIG" --manifest {params.manifest_dir:q}'
        " --out {params.out:q} > {log:q} 2>&1"

# The release bundle: every output of the run, the scores gathered, the study's
# CSV layout, provenance, a dataset card and checksums. Built on request
# (`snakemake .../release`) or, with export.enabled, with the run.

RELEASE = f"{RUN}/release"
# Everything `all` builds so far: the bundle is made from a finished run.
RELEASE_INPUTS = list(FINAL_TARGETS)


rule export:
    input:
        run=RELEASE_INPUTS,
        scores=rules.influence.input.scores,
        atlas=rules.atlas.output.page,
    output:
        bundle=directory(RELEASE),
    log:
        f"{RUN}/logs/export.log",
    benchmark:
        f"{RUN}/benchmarks/export.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        **attempt_resources("cpu"),
    params:
        section=config_section("export"),
        # The bundle lives in the run's directory.
        run=directory_of("output", "bundle"),
    shell:
        'capatlas export --config "$CAPATLAS_CONFIG" --run {params.run:q}'
        " --out {output.bundle:q} > {log:q} 2>&1"


if config["export"]["enabled"]:
    FINAL_TARGETS.append(RELEASE)

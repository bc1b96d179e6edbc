# Bin-level influence matrix, 2 x 2 contrast statistics and their figures.

INFLUENCE = f"{RUN}/influence"
CONTRAST = f"{RUN}/contrast"
FIGURES = f"{RUN}/figures"
ANALYSIS_SECTION = config_section("seed", "analysis", "benchmarks")

FINAL_TARGETS.extend(
    [
        f"{INFLUENCE}/bin_matrix.parquet",
        f"{CONTRAST}/summary.json",
        f"{FIGURES}/atlas.html",
        *([f"{CONTRAST}/demo_recovery.json"] if DEMO else []),
        *expand(f"{FIGURES}/heatmap_{{benchmark}}.png", benchmark=BENCHMARKS),
        f"{FIGURES}/contrast_bars.png",
        f"{FIGURES}/correlations.png",
    ]
)


rule influence:
    input:
        scores=expand(
            f"{RUN}/attribution/scores/shard-{{shard}}.parquet", shard=SHARD_IDS
        ),
        binsums=expand(
            f"{RUN}/attribution/binsums/shard-{{shard}}.safetensors", shard=SHARD_IDS
        ),
        # Sampled and eligible documents per bin: the finite-population correction.
        bin_summary=rules.manifest.output.summary,
    output:
        matrix=report(
            f"{INFLUENCE}/bin_matrix.parquet",
            caption="../report/tables.rst",
            category="Tables",
            subcategory="influence",
            labels={"table": "bin matrix"},
        ),
        topics=report(
            f"{INFLUENCE}/topic_marginals.parquet",
            caption="../report/tables.rst",
            category="Tables",
            subcategory="influence",
            labels={"table": "topic marginals"},
        ),
        formats=report(
            f"{INFLUENCE}/format_marginals.parquet",
            caption="../report/tables.rst",
            category="Tables",
            subcategory="influence",
            labels={"table": "format marginals"},
        ),
        bootstrap=f"{INFLUENCE}/bin_bootstrap.npz",
    log:
        f"{RUN}/logs/influence.log",
    benchmark:
        f"{RUN}/benchmarks/influence.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        **attempt_resources("cpu"),
    params:
        # top_k and permutations are the contrast's alone.
        section=config_section("seed", "analysis.bootstrap", "analysis.ci_level"),
        out=directory_of("output", "matrix"),
    shell:
        'capatlas influence --config "$CAPATLAS_CONFIG" --scores {input.scores:q}'
        " --binsums {input.binsums:q} --bin-summary {input.bin_summary:q}"
        " --out {params.out:q} > {log:q} 2>&1"


rule contrast:
    input:
        unpack(lambda wildcards: {"world": DEMO_WORLD} if DEMO else {}),
        matrix=rules.influence.output.matrix,
        bootstrap=rules.influence.output.bootstrap,
    output:
        summary=report(
            f"{CONTRAST}/summary.json",
            caption="../report/tables.rst",
            category="Tables",
            subcategory="contrast",
            labels={"table": "contrast summary"},
        ),
        interaction=f"{CONTRAST}/interaction.parquet",
        topics=report(
            f"{CONTRAST}/topic_contrast.parquet",
            caption="../report/tables.rst",
            category="Tables",
            subcategory="contrast",
            labels={"table": "topic contrasts"},
        ),
        formats=report(
            f"{CONTRAST}/format_contrast.parquet",
            caption="../report/tables.rst",
            category="Tables",
            subcategory="contrast",
            labels={"table": "format contrasts"},
        ),
        loo=f"{CONTRAST}/leave_one_bin_out.parquet",
        effects=report(
            f"{CONTRAST}/facet_effects.parquet",
            caption="../report/tables.rst",
            category="Tables",
            subcategory="contrast",
            labels={"table": "standardised effects"},
        ),
        recovery=[f"{CONTRAST}/demo_recovery.json"] if DEMO else [],
    log:
        f"{RUN}/logs/contrast.log",
    benchmark:
        f"{RUN}/benchmarks/contrast.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        **attempt_resources("cpu"),
    params:
        section=ANALYSIS_SECTION,
        truth=flag(
            "--ground-truth", f"{DEMO_WORLD}/ground_truth.json" if DEMO else None
        ),
        out=directory_of("output", "summary"),
    shell:
        'capatlas contrast --config "$CAPATLAS_CONFIG" --bin-matrix {input.matrix:q}'
        " --out {params.out:q} {params.truth:q} > {log:q} 2>&1"


# The atlas page: one self-contained HTML file (heatmaps, each bin's top documents, contrasts).
rule atlas:
    input:
        matrix=rules.influence.output.matrix,
        summary=rules.contrast.output.summary,
        scores=rules.influence.input.scores,
        shards=SHARDS_SUMMARY,
    output:
        page=report(
            f"{FIGURES}/atlas.html",
            caption="../report/atlas.rst",
            category="Influence",
            subcategory="atlas",
        ),
    log:
        f"{RUN}/logs/figures/atlas.log",
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        **attempt_resources("cpu"),
    params:
        shards=SHARD_FILES,
    shell:
        'capatlas atlas --config "$CAPATLAS_CONFIG" --influence {input.matrix:q}'
        " --contrast {input.summary:q} --scores {input.scores:q} --shards {params.shards:q}"
        " --out {output.page:q} > {log:q} 2>&1"


# One job draws every benchmark's heatmap: the job is matplotlib's import.
rule heatmaps:
    input:
        matrix=rules.influence.output.matrix,
    output:
        heatmaps=[
            report(
                f"{FIGURES}/heatmap_{benchmark}.png",
                caption="../report/heatmap.rst",
                category="Influence",
                subcategory="heatmaps",
                labels={"benchmark": benchmark},
            )
            for benchmark in BENCHMARKS
        ],
    log:
        f"{RUN}/logs/figures/heatmaps.log",
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        **attempt_resources("cpu"),
    params:
        names=BENCHMARKS,
        out=directory_of("output", "heatmaps"),
    shell:
        "capatlas figures --bin-matrix {input.matrix:q} --heatmap {params.names:q}"
        " --out {params.out:q} > {log:q} 2>&1"


rule contrast_figures:
    input:
        matrix=rules.influence.output.matrix,
        summary=rules.contrast.output.summary,
        topics=rules.contrast.output.topics,
        formats=rules.contrast.output.formats,
    output:
        bars=report(
            f"{FIGURES}/contrast_bars.png",
            caption="../report/contrast_bars.rst",
            category="Contrast",
            labels={"figure": "reasoning vs knowledge contrasts"},
        ),
        correlations=report(
            f"{FIGURES}/correlations.png",
            caption="../report/correlations.rst",
            category="Contrast",
            labels={"figure": "profile correlations"},
        ),
        effects=report(
            f"{FIGURES}/standardised_effects.png",
            caption="../report/standardised_effects.rst",
            category="Contrast",
            labels={"figure": "standardised and robust effects"},
        ),
        verdict=report(
            f"{FIGURES}/verdict.png",
            caption="../report/verdict.rst",
            category="Contrast",
            labels={"figure": "verdict on the study's claims"},
        ),
    log:
        f"{RUN}/logs/figures/contrast.log",
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        **attempt_resources("cpu"),
    params:
        contrast=directory_of("input", "summary"),
        out=directory_of("output", "bars"),
    shell:
        "capatlas figures --bin-matrix {input.matrix:q} --contrast {params.contrast:q}"
        " --out {params.out:q} > {log:q} 2>&1"

# capatlas: which parts of a pretraining corpus gave a model a capability.
# `snakemake --cores 2` runs the embedded demo (config/config.yaml);
# `snakemake --configfile config/olmo3-7b.yaml config/site.yaml ...` the study.
# Rules are thin: every stage is a `capatlas` sub-command (workflow/capatlas/).
from pathlib import Path

from snakemake.utils import min_version

min_version("9.0")


# The demo is the default; a --configfile on the command line replaces it
# as a whole instead of being merged into the demo's settings.
if not workflow.overwrite_configfiles:

    configfile: Path(workflow.basedir) / "config" / "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/corpus.smk"


# Left without benchmarks (the key out), a run is corpus-only: its default
# targets stop at the working set and shards.
CORPUS_TARGETS = list(FINAL_TARGETS)


include: "workflow/rules/attribution.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/unlearning.smk"
include: "workflow/rules/release.smk"


onstart:
    write_resolved_config()


rule all:
    default_target: True
    input:
        FINAL_TARGETS if BENCHMARKS else CORPUS_TARGETS,

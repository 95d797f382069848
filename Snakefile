# bismap: BiSMAP unsupervised domain adaptation (GTA5/SYNTHIA -> Cityscapes) as a Snakemake workflow.
#
#   snakemake --cores 2                                   # embedded synthetic benchmark, CPU
#   snakemake --profile profiles/local --configfile configs/gta5.yaml
#
# Every rule gets exactly the config slices its stage reads as `params`, so editing one value
# reruns the stages that depend on it (and their downstream), nothing upstream.

import sys
import time

from snakemake.utils import min_version, validate

RUN_START = time.time()

min_version("9.0")


configfile: "config.yaml"


include: "rules/config.smk"
include: "rules/common.smk"


wildcard_constraints:
    r=r"[1-9][0-9]*",
    model="|".join(name for name, _ in MODELS),


include: "rules/data.smk"
include: "rules/preflight.smk"
include: "rules/warmup.smk"
include: "rules/stm.smk"
include: "rules/prototypes.smk"
include: "rules/training.smk"
include: "rules/baselines.smk"
include: "rules/evaluation.smk"
include: "rules/report.smk"


localrules:
    all,


rule all:
    input:
        summary_outputs(),
    default_target: True


onsuccess:
    print_summary()


onerror:
    # On SLURM: name the resource (mem_mb / runtime) to raise for jobs the scheduler killed.
    shell("{sys.executable} -m bismap.workflow.slurm_hints --since {RUN_START} .snakemake/slurm_logs || true")

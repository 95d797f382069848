"""Snakemake entry point of the class_entropy stage (rule in rules/stm.smk); plumbing only."""
import _bootstrap  # noqa: F401  (repository root on sys.path)

from bismap.workflow.stage_logging import stage_logging

smk = snakemake  # noqa: F821  (injected by Snakemake)

with stage_logging(smk):
    from bismap.stages.class_entropy import run

    run(checkpoint=smk.input.checkpoint, source=smk.params.source, out_json=smk.output.out_json,
        cfg=smk.params.cfg, data=smk.params.data, runtime=smk.config["runtime"], threads=smk.threads)

"""Snakemake entry point of the source_features stage (rule in rules/prototypes.smk); plumbing only."""
import _bootstrap  # noqa: F401  (repository root on sys.path)

from bismap.workflow.stage_logging import stage_logging

smk = snakemake  # noqa: F821  (injected by Snakemake)

with stage_logging(smk):
    from bismap.stages.source_features import run

    run(checkpoint=smk.input.checkpoint, source=smk.params.source, out_h5=smk.output.out_h5, cfg=smk.params.cfg,
        data=smk.params.data, runtime=smk.config["runtime"], threads=smk.threads)

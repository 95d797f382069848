"""Snakemake entry point of the target_features stage (rule in rules/prototypes.smk); plumbing only."""
import _bootstrap  # noqa: F401  (repository root on sys.path)

from bismap.workflow.stage_logging import stage_logging

smk = snakemake  # noqa: F821  (injected by Snakemake)

with stage_logging(smk):
    from bismap.stages.target_features import run

    run(checkpoint=smk.input.checkpoint, target=smk.params.target, out_h5=smk.output.out_h5, cfg=smk.params.cfg,
        adabn=smk.params.adabn, data=smk.params.data, runtime=smk.config["runtime"], threads=smk.threads)

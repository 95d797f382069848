"""Snakemake entry point of the stm_features stage (rule in rules/stm.smk); plumbing only."""
import _bootstrap  # noqa: F401  (repository root on sys.path)

from bismap.workflow.stage_logging import stage_logging

smk = snakemake  # noqa: F821  (injected by Snakemake)

with stage_logging(smk):
    from bismap.stages.stm_features import run

    run(source=smk.params.source, target=smk.params.target, out_h5=smk.output.out_h5, cfg=smk.params.cfg,
        data=smk.params.data, checkpoint=smk.input.get("checkpoint"),
        runtime=smk.config["runtime"], threads=smk.threads)

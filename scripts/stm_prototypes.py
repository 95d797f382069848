"""Snakemake entry point of the stm_prototypes stage (rule in rules/stm.smk); plumbing only."""
import _bootstrap  # noqa: F401  (repository root on sys.path)

from bismap.workflow.stage_logging import stage_logging

smk = snakemake  # noqa: F821  (injected by Snakemake)

with stage_logging(smk):
    from bismap.stages.stm_prototypes import run

    run(features_h5=smk.input.features_h5, out_path=smk.output.out_path, cfg=smk.params.cfg,
        runtime=smk.config["runtime"], threads=smk.threads)

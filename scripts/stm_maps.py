"""Snakemake entry point of the stm_maps stage (rule in rules/stm.smk); plumbing only."""
import _bootstrap  # noqa: F401  (repository root on sys.path)

from bismap.workflow.stage_logging import stage_logging

smk = snakemake  # noqa: F821  (injected by Snakemake)

with stage_logging(smk):
    from bismap.stages.stm_maps import run

    run(features_h5=smk.input.features_h5, prototypes=smk.input.prototypes,
        class_entropy_json=smk.input.class_entropy_json, source=smk.params.source, out_h5=smk.output.out_h5,
        cfg=smk.params.cfg, threads=smk.threads)

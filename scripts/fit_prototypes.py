"""Snakemake entry point of the fit_prototypes stage (rule in rules/prototypes.smk); plumbing only."""
import _bootstrap  # noqa: F401  (repository root on sys.path)

from bismap.workflow.stage_logging import stage_logging

smk = snakemake  # noqa: F821  (injected by Snakemake)

with stage_logging(smk):
    from bismap.stages.fit_prototypes import run

    run(features_h5=smk.input.features_h5, out_path=smk.output.out_path, cfg=smk.params.cfg, threads=smk.threads)

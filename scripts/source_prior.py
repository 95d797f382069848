"""Snakemake entry point of the source_prior stage (rule in rules/prototypes.smk); plumbing only."""
import _bootstrap  # noqa: F401  (repository root on sys.path)

from bismap.workflow.stage_logging import stage_logging

smk = snakemake  # noqa: F821  (injected by Snakemake)

with stage_logging(smk):
    from bismap.stages.source_prior import run

    run(source=smk.params.source, out_json=smk.output.out_json, cfg=smk.params.cfg)

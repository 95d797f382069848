"""Snakemake entry point of the sharded source_features plan (rules/prototypes.smk); plumbing only."""
import _bootstrap  # noqa: F401  (repository root on sys.path)

from bismap.workflow.stage_logging import stage_logging

smk = snakemake  # noqa: F821  (injected by Snakemake)

with stage_logging(smk):
    from bismap.stages.source_features import run_plan

    run_plan(counts=list(smk.input.counts), cfg=smk.params.cfg, out_plan=smk.output.plan)

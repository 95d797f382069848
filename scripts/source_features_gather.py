"""Snakemake entry point of the sharded source_features gather (rules/prototypes.smk); plumbing only."""
import _bootstrap  # noqa: F401  (repository root on sys.path)

from bismap.workflow.stage_logging import stage_logging

smk = snakemake  # noqa: F821  (injected by Snakemake)

with stage_logging(smk):
    from bismap.stages.source_features import gather

    gather(plan=smk.input.plan, rows=list(smk.input.rows), cfg=smk.params.cfg, out_h5=smk.output.out_h5)

"""Snakemake entry point of the stylize stage (rule in rules/data.smk); plumbing only."""
import _bootstrap  # noqa: F401  (repository root on sys.path)

from bismap.workflow.stage_logging import stage_logging

smk = snakemake  # noqa: F821  (injected by Snakemake)

with stage_logging(smk):
    from bismap.stages.stylize import run

    run(source=smk.params.source, target=smk.params.target, out_dir=smk.output.out_dir, cfg=smk.params.cfg,
        threads=smk.threads)

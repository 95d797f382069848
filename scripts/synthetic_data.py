"""Snakemake entry point of the synthetic_data stage (rule in rules/data.smk); plumbing only."""
import _bootstrap  # noqa: F401  (repository root on sys.path)

from bismap.workflow.stage_logging import stage_logging

smk = snakemake  # noqa: F821  (injected by Snakemake)

with stage_logging(smk):
    from bismap.stages.synthetic_data import run

    run(source_dir=smk.output.source_dir, target_dir=smk.output.target_dir, cfg=smk.params.cfg,
        runtime=smk.config["runtime"], threads=smk.threads)

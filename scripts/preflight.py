"""Snakemake entry point of the preflight stage (rule in rules/preflight.smk); plumbing only."""
import _bootstrap  # noqa: F401  (repository root on sys.path)

from bismap.workflow.stage_logging import stage_logging

smk = snakemake  # noqa: F821  (injected by Snakemake)

with stage_logging(smk):
    from bismap.stages.preflight import run

    run(datasets=smk.params.datasets, model=smk.params.model, student=smk.params.student, stm=smk.params.stm,
        out_report=smk.output.report, out_summary=smk.output.summary, threads=smk.threads)

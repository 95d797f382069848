"""Snakemake entry point of sharded teacher labels, the pass over every image (rules/training.smk); plumbing only."""
import _bootstrap  # noqa: F401  (repository root on sys.path)

from bismap.workflow.stage_logging import stage_logging

smk = snakemake  # noqa: F821  (injected by Snakemake)

with stage_logging(smk):
    from bismap.stages.teacher_labels import run_statistics

    run_statistics(checkpoint=smk.input.checkpoint, target=smk.params.target, cfg=smk.params.cfg,
                   data=smk.params.data, runtime=smk.config["runtime"], out_statistics=smk.output.statistics,
                   threads=smk.threads, prior=smk.input.get("prior"), alignment=smk.params.alignment)

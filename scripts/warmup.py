"""Snakemake entry point of the warmup (and oracle) stage (rule in rules/warmup.smk, baselines.smk); plumbing only."""
import _bootstrap  # noqa: F401  (repository root on sys.path)

from bismap.workflow.stage_logging import stage_logging

smk = snakemake  # noqa: F821  (injected by Snakemake)

with stage_logging(smk):
    from bismap.stages.warmup import run

    run(source=smk.params.source, out_checkpoint=smk.output.checkpoint, model=smk.params.model,
        train=smk.params.train,
        train_overrides=smk.params.train_overrides, augment=smk.params.augment, data=smk.params.data,
        runtime=smk.config["runtime"], threads=smk.threads,
        ranks=smk.resources.ranks)

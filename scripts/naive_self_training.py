"""Snakemake entry point of the naive_self_training stage (rule in rules/baselines.smk); plumbing only."""
import _bootstrap  # noqa: F401  (repository root on sys.path)

from bismap.workflow.stage_logging import stage_logging

smk = snakemake  # noqa: F821  (injected by Snakemake)

with stage_logging(smk):
    from bismap.stages.self_training import run

    run(source=smk.params.source, target=smk.params.target, stm_maps=smk.input.get("stm_maps"),
        init_checkpoint=smk.input.get("init_checkpoint"),
        out_checkpoint=smk.output.checkpoint, model=smk.params.model, train=smk.params.train,
        train_overrides=smk.params.train_overrides,
        augment=smk.params.augment, cfg=smk.params.cfg, data=smk.params.data,
        runtime=smk.config["runtime"], threads=smk.threads,
        ranks=smk.resources.ranks)

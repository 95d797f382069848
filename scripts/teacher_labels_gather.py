"""Snakemake entry point joining the teacher-label shards (rules/training.smk); plumbing only."""
import _bootstrap  # noqa: F401  (repository root on sys.path)

from bismap.workflow.stage_logging import stage_logging

smk = snakemake  # noqa: F821  (injected by Snakemake)

with stage_logging(smk):
    from bismap.stages.teacher_labels import gather

    gather(shard_dirs=list(smk.input.shard_dirs), shard_counts=list(smk.input.shard_counts),
           out_dir=smk.output.out_dir, out_quality=smk.output.out_quality, cfg=smk.params.cfg,
           runtime=smk.config["runtime"], statistics=smk.input.get("statistics"))

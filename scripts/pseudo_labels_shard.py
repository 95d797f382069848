"""Snakemake entry point of one pseudo_labels shard (rules/prototypes.smk); plumbing only."""
import _bootstrap  # noqa: F401  (repository root on sys.path)

from bismap.workflow.stage_logging import stage_logging

smk = snakemake  # noqa: F821  (injected by Snakemake)

with stage_logging(smk):
    from bismap.stages.pseudo_labels import run_shard

    run_shard(checkpoint=smk.input.checkpoint, prototypes=smk.input.prototypes, target=smk.params.target,
              target_gt=smk.params.target_gt, cfg=smk.params.cfg, data=smk.params.data,
              runtime=smk.config["runtime"], shard=int(smk.wildcards.shard), shards=smk.params.shards,
              out_dir=smk.output.out_dir, out_counts=smk.output.counts, statistics=smk.input.get("statistics"),
              threads=smk.threads)

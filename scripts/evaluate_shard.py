"""Snakemake entry point of one evaluation shard (rules/evaluation.smk); plumbing only."""
import _bootstrap  # noqa: F401  (repository root on sys.path)

from bismap.workflow.stage_logging import stage_logging

smk = snakemake  # noqa: F821  (injected by Snakemake)

with stage_logging(smk):
    from bismap.stages.evaluate import run_shard

    run_shard(checkpoint=smk.input.checkpoint, target=smk.params.target, out_counts=smk.output.counts,
              cfg=smk.params.cfg, data=smk.params.data, runtime=smk.config["runtime"],
              shard=int(smk.wildcards.shard), shards=smk.params.shards, threads=smk.threads)

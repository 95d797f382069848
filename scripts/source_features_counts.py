"""Snakemake entry point of one source_features counting shard (rules/prototypes.smk); plumbing only."""
import _bootstrap  # noqa: F401  (repository root on sys.path)

from bismap.workflow.stage_logging import stage_logging

smk = snakemake  # noqa: F821  (injected by Snakemake)

with stage_logging(smk):
    from bismap.stages.source_features import run_counts

    run_counts(checkpoint=smk.input.checkpoint, source=smk.params.source, cfg=smk.params.cfg, data=smk.params.data,
               runtime=smk.config["runtime"], shard=int(smk.wildcards.shard), shards=smk.params.shards,
               out_counts=smk.output.counts, threads=smk.threads)

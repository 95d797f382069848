"""Snakemake entry point joining the pseudo_labels shards (rules/prototypes.smk); plumbing only."""
import _bootstrap  # noqa: F401  (repository root on sys.path)

from bismap.workflow.stage_logging import stage_logging

smk = snakemake  # noqa: F821  (injected by Snakemake)

with stage_logging(smk):
    from bismap.stages.pseudo_labels import gather

    gather(shard_dirs=list(smk.input.shard_dirs), shard_counts=list(smk.input.shard_counts),
           out_dir=smk.output.out_dir, out_quality=smk.output.out_quality, runtime=smk.config["runtime"],
           statistics=smk.input.get("statistics"))

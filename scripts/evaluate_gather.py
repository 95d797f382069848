"""Snakemake entry point summing the evaluation shards (rules/evaluation.smk); plumbing only."""
import _bootstrap  # noqa: F401  (repository root on sys.path)

from bismap.workflow.stage_logging import stage_logging

smk = snakemake  # noqa: F821  (injected by Snakemake)

with stage_logging(smk):
    from bismap.stages.evaluate import gather

    gather(shard_counts=list(smk.input.shard_counts), target=smk.params.target, out_json=smk.output.out_json,
           out_confusion_csv=smk.output.out_confusion_csv, cfg=smk.params.cfg)

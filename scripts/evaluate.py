"""Snakemake entry point of the evaluate stage (rule in rules/evaluation.smk); plumbing only."""
import _bootstrap  # noqa: F401  (repository root on sys.path)

from bismap.workflow.stage_logging import stage_logging

smk = snakemake  # noqa: F821  (injected by Snakemake)

with stage_logging(smk):
    from bismap.stages.evaluate import run

    run(checkpoint=smk.input.checkpoint, target=smk.params.target, out_json=smk.output.out_json,
        out_confusion_csv=smk.output.out_confusion_csv, cfg=smk.params.cfg, data=smk.params.data,
        runtime=smk.config["runtime"], threads=smk.threads)

"""Snakemake entry point of sharded pseudo_labels, the pass over every image (rules/prototypes.smk); plumbing only."""
import _bootstrap  # noqa: F401  (repository root on sys.path)

from bismap.workflow.stage_logging import stage_logging

smk = snakemake  # noqa: F821  (injected by Snakemake)

with stage_logging(smk):
    from bismap.stages.pseudo_labels import run_statistics

    run_statistics(checkpoint=smk.input.checkpoint, prototypes=smk.input.prototypes, target=smk.params.target,
                   cfg=smk.params.cfg, data=smk.params.data, runtime=smk.config["runtime"],
                   out_statistics=smk.output.statistics, threads=smk.threads, prior=smk.input.get("prior"),
                   alignment=smk.params.alignment)

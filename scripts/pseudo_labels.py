"""Snakemake entry point of the pseudo_labels stage (rule in rules/prototypes.smk); plumbing only."""
import _bootstrap  # noqa: F401  (repository root on sys.path)

from bismap.workflow.stage_logging import stage_logging

smk = snakemake  # noqa: F821  (injected by Snakemake)

with stage_logging(smk):
    from bismap.stages.pseudo_labels import run

    run(checkpoint=smk.input.checkpoint, prototypes=smk.input.prototypes, target=smk.params.target,
        target_gt=smk.params.target_gt, out_dir=smk.output.out_dir, out_quality=smk.output.out_quality,
        cfg=smk.params.cfg, data=smk.params.data, runtime=smk.config["runtime"], threads=smk.threads,
        prior=smk.input.get("prior"),
        alignment=smk.params.alignment)

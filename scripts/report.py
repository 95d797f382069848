"""Snakemake entry point of the report stage (rule in rules/report.smk); plumbing only."""
import _bootstrap  # noqa: F401  (repository root on sys.path)

from bismap.workflow.stage_logging import stage_logging

smk = snakemake  # noqa: F821  (injected by Snakemake)

with stage_logging(smk):
    from bismap.stages.report import run

    run(metrics=list(smk.input.metrics), models=smk.params.models, quality=list(smk.input.quality),
        quality_labels=smk.params.quality_labels, label_dirs=list(smk.input.label_dirs),
        label_dir_names=smk.params.label_dir_names, final_checkpoint=smk.input.final_checkpoint,
        stm_maps=smk.input.get("stm_maps"), target=smk.params.target, target_gt=smk.params.target_gt,
        source=smk.params.source, out_md=smk.output.summary_md, out_json=smk.output.summary_json,
        out_miou_png=smk.output.miou_png, out_samples_png=smk.output.samples_png, experiment=smk.params.experiment,
        protocol=smk.params.protocol, cfg=smk.params.cfg, data=smk.params.data,
        out_tables={"models": smk.output.models_html, "per_class_iou": smk.output.per_class_html,
                    "label_quality": smk.output.label_quality_html}, threads=smk.threads)

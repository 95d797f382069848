# Report: the metrics table (printed at the end of the run), summary json and figures for
# `snakemake --report report.html`.


rule report:
    """Metrics tables (markdown, json, HTML for the report), per-model mIoU bar plot and example mosaics."""
    input:
        metrics=[f"{RESULTS}/metrics/{name}.json" for name, _ in MODELS],
        quality=list(label_quality_inputs().values()),
        label_dirs=list(sample_label_dirs().values()),
        final_checkpoint=final_model(),
        **target_inputs("train"),
        **({"stm_maps": rules.stm_maps.output.out_h5} if C("self_training/use_stm") else {}),
        **source_inputs(),
    output:
        summary_md=f"{RESULTS}/summary.md",
        summary_json=f"{RESULTS}/summary.json",
        miou_png=report(f"{RESULTS}/figures/miou.png", category="Results", caption="../report/miou.rst"),
        samples_png=report(f"{RESULTS}/figures/samples.png", category="Examples",
                           caption="../report/samples.rst"),
        models_html=report(f"{RESULTS}/tables/models.html", category="Results", caption="../report/models.rst"),
        per_class_html=report(f"{RESULTS}/tables/per_class_iou.html", category="Results",
                              caption="../report/per_class_iou.rst"),
        label_quality_html=report(f"{RESULTS}/tables/label_quality.html", category="Results",
                                  caption="../report/label_quality.rst"),
    params:
        experiment=EXP,
        models=[label for _, label in MODELS],
        quality_labels=list(label_quality_inputs()),
        label_dir_names=list(sample_label_dirs()),
        target=target_spec("train", labels="none"),
        target_gt=target_gt_spec(),
        source=source_spec(),
        cfg=C("report"),
        protocol=C("evaluation/protocol"),
        data=C("data/normalize"),
    log:
        f"{LOGS}/report.log",
    benchmark:
        f"{BENCH}/report.tsv"
    threads: threads("report")
    resources:
        **res("report"),
    conda:
        ENV
    script:
        "../scripts/report.py"

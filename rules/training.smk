# BiSMAP training: self-training on the GMM pseudo labels, then distillation rounds
# r = 1..distillation.rounds, each taught by the labels of the previous model.


rule self_training:
    """Self-training: STM-weighted source CE + SCE on pseudo labels + mean-teacher consistency."""
    input:
        **preflight("source", "target"),
        **source_inputs(),
        **target_inputs("train"),
        pseudo_labels=rules.pseudo_labels.output.out_dir,
        **stm_input("self_training"),
        **model_inputs(),
        **init_input("self_training"),
    output:
        checkpoint=model_ckpt("self_training"),
    params:
        source=source_spec(),
        target=target_spec("train", labels=str(rules.pseudo_labels.output.out_dir)),
        model=C("model"),
        train=C("train"),
        train_overrides=C("train_overrides/self_training"),
        augment=C("augment"),
        cfg=C("self_training"),
        data=C("data/normalize"),
    log:
        f"{LOGS}/self_training.log",
    benchmark:
        f"{BENCH}/self_training.tsv"
    threads: threads("self_training")
    priority: MAINLINE
    resources:
        **res("self_training"),
    retries: submission_retries("self_training")
    conda:
        ENV
    script:
        "../scripts/self_training.py"


rule teacher_labels:
    """Round r's target labels from the previous model (multi-scale + flip, optional AdaBN)."""
    input:
        checkpoint=lambda wildcards: previous_model(wildcards.r),
        **target_inputs("train"),
        **prior_input("teacher_labels"),
    output:
        out_dir=directory(f"{RESULTS}/labels/teacher_r{{r}}"),
        out_quality=f"{RESULTS}/labels/teacher_r{{r}}.quality.json",
    params:
        target=target_spec("train", labels="none"),
        target_gt=target_gt_spec(),
        cfg=C("teacher_labels"),
        alignment=C("prior_alignment"),
        data=C("data/normalize"),
    log:
        f"{LOGS}/teacher_labels_r{{r}}.log",
    benchmark:
        f"{BENCH}/teacher_labels_r{{r}}.tsv"
    threads: threads("teacher_labels")
    priority: MAINLINE
    resources:
        **res("teacher_labels"),
    conda:
        ENV
    script:
        "../scripts/teacher_labels.py"


rule distillation:
    """Distillation round r: a fresh student learns from the previous model and its labels."""
    input:
        **preflight("source", "target", "student"),
        **source_inputs(),
        **target_inputs("train"),
        teacher_labels=f"{RESULTS}/labels/teacher_r{{r}}",
        teacher_checkpoint=lambda wildcards: previous_model(wildcards.r),
        **init_input("distillation"),
        **stm_input("distillation"),
        **weights_input("student_weights", C("distillation/student_weights") or C("model/weights")),
    output:
        checkpoint=model_ckpt("distillation_r{r}"),
    params:
        source=source_spec(),
        target=lambda wildcards: target_spec("train", labels=f"{RESULTS}/labels/teacher_r{wildcards.r}"),
        model=C("model"),
        train=C("train"),
        train_overrides=C("train_overrides/distillation"),
        augment=C("augment"),
        cfg=C("distillation"),
        data=C("data/normalize"),
    log:
        f"{LOGS}/distillation_r{{r}}.log",
    benchmark:
        f"{BENCH}/distillation_r{{r}}.tsv"
    threads: threads("distillation")
    priority: MAINLINE
    resources:
        **res("distillation"),
    retries: submission_retries("distillation")
    conda:
        ENV
    script:
        "../scripts/distillation.py"

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


# resources.teacher_labels.shards > 1: one job per block of images, then a local gather job writing the
# folder and json one job writes (byte for byte); a selection that reads every image first (prior
# alignment, balanced thresholds) adds one statistics job before the shards (bismap.method.label_shards).
TEACHER_PARTS = f"{RESULTS}/labels/teacher_r{{r}}.shards"

if shards("teacher_labels") == 1:

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

else:

    if needs_statistics(C("teacher_labels")):

        rule teacher_labels_statistics:
            """Round r's sharded labels: the prior offset and class thresholds, which read every image."""
            input:
                checkpoint=lambda wildcards: previous_model(wildcards.r),
                **target_inputs("train"),
                **prior_input("teacher_labels"),
            output:
                statistics=temp(f"{TEACHER_PARTS}/statistics.json"),
            params:
                target=target_spec("train", labels="none"),
                cfg=C("teacher_labels"),
                alignment=C("prior_alignment"),
                data=C("data/normalize"),
            log:
                f"{LOGS}/teacher_labels_r{{r}}.statistics.log",
            benchmark:
                f"{BENCH}/teacher_labels_r{{r}}.statistics.tsv"
            threads: threads("teacher_labels")
            priority: MAINLINE
            resources:
                **res("teacher_labels"),
            conda:
                ENV
            script:
                "../scripts/teacher_labels_statistics.py"

    rule teacher_labels_shard:
        """Round r's labels of one contiguous block of the target images."""
        input:
            checkpoint=lambda wildcards: previous_model(wildcards.r),
            **target_inputs("train"),
            **statistics_input("teacher_labels", TEACHER_PARTS),
        output:
            out_dir=temp(directory(f"{TEACHER_PARTS}/{{shard}}")),
            counts=temp(f"{TEACHER_PARTS}/{{shard}}.counts.json"),
        params:
            target=target_spec("train", labels="none"),
            target_gt=target_gt_spec(),
            cfg=C("teacher_labels"),
            data=C("data/normalize"),
            shards=shards("teacher_labels"),
        wildcard_constraints:
            shard=r"\d+",
        log:
            f"{LOGS}/teacher_labels_r{{r}}.shard{{shard}}.log",
        benchmark:
            f"{BENCH}/teacher_labels_r{{r}}.shard{{shard}}.tsv"
        threads: threads("teacher_labels")
        priority: MAINLINE
        resources:
            **res("teacher_labels"),
        conda:
            ENV
        script:
            "../scripts/teacher_labels_shard.py"

    rule teacher_labels:
        """Round r's target labels: the shards joined (hard links) with their summed quality counts."""
        input:
            **shard_outputs("teacher_labels", TEACHER_PARTS),
            **statistics_input("teacher_labels", TEACHER_PARTS),
        output:
            out_dir=directory(f"{RESULTS}/labels/teacher_r{{r}}"),
            out_quality=f"{RESULTS}/labels/teacher_r{{r}}.quality.json",
        params:
            cfg=C("teacher_labels"),
        log:
            f"{LOGS}/teacher_labels_r{{r}}.log",
        localrule: True
        priority: MAINLINE
        conda:
            ENV
        script:
            "../scripts/teacher_labels_gather.py"


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

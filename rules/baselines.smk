# Baselines sharing the DAG: naive self-training (confidence-threshold labels from the warm-up,
# no STM, no GMM) and the target-supervised oracle.


# resources.naive_labels.shards > 1: shard jobs, a local gather and, for a percentile selection, a
# statistics job (as teacher labels, rules/training.smk).
NAIVE_PARTS = f"{RESULTS}/labels/naive.shards"

if shards("naive_labels") == 1:

    rule naive_labels:
        """Naive pseudo labels: warm-up argmax where the softmax confidence passes naive.threshold."""
        input:
            checkpoint=model_ckpt("warmup"),
            **target_inputs("train"),
        output:
            out_dir=directory(f"{RESULTS}/labels/naive"),
            out_quality=f"{RESULTS}/labels/naive.quality.json",
        params:
            target=target_spec("train", labels="none"),
            target_gt=target_gt_spec(),
            cfg=C("naive"),
            data=C("data/normalize"),
        log:
            f"{LOGS}/naive_labels.log",
        benchmark:
            f"{BENCH}/naive_labels.tsv"
        threads: threads("naive_labels")
        resources:
            **res("naive_labels"),
        conda:
            ENV
        script:
            "../scripts/naive_labels.py"

else:

    if needs_statistics(C("naive")):

        rule naive_labels_statistics:
            """Sharded naive labels: the class thresholds, which read every image."""
            input:
                checkpoint=model_ckpt("warmup"),
                **target_inputs("train"),
            output:
                statistics=temp(f"{NAIVE_PARTS}/statistics.json"),
            params:
                target=target_spec("train", labels="none"),
                cfg=C("naive"),
                data=C("data/normalize"),
            log:
                f"{LOGS}/naive_labels.statistics.log",
            benchmark:
                f"{BENCH}/naive_labels.statistics.tsv"
            threads: threads("naive_labels")
            resources:
                **res("naive_labels"),
            conda:
                ENV
            script:
                "../scripts/naive_labels_statistics.py"

    rule naive_labels_shard:
        """Naive labels of one contiguous block of the target images."""
        input:
            checkpoint=model_ckpt("warmup"),
            **target_inputs("train"),
            **statistics_input("naive", NAIVE_PARTS),
        output:
            out_dir=temp(directory(f"{NAIVE_PARTS}/{{shard}}")),
            counts=temp(f"{NAIVE_PARTS}/{{shard}}.counts.json"),
        params:
            target=target_spec("train", labels="none"),
            target_gt=target_gt_spec(),
            cfg=C("naive"),
            data=C("data/normalize"),
            shards=shards("naive_labels"),
        wildcard_constraints:
            shard=r"\d+",
        log:
            f"{LOGS}/naive_labels.shard{{shard}}.log",
        benchmark:
            f"{BENCH}/naive_labels.shard{{shard}}.tsv"
        threads: threads("naive_labels")
        resources:
            **res("naive_labels"),
        conda:
            ENV
        script:
            "../scripts/naive_labels_shard.py"

    rule naive_labels:
        """Naive pseudo labels: the shards joined (hard links) with their summed quality counts."""
        input:
            **shard_outputs("naive_labels", NAIVE_PARTS),
            **statistics_input("naive", NAIVE_PARTS),
        output:
            out_dir=directory(f"{RESULTS}/labels/naive"),
            out_quality=f"{RESULTS}/labels/naive.quality.json",
        log:
            f"{LOGS}/naive_labels.log",
        localrule: True
        conda:
            ENV
        script:
            "../scripts/naive_labels_gather.py"


rule naive_self_training:
    """Self-training on the naive labels with the naive_self_training settings."""
    input:
        **preflight("source", "target"),
        **source_inputs(),
        **target_inputs("train"),
        pseudo_labels=rules.naive_labels.output.out_dir,
        **stm_input("naive_self_training"),
        **model_inputs(),
        **init_input("naive_self_training"),
    output:
        checkpoint=model_ckpt("naive_self_training"),
    params:
        source=source_spec(),
        target=target_spec("train", labels=str(rules.naive_labels.output.out_dir)),
        model=C("model"),
        train=C("train"),
        train_overrides=C("train_overrides/naive_self_training"),
        augment=C("augment"),
        cfg=C("naive_self_training"),
        data=C("data/normalize"),
    log:
        f"{LOGS}/naive_self_training.log",
    benchmark:
        f"{BENCH}/naive_self_training.tsv"
    threads: threads("naive_self_training")
    resources:
        **res("naive_self_training"),
    retries: submission_retries("naive_self_training")
    conda:
        ENV
    script:
        "../scripts/naive_self_training.py"


if ORACLE:

    rule oracle:
        """Target-supervised upper bound: the warm-up stage on target train with its ground truth."""
        input:
            **preflight("target"),
            **model_inputs(),
            **target_inputs("train"),
        output:
            checkpoint=model_ckpt("oracle"),
        params:
            source=target_spec("train"),
            model=C("model"),
            train=C("train"),
            train_overrides=C("train_overrides/oracle"),
            augment=C("augment"),
            data=C("data/normalize"),
        log:
            f"{LOGS}/oracle.log",
        benchmark:
            f"{BENCH}/oracle.tsv"
        threads: threads("oracle")
        resources:
            **res("oracle"),
        retries: submission_retries("oracle")
        conda:
            ENV
        script:
            "../scripts/warmup.py"

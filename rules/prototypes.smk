# Multiple anisotropic prototypes (source -> target direction): source decoder features,
# per-class diagonal GMMs, target pseudo labels.


# resources.source_features.shards > 1: counting shards, a plan of the rows one job keeps, row shards
# and a gather writing one job's file (bismap.method.feature_shards).
FEATURE_PARTS = f"{RESULTS}/prototypes/source_features.shards"

if shards("source_features") == 1:

    rule source_features:
        """Per-class banks of decoder features of correctly predicted source pixels (HDF5)."""
        input:
            **source_inputs(),
            checkpoint=model_ckpt("warmup"),
        output:
            out_h5=f"{RESULTS}/prototypes/source_features.h5",
        params:
            source=source_spec(),
            cfg=C("source_features"),
            data=C("data/normalize"),
        log:
            f"{LOGS}/source_features.log",
        benchmark:
            f"{BENCH}/source_features.tsv"
        threads: threads("source_features")
        priority: MAINLINE
        resources:
            **res("source_features"),
        conda:
            ENV
        script:
            "../scripts/source_features.py"

else:

    rule source_features_counts:
        """Sharded source features, pass 1: correct pixels per class of each batch of one block."""
        input:
            **source_inputs(),
            checkpoint=model_ckpt("warmup"),
        output:
            counts=temp(f"{FEATURE_PARTS}/{{shard}}.counts.json"),
        params:
            source=source_spec(),
            cfg=C("source_features"),
            data=C("data/normalize"),
            shards=shards("source_features"),
        wildcard_constraints:
            shard=r"\d+",
        log:
            f"{LOGS}/source_features.counts{{shard}}.log",
        benchmark:
            f"{BENCH}/source_features.counts{{shard}}.tsv"
        threads: threads("source_features")
        priority: MAINLINE
        resources:
            **res("source_features"),
        conda:
            ENV
        script:
            "../scripts/source_features_counts.py"

    rule source_features_plan:
        """Sharded source features: the ids of the rows one job keeps, from the counts alone."""
        input:
            counts=expand(f"{FEATURE_PARTS}/{{shard}}.counts.json", shard=range(shards("source_features"))),
        output:
            plan=temp(f"{FEATURE_PARTS}/plan.npz"),
        params:
            cfg=C("source_features"),
        log:
            f"{LOGS}/source_features.plan.log",
        benchmark:
            f"{BENCH}/source_features.plan.tsv"
        threads: 1
        priority: MAINLINE
        resources:
            **cpu_res("source_features"),
        conda:
            ENV
        script:
            "../scripts/source_features_plan.py"

    rule source_features_shard:
        """Sharded source features, pass 2: the planned rows of one block."""
        input:
            **source_inputs(),
            checkpoint=model_ckpt("warmup"),
            plan=f"{FEATURE_PARTS}/plan.npz",
        output:
            rows=temp(f"{FEATURE_PARTS}/{{shard}}.h5"),
        params:
            source=source_spec(),
            cfg=C("source_features"),
            data=C("data/normalize"),
            shards=shards("source_features"),
        wildcard_constraints:
            shard=r"\d+",
        log:
            f"{LOGS}/source_features.shard{{shard}}.log",
        benchmark:
            f"{BENCH}/source_features.shard{{shard}}.tsv"
        threads: threads("source_features")
        priority: MAINLINE
        resources:
            **res("source_features"),
        conda:
            ENV
        script:
            "../scripts/source_features_shard.py"

    rule source_features:
        """Per-class banks of decoder features (HDF5): the row shards in one job's order."""
        input:
            plan=f"{FEATURE_PARTS}/plan.npz",
            rows=expand(f"{FEATURE_PARTS}/{{shard}}.h5", shard=range(shards("source_features"))),
        output:
            out_h5=f"{RESULTS}/prototypes/source_features.h5",
        params:
            cfg=C("source_features"),
        log:
            f"{LOGS}/source_features.log",
        benchmark:
            f"{BENCH}/source_features.tsv"
        threads: 1
        priority: MAINLINE
        resources:
            **cpu_res("source_features"),
        conda:
            ENV
        script:
            "../scripts/source_features_gather.py"


if C("prototypes/fit_on") != "source":

    rule target_features:
        """Per-class banks of decoder features of the warm-up's confidently predicted target pixels (HDF5)."""
        input:
            checkpoint=model_ckpt("warmup"),
            **target_inputs("train"),
        output:
            out_h5=f"{RESULTS}/prototypes/target_features.h5",
        params:
            target=target_spec("train", labels="none"),
            cfg=C("target_features"),
            adabn=C("pseudo_labels/adabn"),
            data=C("data/normalize"),
        log:
            f"{LOGS}/target_features.log",
        benchmark:
            f"{BENCH}/target_features.tsv"
        threads: threads("target_features")
        priority: MAINLINE
        resources:
            **res("target_features"),
        conda:
            ENV
        script:
            "../scripts/target_features.py"


rule fit_prototypes:
    """Per-class diagonal Gaussian mixtures on the feature banks."""
    input:
        features_h5=feature_banks(),
    output:
        out_path=f"{RESULTS}/prototypes/gmm.pt",
    params:
        cfg=C("prototypes"),
    log:
        f"{LOGS}/fit_prototypes.log",
    benchmark:
        f"{BENCH}/fit_prototypes.tsv"
    threads: threads("fit_prototypes")
    priority: MAINLINE
    resources:
        **res("fit_prototypes"),
    conda:
        ENV
    script:
        "../scripts/fit_prototypes.py"


rule source_prior:
    """Pixels per class of the source labels: the distribution that prior alignment aims at."""
    input:
        source_root=SOURCE_ROOT,
        **manifest_input("source"),
    output:
        out_json=f"{RESULTS}/prototypes/source_prior.json",
    params:
        source=source_raw_spec(),
        cfg=C("source_prior"),
    log:
        f"{LOGS}/source_prior.log",
    benchmark:
        f"{BENCH}/source_prior.tsv"
    threads: threads("source_prior")
    priority: MAINLINE
    resources:
        **res("source_prior"),
    conda:
        ENV
    script:
        "../scripts/source_prior.py"


# resources.pseudo_labels.shards > 1: shard jobs, a local gather and, for a selection that reads every
# image first, a statistics job (as teacher labels, rules/training.smk).
PSEUDO_PARTS = f"{RESULTS}/labels/pseudo.shards"

if shards("pseudo_labels") == 1:

    rule pseudo_labels:
        """Target train pseudo labels: GMM log-likelihood argmax, thresholded; plus a quality json."""
        input:
            checkpoint=model_ckpt("warmup"),
            prototypes=rules.fit_prototypes.output.out_path,
            **target_inputs("train"),
            **prior_input("pseudo_labels"),
        output:
            out_dir=directory(f"{RESULTS}/labels/pseudo"),
            out_quality=f"{RESULTS}/labels/pseudo.quality.json",
        params:
            target=target_spec("train", labels="none"),
            target_gt=target_gt_spec(),
            cfg=C("pseudo_labels"),
            alignment=C("prior_alignment"),
            data=C("data/normalize"),
        log:
            f"{LOGS}/pseudo_labels.log",
        benchmark:
            f"{BENCH}/pseudo_labels.tsv"
        threads: threads("pseudo_labels")
        priority: MAINLINE
        resources:
            **res("pseudo_labels"),
        conda:
            ENV
        script:
            "../scripts/pseudo_labels.py"

else:

    if needs_statistics(C("pseudo_labels")):

        rule pseudo_labels_statistics:
            """Sharded pseudo labels: the prior offset and class thresholds, which read every image."""
            input:
                checkpoint=model_ckpt("warmup"),
                prototypes=rules.fit_prototypes.output.out_path,
                **target_inputs("train"),
                **prior_input("pseudo_labels"),
            output:
                statistics=temp(f"{PSEUDO_PARTS}/statistics.json"),
            params:
                target=target_spec("train", labels="none"),
                cfg=C("pseudo_labels"),
                alignment=C("prior_alignment"),
                data=C("data/normalize"),
            log:
                f"{LOGS}/pseudo_labels.statistics.log",
            benchmark:
                f"{BENCH}/pseudo_labels.statistics.tsv"
            threads: threads("pseudo_labels")
            priority: MAINLINE
            resources:
                **res("pseudo_labels"),
            conda:
                ENV
            script:
                "../scripts/pseudo_labels_statistics.py"

    rule pseudo_labels_shard:
        """Pseudo labels of one contiguous block of the target images."""
        input:
            checkpoint=model_ckpt("warmup"),
            prototypes=rules.fit_prototypes.output.out_path,
            **target_inputs("train"),
            **statistics_input("pseudo_labels", PSEUDO_PARTS),
        output:
            out_dir=temp(directory(f"{PSEUDO_PARTS}/{{shard}}")),
            counts=temp(f"{PSEUDO_PARTS}/{{shard}}.counts.json"),
        params:
            target=target_spec("train", labels="none"),
            target_gt=target_gt_spec(),
            cfg=C("pseudo_labels"),
            data=C("data/normalize"),
            shards=shards("pseudo_labels"),
        wildcard_constraints:
            shard=r"\d+",
        log:
            f"{LOGS}/pseudo_labels.shard{{shard}}.log",
        benchmark:
            f"{BENCH}/pseudo_labels.shard{{shard}}.tsv"
        threads: threads("pseudo_labels")
        priority: MAINLINE
        resources:
            **res("pseudo_labels"),
        conda:
            ENV
        script:
            "../scripts/pseudo_labels_shard.py"

    rule pseudo_labels:
        """Target train pseudo labels: the shards joined (hard links) with their summed quality counts."""
        input:
            **shard_outputs("pseudo_labels", PSEUDO_PARTS),
            **statistics_input("pseudo_labels", PSEUDO_PARTS),
        output:
            out_dir=directory(f"{RESULTS}/labels/pseudo"),
            out_quality=f"{RESULTS}/labels/pseudo.quality.json",
        log:
            f"{LOGS}/pseudo_labels.log",
        localrule: True
        priority: MAINLINE
        conda:
            ENV
        script:
            "../scripts/pseudo_labels_gather.py"

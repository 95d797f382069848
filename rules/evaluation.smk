# Evaluation of every checkpoint (one rule, wildcard over the model names) on target val.


# resources.evaluate.shards > 1: one job per block of the val images, then a local job summing their
# confusion matrices (bismap.stages.evaluate.gather).
EVAL_PARTS = f"{RESULTS}/metrics/{{model}}.shards"

if shards("evaluate") == 1:

    rule evaluate:
        """mIoU-19/16/13, per-class IoU and the confusion matrix of one model on target val."""
        input:
            checkpoint=model_ckpt("{model}"),
            **target_inputs("val"),
            **preflight("val"),
        output:
            out_json=f"{RESULTS}/metrics/{{model}}.json",
            out_confusion_csv=f"{RESULTS}/metrics/{{model}}.confusion.csv",
        params:
            target=target_spec("val"),
            cfg=C("evaluation"),
            data=C("data/normalize"),
        log:
            f"{LOGS}/evaluate_{{model}}.log",
        benchmark:
            f"{BENCH}/evaluate_{{model}}.tsv"
        threads: threads("evaluate")
        resources:
            **res("evaluate"),
        conda:
            ENV
        script:
            "../scripts/evaluate.py"

else:

    rule evaluate_shard:
        """The confusion matrix of one model on one contiguous block of target val."""
        input:
            checkpoint=model_ckpt("{model}"),
            **target_inputs("val"),
            **preflight("val"),
        output:
            counts=temp(f"{EVAL_PARTS}/{{shard}}.json"),
        params:
            target=target_spec("val"),
            cfg=C("evaluation"),
            data=C("data/normalize"),
            shards=shards("evaluate"),
        wildcard_constraints:
            shard=r"\d+",
        log:
            f"{LOGS}/evaluate_{{model}}.shard{{shard}}.log",
        benchmark:
            f"{BENCH}/evaluate_{{model}}.shard{{shard}}.tsv"
        threads: threads("evaluate")
        resources:
            **res("evaluate"),
        conda:
            ENV
        script:
            "../scripts/evaluate_shard.py"

    rule evaluate:
        """mIoU-19/16/13, per-class IoU and the confusion matrix of one model: the shards' matrices summed."""
        input:
            shard_counts=expand(f"{EVAL_PARTS}/{{shard}}.json", shard=range(shards("evaluate")),
                                allow_missing=True),
        output:
            out_json=f"{RESULTS}/metrics/{{model}}.json",
            out_confusion_csv=f"{RESULTS}/metrics/{{model}}.confusion.csv",
        params:
            target=target_spec("val"),
            cfg=C("evaluation"),
        log:
            f"{LOGS}/evaluate_{{model}}.log",
        localrule: True
        conda:
            ENV
        script:
            "../scripts/evaluate_gather.py"

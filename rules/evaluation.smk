# Evaluation of every checkpoint (one rule, wildcard over the model names) on target val.


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

# Warm-up: source-only supervised training (also the source-only baseline).


rule warmup:
    """Source-only training: the source-only baseline and the model the prototypes come from."""
    input:
        **preflight("source"),
        **source_inputs(),
        **model_inputs(),
    output:
        checkpoint=model_ckpt("warmup"),
    params:
        source=source_spec(),
        model=C("model"),
        train=C("train"),
        train_overrides=C("train_overrides/warmup"),
        augment=C("augment"),
        data=C("data/normalize"),
    log:
        f"{LOGS}/warmup.log",
    benchmark:
        f"{BENCH}/warmup.tsv"
    threads: threads("warmup")
    priority: MAINLINE
    resources:
        **res("warmup"),
    retries: submission_retries("warmup")
    conda:
        ENV
    script:
        "../scripts/warmup.py"

# Preflight: every file of every split the run reads, and the pretrained weights, checked before any
# training. Training rules take its report as an ancient() input: they wait for it, but a rerun of the
# preflight alone (e.g. after a change of data.target.val_split) does not retrain anything.


rule preflight:
    """Read every input file (all splits, stylized folder, weights' key layout); all problems at once."""
    input:
        **preflight_inputs(),
    output:
        report=PREFLIGHT,
        summary=report(f"{RESULTS}/preflight.md", category="Inputs", caption="../report/preflight.rst"),
    params:
        datasets=preflight_datasets(),
        model=C("model"),
        student={k: C(f"distillation/{k}") for k in ("student_backbone", "student_weights")},
        stm=C("stm"),
    log:
        f"{LOGS}/preflight.log",
    benchmark:
        f"{BENCH}/preflight.tsv"
    threads: threads("preflight")
    resources:
        **res("preflight"),
    conda:
        ENV
    script:
        "../scripts/preflight.py"

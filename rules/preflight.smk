# Preflight: every file of every split the run reads, and the pretrained weights, checked before any
# training. Training rules take its report as an ancient() input: they wait for it, but a rerun of the
# preflight alone (e.g. after a change of data.target.val_split) does not retrain anything.


def preflight_datasets():
    """Name -> dataset spec of everything the run reads, as the stages open it."""
    source = source_spec() if STYLIZE == "folder" else source_raw_spec()
    out = {"source": source,
           "target train": target_spec("train", labels=None if TARGET_GT else "none"),
           "target val": target_spec("val")}
    return out


def preflight_inputs():
    out = {"source_root": SOURCE_ROOT, "target_root": TARGET_ROOT, **model_inputs()}
    if STYLIZE == "folder":
        out["stylized"] = STYLIZED
    out.update(weights_input("student_weights", C("distillation/student_weights")))
    if C("stm/extractor") == "simclr" and C("stm/weights"):
        out["stm_weights"] = C("stm/weights")
    return out


PREFLIGHT = f"{RESULTS}/preflight.json"


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

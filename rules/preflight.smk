# Preflight: every file of every split the run reads, and the pretrained weights, checked before any
# training, one job per part (source, target train, target val, student weights, STM weights). Each
# rule takes the parts it reads as plain inputs; why not one job and ancient() edges: see
# preflight_parts() in rules/common.smk. The high priority makes every part start before training.


rule preflight:
    """Read every file of one part (all images and labels, or a weights file's key layout); all problems at once."""
    input:
        unpack(lambda wildcards: PREFLIGHT_PARTS[wildcards.part]["inputs"]),
    output:
        report=f"{RESULTS}/preflight/{{part}}.json",
        summary=report(f"{RESULTS}/preflight/{{part}}.md", category="Inputs", caption="../report/preflight.rst"),
    params:
        datasets=lambda wildcards: PREFLIGHT_PARTS[wildcards.part].get("datasets", {}),
        model=lambda wildcards: PREFLIGHT_PARTS[wildcards.part].get("model", {}),
        student=lambda wildcards: PREFLIGHT_PARTS[wildcards.part].get("student", {}),
        stm=lambda wildcards: PREFLIGHT_PARTS[wildcards.part].get("stm", {}),
    wildcard_constraints:
        part="|".join(PREFLIGHT_PARTS),
    priority: 100
    log:
        f"{LOGS}/preflight_{{part}}.log",
    benchmark:
        f"{BENCH}/preflight_{{part}}.tsv"
    threads: threads("preflight")
    resources:
        **res("preflight"),
    conda:
        ENV
    script:
        "../scripts/preflight.py"

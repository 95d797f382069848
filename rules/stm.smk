# Source transferability maps (target -> source direction): class entropy, grid features,
# target k-means prototypes, one weight map per source image.


rule class_entropy:
    """Per-class mean prediction entropy of the warm-up model on the source (STM class bonus)."""
    input:
        **source_inputs(),
        checkpoint=model_ckpt("warmup"),
    output:
        out_json=f"{RESULTS}/stm/class_entropy.json",
    params:
        source=source_spec(),
        cfg=C("class_entropy"),
        data=C("data/normalize"),
    log:
        f"{LOGS}/class_entropy.log",
    benchmark:
        f"{BENCH}/class_entropy.tsv"
    threads: threads("class_entropy")
    priority: MAINLINE
    resources:
        **res("class_entropy"),
    conda:
        ENV
    script:
        "../scripts/class_entropy.py"


rule stm_features:
    """Grid features of every source and target train image (HDF5)."""
    input:
        unpack(stm_extractor_inputs),
        **preflight("stm"),
        **source_inputs(),
        **target_inputs("train"),
    output:
        out_h5=f"{RESULTS}/stm/features.h5",
    params:
        source=source_spec(),
        target=target_spec("train", labels="none"),
        cfg=C("stm/features"),
        data=C("data/normalize"),
    log:
        f"{LOGS}/stm_features.log",
    benchmark:
        f"{BENCH}/stm_features.tsv"
    threads: threads("stm_features")
    priority: MAINLINE
    resources:
        **res("stm_features"),
    conda:
        ENV
    script:
        "../scripts/stm_features.py"


rule stm_prototypes:
    """k-means prototypes of the target grid features."""
    input:
        features_h5=rules.stm_features.output.out_h5,
    output:
        out_path=f"{RESULTS}/stm/prototypes.pt",
    params:
        cfg=C("stm/prototypes"),
    log:
        f"{LOGS}/stm_prototypes.log",
    benchmark:
        f"{BENCH}/stm_prototypes.tsv"
    threads: threads("stm_prototypes")
    priority: MAINLINE
    resources:
        **res("stm_prototypes"),
    conda:
        ENV
    script:
        "../scripts/stm_prototypes.py"


rule stm_maps:
    """One uint8 weight map per source image from prototype distance + class entropy bonus."""
    input:
        **source_inputs(),
        features_h5=rules.stm_features.output.out_h5,
        prototypes=rules.stm_prototypes.output.out_path,
        class_entropy_json=rules.class_entropy.output.out_json,
    output:
        out_h5=f"{RESULTS}/stm/maps.h5",
    params:
        source=source_spec(),
        cfg=C("stm/maps"),
    log:
        f"{LOGS}/stm_maps.log",
    benchmark:
        f"{BENCH}/stm_maps.tsv"
    threads: threads("stm_maps")
    priority: MAINLINE
    resources:
        **res("stm_maps"),
    conda:
        ENV
    script:
        "../scripts/stm_maps.py"

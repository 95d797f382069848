# Data: the built-in synthetic benchmark (embedded default only) and the stylised source.


if SYNTHETIC:

    rule synthetic_data:
        """Generate the synthetic benchmark: source in GTA5 layout, target in Cityscapes layout."""
        output:
            source_dir=directory(SYN_SOURCE),
            target_dir=directory(SYN_TARGET),
        params:
            cfg=C("synthetic"),
        log:
            f"{LOGS}/synthetic_data.log",
        benchmark:
            f"{BENCH}/synthetic_data.tsv"
        threads: threads("synthetic_data")
        resources:
            **res("synthetic_data"),
        conda:
            ENV
        script:
            "../scripts/synthetic_data.py"


if STYLIZE == "fda":

    rule stylize:
        """Fourier domain adaptation: source images with target low-frequency amplitudes."""
        input:
            source_root=SOURCE_ROOT,
            **manifest_input("source"),
            **target_inputs("train"),
        output:
            out_dir=directory(STYLIZED),
        params:
            source=source_raw_spec(),
            target=target_spec("train", labels="none"),
            cfg=C("stylize"),
        log:
            f"{LOGS}/stylize.log",
        benchmark:
            f"{BENCH}/stylize.tsv"
        threads: threads("stylize")
        resources:
            **res("stylize"),
        conda:
            ENV
        script:
            "../scripts/stylize.py"

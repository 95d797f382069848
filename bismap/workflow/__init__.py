"""Glue between Snakemake and the package: stage logging for `script:` rules, SLURM failure hints."""

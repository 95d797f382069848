"""Benchmark over seeds and ablations (`bismap benchmark`).

A benchmark file (configs/benchmark.yaml) names seeds and ablations; every (ablation, seed) pair is
one ordinary pipeline run, `snakemake --configfile <base_config> <overlay>`, where the overlay sets
`experiment: <prefix>_<ablation>_s<seed>`, the seed keys and the ablation's overrides. Each run
lives in its own results/<experiment>/ tree, so runs never clobber each other and a finished run
is not redone (Snakemake sees its outputs). The results are then reduced to the mean and (sample)
standard deviation over seeds of target-val mIoU per method and per class: table.md, table.json
and a Pillow bar plot with error bars.

Modules: `spec` (the benchmark file and overlays), `plan` (what an ablation reruns, from
Snakemake's --detailed-summary), `run` (running and reusing runs), `aggregate` (mean ± std),
`table` (markdown, json and plots).
"""
from bismap.sweep.aggregate import (METHOD_ORDER, aggregate, gap_recovered, mean_std, method_order, over_naive,
                                    over_reference)
from bismap.sweep.plan import parse_summary, rerun_roots, reuse_plan
from bismap.sweep.run import FORCE_MARKER, run_all
from bismap.sweep.spec import experiment_name, load_spec, overlay, runs, set_dotted, write_overlay
from bismap.sweep.table import plot, plot_rows, table_markdown, text_plot, write_outputs

__all__ = ["METHOD_ORDER", "FORCE_MARKER", "aggregate", "experiment_name", "gap_recovered", "load_spec",
           "mean_std", "method_order", "over_naive", "over_reference", "overlay", "parse_summary", "plot",
           "plot_rows", "rerun_roots", "reuse_plan", "run_all", "runs", "set_dotted", "table_markdown",
           "text_plot", "write_outputs", "write_overlay"]

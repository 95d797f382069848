"""Benchmark over presets, seeds and ablations (`bismap benchmark`).

A benchmark file (configs/benchmark.yaml) names presets (each with its config files and seeds),
seeds and ablations; every (preset, ablation, seed) is one ordinary pipeline run,
`snakemake --configfile <base_config> <preset's configfiles> <overlay>`, where the overlay sets
`experiment: <prefix>_<ablation>_s<seed>`, the seed keys and the ablation's overrides. Each run
lives in its own results/<experiment>/ tree, so runs never clobber each other and a finished run
is not redone (Snakemake sees its outputs). After each finished run a small record (summary, label
quality, CPU name and type, commit, date, wall time) is kept in the repository (benchmark_records/), so runs made
on different days and machines combine. The runs are reduced to the mean and sample standard
deviation over seeds of target-val mIoU per method and per class, and to paired differences with
a 95 % t-interval: table.md, table.json and a Pillow bar plot with error bars.

Modules: `spec` (the benchmark file, presets and overlays), `plan` (what an ablation reruns, from
Snakemake's --detailed-summary), `run` (running and reusing runs), `archive` (the kept run
records), `stats` (mean ± std, t quantiles, paired intervals), `aggregate` (reduction over seeds),
`table` (markdown, json and plots), `results_doc` (docs/results.md from the records:
`python -m bismap.sweep.results_doc`).
"""
from bismap.sweep.aggregate import METHOD_ORDER, aggregate, gap_recovered, method_order, over_naive, over_reference
from bismap.sweep.archive import (
    FORCE_MARKER,
    archive_run,
    cpu_key,
    cpu_model,
    cpu_type,
    load_run,
    make_record,
    record_path,
)
from bismap.sweep.plan import parse_summary, rerun_roots, reuse_plan
from bismap.sweep.run import archive_existing, run_all
from bismap.sweep.spec import (
    experiment_name,
    load_spec,
    overlay,
    preset_spec,
    runs,
    seeds_of,
    set_dotted,
    write_overlay,
)
from bismap.sweep.stats import mean_std, paired, t975
from bismap.sweep.table import plot, plot_rows, table_markdown, text_plot, write_outputs

__all__ = ["METHOD_ORDER", "FORCE_MARKER", "aggregate", "archive_existing", "archive_run", "cpu_key", "cpu_model",
           "cpu_type", "experiment_name", "gap_recovered", "load_run", "load_spec", "make_record", "mean_std",
           "method_order", "over_naive", "over_reference", "overlay", "paired", "parse_summary", "plot", "plot_rows",
           "preset_spec", "record_path", "rerun_roots", "reuse_plan", "run_all", "runs", "seeds_of", "set_dotted",
           "t975", "table_markdown", "text_plot", "write_outputs", "write_overlay"]

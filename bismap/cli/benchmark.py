"""`bismap benchmark`: run the pipeline per (preset, seed, ablation), keep each run's record, tabulate."""
from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "benchmark", help="run presets x seeds x ablations and write the mean/std mIoU table",
        description="Runs `snakemake --configfile BASE [PRESET FILES] OVERLAY` once per (preset, ablation, seed) of "
                    "the benchmark file (each under results/<prefix>_<ablation>_s<seed>/), keeps a small record of "
                    "each finished run in the archive folder (benchmark_records/<preset>/<experiment>.json, meant to "
                    "be committed), then writes OUT[/<preset>]/table.md, table.json and plot.png from the records "
                    "and from finished runs under --results.")
    p.add_argument("--spec", default="configs/benchmark.yaml", help="benchmark file (default: %(default)s)")
    p.add_argument("--preset", action="append", default=[], metavar="NAME",
                   help="only this preset of the file (repeatable; default: all)")
    p.add_argument("--ablation", action="append", default=[], metavar="NAME",
                   help="run only this ablation (repeatable; default: the preset's list)")
    p.add_argument("--seed", action="append", default=[], metavar="SEED",
                   help="run only this seed value (repeatable; default: all in the file)")
    p.add_argument("--cores", type=int, default=None, help="snakemake --cores (default: the file's `cores`)")
    p.add_argument("--aggregate-only", action="store_true",
                   help="do not run; only tabulate the kept records and the finished runs under --results")
    p.add_argument("--archive-existing", action="store_true",
                   help="do not run; keep a record of every finished run under --results that has none yet")
    p.add_argument("--archive", default=None, metavar="DIR",
                   help="keep and read records here instead of the file's `archive` (e.g. one folder per CPU "
                        "type: results differ across CPU types, so their seeds should not be paired)")
    p.add_argument("--runs", action="append", default=[], metavar="DIR",
                   help="also read kept records from this folder (repeatable; the file's `archive` comes first)")
    p.add_argument("--dry-run", action="store_true", help="print the snakemake commands and write the overlays only")
    p.add_argument("--keep-going", action="store_true", help="continue with the next run when one fails")
    p.add_argument("--results", default="results",
                   help="results root holding results/<experiment>/ (default: %(default)s)")
    p.add_argument("snakemake_args", nargs="*",
                   help="extra snakemake arguments (after --), e.g. -- --profile profiles/slurm")
    p.set_defaults(func=run_cli)
    return p


def run_cli(args: argparse.Namespace) -> int:
    import yaml

    from bismap import sweep as benchmark

    spec = benchmark.load_spec(args.spec)
    if args.cores is not None:
        spec["cores"] = args.cores
    if args.archive is not None:
        spec["archive"] = args.archive
    seeds = [yaml.safe_load(s) for s in args.seed] if args.seed else None
    for preset in args.preset or list(spec["presets"]):
        flat = benchmark.preset_spec(spec, preset)
        if args.archive_existing:
            for path in benchmark.archive_existing(flat, args.results):
                print(f"benchmark: kept {path}", flush=True)
            continue
        if not args.aggregate_only:
            benchmark.run_all(flat, ablations=args.ablation or None, seeds=seeds, extra_args=args.snakemake_args,
                              dry_run=args.dry_run, keep_going=args.keep_going, results_root=args.results)
        if args.dry_run:
            continue
        table = benchmark.aggregate(flat, args.results, [flat["archive"], *args.runs])
        paths = benchmark.write_outputs(table, flat["out"])
        print(benchmark.table_markdown(table).split("\n## ")[0], flush=True)
        print("benchmark: wrote " + ", ".join(str(p) for p in paths), flush=True)
    return 0

"""docs/results.md, generated from the kept benchmark records (benchmark_records/ is the one source).

    python -m bismap.sweep.results_doc            # rewrite docs/results.md
    python -m bismap.sweep.results_doc --check    # exit 1 when the committed file is out of date

A record set is one archive folder (a folder holding `<preset>/<experiment>.json`, one per CPU type
by convention) and one preset. Each set gets its tables from `aggregate`: mean ± std per stage,
per-seed rows, gap closed, paired differences against naive self-training and against `full`
(pairs only within one CPU type), and the commands that reproduce it. The doc states the current
state only: no commit or date is written; history lives in docs/notebook/.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from bismap.io import atomic_path, read_json
from bismap.sweep.aggregate import aggregate, method_order
from bismap.sweep.spec import load_spec
from bismap.sweep.table import _diff, _fmt

REPO = Path(__file__).resolve().parents[2]
RECORDS = REPO / "benchmark_records"
SPEC = REPO / "configs" / "benchmark.yaml"
OUT = REPO / "docs" / "results.md"
COMMAND = "python -m bismap.sweep.results_doc"
# Top-level record folders of an earlier default: listed apart, never in the current tables.
SUPERSEDED = ("before-alignment",)

HEADER = """# Results on the synthetic benchmark

<!-- Generated from benchmark_records/ by `{command}`; do not edit by hand. -->

Every table below is computed from the kept run records in `benchmark_records/` (one JSON per
finished `bismap benchmark` run); regenerate this file with `{command}`
after adding records. How the defaults were chosen, timings and other measurements that are not
records: [docs/notebook/](notebook/README.md).

How to read it: target-val mIoU in %, mean ± sample std over seeds. A difference is paired by seed,
mean [95 % t-interval] (n pairs), in points; a pair is formed only from two runs on one CPU type,
since across CPU types the floating-point results differ by as much as most effects (reruns are
bit-identical on one CPU type only). Gap closed is the share of the source-only to oracle gap a
model closes, from the means. Each ablation is one config switch away from `full`; a record set
is one folder of `benchmark_records/` (one CPU type) and one preset.
"""


def _label(folder: Path, root: Path) -> str:
    rel = folder.relative_to(root).as_posix()
    return "benchmark_records" + ("" if rel == "." else "/" + rel)


def record_sets(root: Path) -> list[tuple[Path, str, dict]]:
    """(archive folder, preset, {ablation: {seed: record}}) for every folder and preset with records."""
    sets: dict[tuple[Path, str], dict] = {}
    for path in sorted(root.rglob("*.json")):
        rec = read_json(path)
        folder = path.parent.parent
        sets.setdefault((folder, rec["preset"]), {}).setdefault(rec["ablation"], {})[rec["seed"]] = rec
    return [(folder, preset, runs) for (folder, preset), runs in sorted(sets.items(), key=lambda kv: str(kv[0]))]


def _table_of(folder: Path, preset: str, runs: dict, spec: dict) -> dict:
    """aggregate() over exactly the records of one set (no results/ runs)."""
    ref = spec.get("reference", "full")
    order = [a for a in spec["ablations"] if a in runs] + sorted(a for a in runs if a not in spec["ablations"])
    order = sorted(order, key=lambda a: a != ref)
    any_rec = next(iter(next(iter(runs.values())).values()))
    suffix = f"_{any_rec['ablation']}_s{any_rec['seed']}"
    flat = {"preset": preset, "prefix": any_rec["experiment"][:-len(suffix)], "reference": ref,
            "seeds": sorted({s for seeds in runs.values() for s in seeds}),
            "ablations": {a: {} for a in order}, "run_ablations": order, "archive": str(folder)}
    # os.devnull as results root: nothing under it is a run, so only the records are read
    return aggregate(flat, os.devnull, [folder])


def _commands(folder: Path, root: Path, preset: str, table: dict) -> list[str]:
    archive = "" if folder == root else f" --archive {_label(folder, root)}"
    return [f"bismap benchmark --preset {preset} --ablation {a}"
            + "".join(f" --seed {s}" for s in entry["seeds"]) + archive
            for a, entry in table["ablations"].items()]


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _mean_table(table: dict, methods: list[str]) -> list[str]:
    lines = [_row(["ablation", "seeds", *methods]), "|---" * (len(methods) + 2) + "|"]
    for a, entry in table["ablations"].items():
        models = entry["models"]
        lines.append(_row([f"`{a}`", ", ".join(str(s) for s in entry["seeds"]),
                           *[_fmt(models[m]["mean"], models[m]["std"]) if m in models else "-" for m in methods]]))
    return lines + [""]


def _seed_rows(table: dict, methods: list[str]) -> list[str]:
    lines = ["Per seed:", "", _row(["ablation", "seed", *methods]), "|---" * (len(methods) + 2) + "|"]
    for a, entry in table["ablations"].items():
        for i, seed in enumerate(entry["seeds"]):
            cells = []
            for m in methods:
                model = entry["models"].get(m)
                value = model["values"][i] if model and i < len(model["values"]) else None
                cells.append("-" if value is None else f"{100 * value:.1f}")
            lines.append(_row([f"`{a}`", str(seed), *cells]))
    return lines + [""]


def _diff_table(title: str, table: dict, key: str, adapted: list[str]) -> list[str]:
    rows = [(a, entry[key]) for a, entry in table["ablations"].items() if entry.get(key)]
    if not rows:
        return []
    lines = [title, "", _row(["ablation", *adapted]), "|---" * (len(adapted) + 1) + "|"]
    lines += [_row([f"`{a}`", *[_diff(d.get(m)) for m in adapted]]) for a, d in rows]
    return lines + [""]


def _gap_table(table: dict, adapted: list[str]) -> list[str]:
    cols = ["naive self-training", *adapted]
    lines = ["Gap closed, in %:", "", _row(["ablation", *cols]), "|---" * (len(cols) + 1) + "|"]
    for a, entry in table["ablations"].items():
        gap = entry.get("gap_recovered") or {}
        lines.append(_row([f"`{a}`", *[f"{100 * gap[m]:.0f}" if m in gap else "-" for m in cols]]))
    return lines + [""]


def _label_table(table: dict) -> list[str]:
    lines = ["Label quality against the target-train ground truth (never trained on): coverage = share of pixels "
             "labelled, accuracy = share of labelled pixels right, mIoU over labelled pixels; mean ± std, in %:", "",
             _row(["ablation", "label set", "coverage", "accuracy", "mIoU"]), "|---" * 5 + "|"]
    rows = [_row([f"`{a}`", name, *[_fmt(q[k]["mean"], q[k]["std"]) for k in ("coverage", "accuracy", "miou")]])
            for a, entry in table["ablations"].items() for name, q in entry.get("label_sets", {}).items()]
    return lines + rows + [""] if rows else []


def render_set(folder: Path, root: Path, preset: str, table: dict, *, full: bool = True) -> list[str]:
    """The section of one record set: machine, commands, then its tables (only the means when not `full`)."""
    methods = method_order([m for e in table["ablations"].values() for m in e["models"]])
    adapted = [m for m in methods if m not in ("source-only", "naive self-training", "oracle")]
    lines = [f"### `{preset}`, {_label(folder, root)}", "",
             f"Machine (CPU type of the records): {'; '.join(table['cpus'])}."]
    if not full:   # today's code would not reproduce an earlier default's records
        return lines + ["", *_mean_table(table, methods)]
    lines[-1] += " Reproduce:"
    lines += ["", "```bash", *_commands(folder, root, preset, table), "```", "", *_mean_table(table, methods)]
    lines += _seed_rows(table, methods) + _gap_table(table, adapted)
    lines += _diff_table("Minus naive self-training, paired by seed:", table, "over_naive", adapted)
    lines += _diff_table(f"Ablation minus `{table['reference']}`, paired by seed:", table, "over_reference", adapted)
    return lines + _label_table(table)


def _spec_prose(spec: dict, presets: list[str], ablations: list[str]) -> list[str]:
    lines = ["## Presets and ablations", "",
             "From configs/benchmark.yaml. Presets (data sets; config files on top of config.yaml):", ""]
    for p in presets:
        files = (spec["presets"].get(p) or {}).get("configfiles") or []
        lines.append(f"- `{p}`: " + (", ".join(files) if files else "the embedded default"))
    lines += ["", "Ablations in the records (config overrides against `full`):", ""]
    for a in ablations:
        over = spec["ablations"].get(a) or {}
        lines.append(f"- `{a}`: " + (", ".join(f"`{k}: {v}`" for k, v in over.items()) or "no override"))
    return lines + [""]


def generate(root: Path = RECORDS, spec_path: Path = SPEC) -> str:
    """The whole document from the records under `root` and the benchmark file's definitions."""
    root = Path(root)
    spec = load_spec(spec_path)
    current, old = [], []
    for folder, preset, runs in record_sets(root):
        top = folder.relative_to(root).parts[:1]
        (old if top and top[0] in SUPERSEDED else current).append((folder, preset, _table_of(folder, preset,
                                                                                            runs, spec)))
    presets = list(dict.fromkeys(p for _, p, _ in current))
    ablations = list(dict.fromkeys(a for _, _, t in current for a in t["ablations"]))
    lines = [HEADER.format(command=COMMAND), *_spec_prose(spec, presets, ablations), "## Current default", ""]
    for folder, preset, table in current:
        lines += render_set(folder, root, preset, table)
    if old:
        lines += ["## Superseded record sets", "",
                  "Records of an earlier default, kept for comparison; today's code does not reproduce "
                  "them and they are not comparable with the tables above (their history: docs/notebook/). "
                  "Means only:", ""]
        for folder, preset, table in old:
            lines += render_set(folder, root, preset, table, full=False)
    return "\n".join(lines).rstrip("\n") + "\n"


def write(text: str, out: Path) -> None:
    """Atomically: a reader never sees half a document."""
    with atomic_path(out) as tmp:
        Path(tmp).write_text(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Write docs/results.md from the kept benchmark records.")
    p.add_argument("--check", action="store_true", help="only compare; exit 1 when the file is out of date")
    p.add_argument("--records", type=Path, default=RECORDS, help="records folder (default: benchmark_records)")
    p.add_argument("--spec", type=Path, default=SPEC, help="benchmark file (default: configs/benchmark.yaml)")
    p.add_argument("--out", type=Path, default=OUT, help="output file (default: docs/results.md)")
    args = p.parse_args(argv)
    text = generate(args.records, args.spec)
    if args.check:
        if (args.out.read_text() if args.out.is_file() else "") != text:
            print(f"{args.out} is out of date with {args.records}; regenerate it: {COMMAND}", file=sys.stderr)
            return 1
        return 0
    write(text, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

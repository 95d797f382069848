"""Mean and standard deviation over seeds of every run's summary, per ablation and method.

Runs are read through archive.load_run: the kept records (benchmark_records/<preset>/<experiment>.json,
possibly made on other days and machines) first, then finished results/<experiment>/ trees.
Paired differences (by seed) carry a 95 % t-interval (stats.paired). A pair is only formed from two
runs on the same CPU type (archive.same_cpu): across types the floating-point results differ by more
than most effects, so such a pair would measure the machines.
"""
from __future__ import annotations

import os
from typing import Sequence

from bismap.sweep.archive import cpu_key, cpu_of, load_run, same_cpu
from bismap.sweep.spec import experiment_name, seeds_of
from bismap.sweep.stats import mean_std, paired

# The methods of the table, in order (model names as summary.json writes them).
METHOD_ORDER = ("source-only", "naive self-training", "BiSMAP self-training")


def method_order(names: Sequence[str]) -> list[str]:
    def key(n: str) -> tuple:
        if n in METHOD_ORDER:
            return (METHOD_ORDER.index(n), n)
        if n.startswith("distillation"):
            return (len(METHOD_ORDER), n)
        if n == "oracle":
            return (len(METHOD_ORDER) + 2, n)
        return (len(METHOD_ORDER) + 1, n)
    return sorted(set(names), key=key)


def aggregate(spec: dict, results_root: str | os.PathLike = "results",
              archives: Sequence[str | os.PathLike] | None = None) -> dict:
    """Every (ablation, seed) run found (archive records, then results/), reduced over seeds."""
    archives = [spec["archive"]] if archives is None and spec.get("archive") else list(archives or [])
    table: dict = {"preset": spec.get("preset", "default"), "seeds": list(spec["seeds"]),
                   "reference": spec.get("reference", "full"), "ablations": {}, "missing": [], "runs": []}
    wanted = spec.get("run_ablations") or list(spec["ablations"])
    for ablation in [*wanted, *[a for a in spec["ablations"] if a not in wanted]]:
        records = []
        for seed in seeds_of(spec, ablation):
            rec = load_run(spec, ablation, seed, results_root, archives)
            if rec is None:
                if ablation in wanted:
                    table["missing"].append(experiment_name(spec["prefix"], ablation, seed))
                continue
            records.append((seed, rec))
            table["runs"].append({**{k: rec.get(k)
                                     for k in ("experiment", "cpu", "commit", "date", "wall_s", "source")},
                                  "cpu_key": cpu_key(rec)})
        if records:
            table["ablations"][ablation] = _reduce(records)
    ref = table["ablations"].get(table["reference"])
    for name, entry in table["ablations"].items():
        if ref is not None and name != table["reference"]:
            entry["over_reference"] = over_reference(entry["models"], ref["models"])
    table["cpus"] = sorted({r["cpu_key"] or "unknown (results/ without a record)" for r in table["runs"]})
    return table


def _reduce(records: list[tuple]) -> dict:
    """Mean ± std over the seeds of one ablation's runs, per model, class and label set."""
    per_model: dict[str, dict] = {}
    per_labels: dict[str, dict[str, list]] = {}
    for seed, rec in records:
        summary = rec["summary"]
        for row in summary.get("models", []):
            entry = per_model.setdefault(row["model"], {"headline": row.get("headline", "miou"), "values": [],
                                                        "seeds": [], "cpus": [], "classes": {}})
            entry["values"].append(row.get("miou_headline"))
            entry["seeds"].append(seed)
            entry["cpus"].append(cpu_of(rec))
            for cls, iou in (row.get("iou_per_class") or {}).items():
                entry["classes"].setdefault(cls, []).append(iou)
        for row in summary.get("label_sets", []):
            entry = per_labels.setdefault(row["labels"], {"coverage": [], "accuracy": [], "miou": []})
            for key in entry:
                entry[key].append(row.get(key))
    models = {}
    for name in method_order(per_model):
        entry = per_model[name]
        m, s = mean_std(entry["values"])
        models[name] = {"headline": entry["headline"], "mean": m, "std": s, "n": len(entry["values"]),
                        "values": entry["values"], "seeds": entry["seeds"], "cpus": entry["cpus"],
                        "classes": {c: dict(zip(("mean", "std"), mean_std(v))) for c, v in entry["classes"].items()}}
    labels = {name: {key: dict(zip(("mean", "std"), mean_std(v))) for key, v in entry.items()}
              for name, entry in per_labels.items()}
    return {"seeds": [seed for seed, _ in records], "models": models, "label_sets": labels,
            "gap_recovered": gap_recovered(models), "over_naive": over_naive(models)}


def _paired_by_seed(a: dict, b: dict) -> dict:
    """a - b over the seeds both have on the same CPU type: mean, std, n, the 95 % t-interval, and
    `other_cpu`, the seeds left out because their two runs ran on different CPU types."""
    b_by_seed = {s: (v, c) for s, v, c in zip(b["seeds"], b["values"], b.get("cpus") or [None] * len(b["seeds"]))}
    diffs, other_cpu = [], []
    for s, v, c in zip(a["seeds"], a["values"], a.get("cpus") or [None] * len(a["seeds"])):
        if s not in b_by_seed or v is None or b_by_seed[s][0] is None:
            continue
        if not same_cpu(c, b_by_seed[s][1]):
            other_cpu.append(s)
            continue
        diffs.append(v - b_by_seed[s][0])
    return {**paired(diffs), "other_cpu": other_cpu}


def over_reference(models: dict, reference: dict) -> dict:
    """Per model: (ablation - reference) mIoU paired by seed, with its 95 % t-interval."""
    return {name: _paired_by_seed(m, reference[name]) for name, m in models.items() if name in reference}


def over_naive(models: dict) -> dict | None:
    """Per adapted model: (its mIoU - naive self-training's) paired by seed, with its 95 % t-interval."""
    base = models.get("naive self-training")
    if base is None:
        return None
    return {name: _paired_by_seed(m, base) for name, m in models.items()
            if name not in ("source-only", "naive self-training", "oracle")}


def gap_recovered(models: dict) -> dict | None:
    """Share of the source-only -> oracle gap each adapted model closes (from the seed means)."""
    if "source-only" not in models or "oracle" not in models:
        return None
    lo, hi = models["source-only"]["mean"], models["oracle"]["mean"]
    if lo is None or hi is None or hi <= lo:
        return None
    return {name: (m["mean"] - lo) / (hi - lo) for name, m in models.items()
            if name not in ("source-only", "oracle") and m["mean"] is not None}


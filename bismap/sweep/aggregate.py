"""Mean and standard deviation over seeds of every run's summary.json, per ablation and method."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

from bismap.io import read_json
from bismap.sweep.run import FORCE_MARKER
from bismap.sweep.spec import experiment_name

# The methods of the table, in order (model names as summary.json writes them).
METHOD_ORDER = ("source-only", "naive self-training", "BiSMAP self-training")


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n-1; 0.0 for a single value; None for none)."""
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return None, None
    m = sum(vals) / len(vals)
    if len(vals) == 1:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))


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


def aggregate(spec: dict, results_root: str | os.PathLike = "results") -> dict:
    """Read results/<experiment>/summary.json of every (ablation, seed) and reduce over seeds."""
    root = Path(results_root)
    table: dict = {"seeds": list(spec["seeds"]), "reference": spec.get("reference", "full"), "ablations": {},
                   "missing": []}
    for ablation in spec["ablations"]:
        per_model: dict[str, dict] = {}
        per_labels: dict[str, dict[str, list]] = {}
        seeds_found = []
        for seed in spec["seeds"]:
            exp = experiment_name(spec["prefix"], ablation, seed)
            path = root / exp / "summary.json"
            if not path.is_file() or (root / exp / FORCE_MARKER).exists():  # not run, or copied and unfinished
                table["missing"].append(exp)
                continue
            summary = read_json(path)
            seeds_found.append(seed)
            for row in summary.get("models", []):
                entry = per_model.setdefault(row["model"], {"headline": row.get("headline", "miou"),
                                                            "values": [], "classes": {}})
                entry["values"].append(row.get("miou_headline"))
                for cls, iou in (row.get("iou_per_class") or {}).items():
                    entry["classes"].setdefault(cls, []).append(iou)
            for row in summary.get("label_sets", []):
                entry = per_labels.setdefault(row["labels"], {"coverage": [], "accuracy": [], "miou": []})
                for key in entry:
                    entry[key].append(row.get(key))
        if not seeds_found:
            continue
        models = {}
        for name in method_order(per_model):
            entry = per_model[name]
            m, s = mean_std(entry["values"])
            models[name] = {"headline": entry["headline"], "mean": m, "std": s, "n": len(entry["values"]),
                            "values": entry["values"], "seeds": list(seeds_found),
                            "classes": {c: dict(zip(("mean", "std"), mean_std(v))) for c, v in entry["classes"].items()}}
        labels = {name: {key: dict(zip(("mean", "std"), mean_std(v))) for key, v in entry.items()}
                  for name, entry in per_labels.items()}
        table["ablations"][ablation] = {"seeds": seeds_found, "models": models, "label_sets": labels,
                                        "gap_recovered": gap_recovered(models), "over_naive": over_naive(models)}
    ref = table["ablations"].get(table["reference"])
    for name, entry in table["ablations"].items():
        if ref is not None and name != table["reference"]:
            entry["over_reference"] = over_reference(entry["models"], ref["models"])
    return table


def over_reference(models: dict, reference: dict) -> dict:
    """Per model: mean and std of (ablation - reference) mIoU over the seeds both have (paired)."""
    out = {}
    for name, m in models.items():
        r = reference.get(name)
        if r is None:
            continue
        ref_by_seed = dict(zip(r["seeds"], r["values"]))
        diffs = [v - ref_by_seed[s] for s, v in zip(m["seeds"], m["values"])
                 if s in ref_by_seed and v is not None and ref_by_seed[s] is not None]
        mean, std = mean_std(diffs)
        out[name] = {"mean": mean, "std": std, "n": len(diffs)}
    return out


def over_naive(models: dict) -> dict | None:
    """Per adapted model: mean and std over seeds of (its mIoU - naive self-training's), paired by seed."""
    base = models.get("naive self-training")
    if base is None:
        return None
    out = {}
    for name, m in models.items():
        if name in ("source-only", "naive self-training", "oracle") or len(m["values"]) != len(base["values"]):
            continue
        diffs = [a - b for a, b in zip(m["values"], base["values"]) if a is not None and b is not None]
        mean, std = mean_std(diffs)
        out[name] = {"mean": mean, "std": std}
    return out


def gap_recovered(models: dict) -> dict | None:
    """Share of the source-only -> oracle gap each adapted model closes (from the seed means)."""
    if "source-only" not in models or "oracle" not in models:
        return None
    lo, hi = models["source-only"]["mean"], models["oracle"]["mean"]
    if lo is None or hi is None or hi <= lo:
        return None
    return {name: (m["mean"] - lo) / (hi - lo) for name, m in models.items()
            if name not in ("source-only", "oracle") and m["mean"] is not None}


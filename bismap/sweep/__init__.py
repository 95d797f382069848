"""Benchmark over seeds and ablations (issue #7).

A benchmark file (configs/benchmark.yaml) names seeds and ablations; every (ablation, seed) pair is
one ordinary pipeline run, `snakemake --configfile <base_config> <overlay>`, where the overlay sets
`experiment: <prefix>_<ablation>_s<seed>`, the seed keys and the ablation's overrides. Each run
lives in its own results/<experiment>/ tree, so runs never clobber each other and a finished run
is not redone (Snakemake sees its outputs). `aggregate` then reads every results/<experiment>/
summary.json and writes the mean and (sample) standard deviation over seeds of target-val mIoU
per method and per class: table.md, table.json and a Pillow bar plot with error bars.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

from bismap.io import InputError, atomic_path, read_json, write_json

# The methods of the table, in order (model names as summary.json writes them).
METHOD_ORDER = ("source-only", "naive self-training", "BiSMAP self-training")
FORCE_MARKER = ".benchmark_forcerun"  # rules still to force in a run copied from its reference run


def load_spec(path: str | os.PathLike) -> dict:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: benchmark file not found")
    spec = yaml.safe_load(p.read_text()) or {}
    if not isinstance(spec, dict):
        raise InputError(f"{p}: expected a mapping")
    spec.setdefault("base_config", "config.yaml")
    spec.setdefault("prefix", "bench")
    spec.setdefault("out", "results/benchmark")
    spec.setdefault("cores", 2)
    spec.setdefault("seed_keys", ["train.seed"])
    spec.setdefault("ablations", {"full": {}})
    spec.setdefault("reference", "full")
    spec.setdefault("reuse", True)
    seeds = spec.get("seeds")
    if not isinstance(seeds, list) or not seeds:
        raise InputError(f"{p}: `seeds` must be a non-empty list")
    if not isinstance(spec["ablations"], dict) or not spec["ablations"]:
        raise InputError(f"{p}: `ablations` must be a non-empty mapping name -> overrides")
    for name, overrides in spec["ablations"].items():
        if overrides is not None and not isinstance(overrides, dict):
            raise InputError(f"{p}: ablation {name!r}: overrides must be a mapping of dotted keys")
    return spec


def experiment_name(prefix: str, ablation: str, seed: Any) -> str:
    return f"{prefix}_{ablation}_s{seed}"


def set_dotted(cfg: dict, key: str, value: Any) -> None:
    node = cfg
    parts = str(key).split(".")
    for part in parts[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise InputError(f"benchmark: cannot set {key!r}: {part!r} is not a mapping")
        node = nxt
    node[parts[-1]] = value


def overlay(spec: dict, ablation: str, seed: Any) -> dict:
    """The config overlay of one run: experiment name, seed keys, the ablation's overrides."""
    cfg: dict = {"experiment": experiment_name(spec["prefix"], ablation, seed)}
    for key in spec["seed_keys"]:
        set_dotted(cfg, key, seed)
    for key, value in (spec["ablations"][ablation] or {}).items():
        set_dotted(cfg, key, value)
    return cfg


def runs(spec: dict, ablations: Sequence[str] | None = None, seeds: Sequence[Any] | None = None) -> list[tuple[str, Any]]:
    names = list(spec["ablations"]) if not ablations else list(ablations)
    for name in names:
        if name not in spec["ablations"]:
            raise InputError(f"benchmark: unknown ablation {name!r} (have {', '.join(spec['ablations'])})")
    chosen = list(spec["seeds"]) if seeds is None else list(seeds)
    # seed-major: all ablations of the first seed come before the second seed
    return [(a, s) for s in chosen for a in names]


def rerun_roots(dry_run_output: str) -> tuple[list[str], bool]:
    """Rules a dry run would rerun for their own sake, and whether any output is missing.

    Reads the "Reasons:" block Snakemake prints: every rule listed under a reason other than
    "input files updated by another job" (params or code changed, forced, missing output) is a root;
    Snakemake's own provenance records decide, so a switch reruns exactly what it affects.
    """
    roots: set[str] = set()
    missing = False
    if "Reasons:" not in dry_run_output:
        return [], False
    header = None
    for line in dry_run_output.split("Reasons:", 1)[1].splitlines()[1:]:
        if not line.strip():
            break
        if line.startswith("        ") and header is not None:
            names = [n.strip() for n in line.split(",") if n.strip()]
            if "updated by another job" not in header:
                roots.update(names)
            if "have to be generated" in header or "missing" in header:
                missing = True
        elif line.startswith("    ") and line.rstrip().endswith(":"):
            header = line.strip()
        elif line.strip().startswith("("):
            continue
        else:
            break
    return sorted(roots), missing


def _snakemake_cmd(snakemake: str, spec: dict, overlay_path: Path, extra_args: Sequence[str]) -> list[str]:
    return [snakemake, "--cores", str(spec["cores"]), "--configfile", str(spec["base_config"]), str(overlay_path),
            *extra_args]


def _write_overlay(cfg: dict, path: Path) -> Path:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def reuse_plan(spec: dict, ablation: str, seed: Any, snakemake: str, results_root: Path) -> list[str] | None:
    """Rules to force in a copy of the reference run of this seed, or None to run from scratch.

    The ablation's config is dry-run against the finished reference run (`full`, same seed): what
    Snakemake would redo there is what differs. None when there is no finished reference run.
    """
    ref = spec.get("reference", "full")
    if ablation == ref or not spec.get("reuse", True) or ref not in spec["ablations"]:
        return None
    ref_exp = experiment_name(spec["prefix"], ref, seed)
    if not (results_root / ref_exp / "summary.json").is_file():
        return None
    cfg = overlay(spec, ablation, seed)
    cfg["experiment"] = ref_exp
    probe = _write_overlay(cfg, Path(spec["out"]) / "configs" / f"probe_{experiment_name(spec['prefix'], ablation, seed)}.yaml")
    cmd = _snakemake_cmd(snakemake, spec, probe, ["--dry-run", "--nolock"])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise InputError(f"benchmark: dry run of {ablation} against {ref_exp} failed:\n{proc.stderr[-2000:]}")
    text = proc.stdout + proc.stderr
    roots, missing = rerun_roots(text)
    if missing:
        print(f"benchmark: {ref_exp} is incomplete; {ablation} runs from scratch", flush=True)
        return None
    if "missing provenance" in text or (spec["ablations"][ablation] and not roots):
        # without provenance records Snakemake cannot see a params change: copying would be unsafe
        print(f"benchmark: {ref_exp} lacks Snakemake provenance records; {ablation} runs from scratch", flush=True)
        return None
    return roots


def run_all(spec: dict, *, ablations: Sequence[str] | None = None, seeds: Sequence[Any] | None = None,
            snakemake: str | None = None, extra_args: Sequence[str] = (), dry_run: bool = False,
            keep_going: bool = False, results_root: str | os.PathLike = "results") -> list[str]:
    """Run the pipeline once per (ablation, seed); returns the experiment names run.

    An ablation whose seed already has a finished reference run starts from a copy of it (file
    times kept) and reruns only the stages its switch affects (`reuse: false` turns this off).
    """
    import shutil

    out = Path(spec["out"])
    root = Path(results_root)
    snakemake = snakemake or str(Path(sys.executable).with_name("snakemake"))
    done = []
    for ablation, seed in runs(spec, ablations, seeds):
        cfg = overlay(spec, ablation, seed)
        exp = cfg["experiment"]
        path = _write_overlay(cfg, out / "configs" / f"{exp}.yaml")
        extra = list(extra_args)
        # The copy's outputs carry no Snakemake provenance, so the rules to force are kept in a
        # marker until the run succeeds: a run killed after the copy still reruns them next time.
        marker = root / exp / FORCE_MARKER
        if not dry_run and not (root / exp).exists():
            roots = reuse_plan(spec, ablation, seed, snakemake, root)
            if roots is not None:
                ref_exp = experiment_name(spec["prefix"], spec.get("reference", "full"), seed)
                print(f"benchmark: {exp} starts from a copy of {ref_exp}; rerunning "
                      f"{', '.join(roots) or 'nothing'} and what depends on it", flush=True)
                tmp = root / f".{exp}.copying"
                shutil.rmtree(tmp, ignore_errors=True)
                shutil.copytree(root / ref_exp, tmp, copy_function=shutil.copy2)
                for name in ("summary.json", "summary.md"):  # the reference's results must never pass as this run's
                    (tmp / name).unlink(missing_ok=True)
                (tmp / FORCE_MARKER).write_text("\n".join(roots) + "\n")
                tmp.rename(root / exp)
        if not dry_run and marker.is_file():
            roots = marker.read_text().split()
            if roots:
                extra += ["--forcerun", *roots]
        cmd = _snakemake_cmd(snakemake, spec, path, extra)
        print("benchmark:", " ".join(cmd), flush=True)
        if dry_run:
            done.append(exp)
            continue
        rc = subprocess.call(cmd)
        if rc != 0:
            msg = f"benchmark: run {exp} failed (snakemake exit {rc})"
            if not keep_going:
                raise InputError(msg)
            print(msg, file=sys.stderr, flush=True)
            continue
        marker.unlink(missing_ok=True)
        done.append(exp)
    return done


# ---------------------------------------------------------------------------------------------
# Aggregation


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n-1; 0.0 for a single value; None for none)."""
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return None, None
    m = sum(vals) / len(vals)
    if len(vals) == 1:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))


def _method_order(names: Sequence[str]) -> list[str]:
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
        for name in _method_order(per_model):
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


def _fmt(m: float | None, s: float | None) -> str:
    if m is None:
        return "-"
    return f"{100 * m:.1f} ± {100 * (s or 0.0):.1f}"


def table_markdown(table: dict) -> str:
    lines = ["# bismap benchmark", "",
             "Target-val mIoU in %, mean ± sample std over seeds (n = seeds found). "
             "Each ablation is one config switch away from `full`.", ""]
    abls = list(table["ablations"])
    methods = _method_order([m for a in abls for m in table["ablations"][a]["models"]])
    if abls:
        lines += ["| ablation | n | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
        for a in abls:
            models = table["ablations"][a]["models"]
            cells = [_fmt(models[m]["mean"], models[m]["std"]) if m in models else "-" for m in methods]
            lines.append(f"| {a} | {len(table['ablations'][a]['seeds'])} | " + " | ".join(cells) + " |")
        lines.append("")
        lines += ["Share of the source-only to oracle gap closed (from the means), in %:", "",
                  "| ablation | " + " | ".join(m for m in methods if m not in ("source-only", "oracle")) + " |",
                  "|---|" + "---|" * len([m for m in methods if m not in ("source-only", "oracle")])]
        for a in abls:
            rec = table["ablations"][a].get("gap_recovered") or {}
            cells = [f"{100 * rec[m]:.0f}" if m in rec else "-" for m in methods if m not in ("source-only", "oracle")]
            lines.append(f"| {a} | " + " | ".join(cells) + " |")
        lines.append("")
        adapted = [m for m in methods if m not in ("source-only", "naive self-training", "oracle")]
        lines += ["mIoU minus naive self-training's, paired by seed (mean ± std over seeds):", "",
                  "| ablation | " + " | ".join(adapted) + " |", "|---|" + "---|" * len(adapted)]
        for a in abls:
            diff = table["ablations"][a].get("over_naive") or {}
            cells = [(f"{100 * diff[m]['mean']:+.1f} ± {100 * (diff[m]['std'] or 0):.1f}"
                      if m in diff and diff[m]["mean"] is not None else "-") for m in adapted]
            lines.append(f"| {a} | " + " | ".join(cells) + " |")
        lines.append("")
        if len(abls) > 1:
            lines += [f"Ablation minus `{table.get('reference', 'full')}` on the same seeds (paired; mean ± std, "
                      "n = shared seeds):", "",
                      "| ablation | n | " + " | ".join(adapted) + " |", "|---|---|" + "---|" * len(adapted)]
            for a in abls:
                diff = table["ablations"][a].get("over_reference")
                if not diff:
                    continue
                n = max((d["n"] for d in diff.values()), default=0)
                cells = [(f"{100 * diff[m]['mean']:+.1f} ± {100 * (diff[m]['std'] or 0):.1f}"
                          if m in diff and diff[m]["mean"] is not None else "-") for m in adapted]
                lines.append(f"| {a} | {n} | " + " | ".join(cells) + " |")
            lines.append("")
        sets = [s for a in abls for s in table["ablations"][a].get("label_sets", {})]
        sets = list(dict.fromkeys(sets))
        if sets:
            lines += ["## Pseudo-label quality per stage", "",
                      "Against the target-train ground truth (never used for training): coverage = share of "
                      "pixels labelled, accuracy = share of labelled pixels right, mIoU over labelled pixels; "
                      "mean ± std over seeds, in %.", "",
                      "| ablation | label set | coverage | accuracy | mIoU |", "|---|---|---|---|---|"]
            for a in abls:
                for name, q in table["ablations"][a].get("label_sets", {}).items():
                    cells = [_fmt(q[k]["mean"], q[k]["std"]) for k in ("coverage", "accuracy", "miou")]
                    lines.append(f"| {a} | {name} | " + " | ".join(cells) + " |")
            lines.append("")
    for a in abls:
        models = table["ablations"][a]["models"]
        classes: list[str] = []
        for m in models.values():
            classes += [c for c in m["classes"] if c not in classes]
        lines += [f"## Per-class IoU: {a}", "", "| class | " + " | ".join(models) + " |",
                  "|---|" + "---|" * len(models)]
        for c in classes:
            cells = [_fmt(models[m]["classes"].get(c, {}).get("mean"), models[m]["classes"].get(c, {}).get("std"))
                     for m in models]
            lines.append(f"| {c} | " + " | ".join(cells) + " |")
        lines.append("")
    if table["missing"]:
        lines += ["Runs not found (not run or failed): " + ", ".join(table["missing"]), ""]
    return "\n".join(lines)


def plot_rows(table: dict) -> list[tuple[str, str, float | None, float | None]]:
    """(ablation, method, mean, std) bars; the baselines every ablation shares are drawn once."""
    baselines = ("source-only", "naive self-training", "oracle")
    reference = table.get("reference", "full")
    rows: list[tuple[str, str, float | None, float | None]] = []
    for a, entry in table["ablations"].items():
        for m, v in entry["models"].items():
            if a == reference or m not in baselines or len(table["ablations"]) == 1:
                rows.append((a, m, v["mean"], v["std"]))
    return rows


def text_plot(table: dict, width: int = 50) -> str:
    """The plot as text bars (for terminals and the README): one '#' per 100/width mIoU points."""
    lines = ["target-val mIoU (%), mean ± std over seeds (n)"]
    rows = plot_rows(table)
    label_w = max([len(f"{a}: {m}") for a, m, _, _ in rows] + [10])
    for a, m, mean, std in rows:
        n = len(table["ablations"][a]["seeds"])
        bar = "#" * int(round(width * (mean or 0.0)))
        value = "-" if mean is None else f"{100 * mean:.1f} ± {100 * (std or 0.0):.1f} ({n})"
        lines.append(f"{a + ': ' + m:<{label_w}} |{bar} {value}")
    return "\n".join(lines) + "\n"


def plot(table: dict, out_png: str | os.PathLike, *, width: int = 760, bar_height: int = 20) -> None:
    """Horizontal bars (mean) with std whiskers: one group per ablation, one bar per method."""
    from PIL import Image, ImageDraw

    rows = plot_rows(table)
    margin_left, margin_right, top = 300, 80, 36
    height = top + bar_height * max(len(rows), 1) + 24
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    draw.text((10, 10), "target-val mIoU (%), mean ± std over seeds", fill="black")
    vmax = max([(m or 0) + (s or 0) for _, _, m, s in rows] + [0.05])
    span = width - margin_left - margin_right
    colours = {"source-only": (150, 150, 150), "naive self-training": (190, 150, 110), "oracle": (90, 170, 90)}
    prev = None
    for i, (a, m, mean, std) in enumerate(rows):
        y = top + i * bar_height
        if a != prev and i:
            draw.line([10, y, width - 10, y], fill=(200, 200, 200))
        prev = a
        draw.text((10, y + bar_height // 2 - 6), f"{a}: {m}", fill="black")
        if mean is None:
            continue
        w = int(round(span * mean / vmax))
        draw.rectangle([margin_left, y + 3, margin_left + max(w, 1), y + bar_height - 3],
                       fill=colours.get(m, (70, 120, 200)))
        if std:
            lo = margin_left + int(round(span * max(mean - std, 0) / vmax))
            hi = margin_left + int(round(span * (mean + std) / vmax))
            yc = y + bar_height // 2
            draw.line([lo, yc, hi, yc], fill="black")
            draw.line([lo, yc - 4, lo, yc + 4], fill="black")
            draw.line([hi, yc - 4, hi, yc + 4], fill="black")
        draw.text((margin_left + w + 8 + (int(round(span * (std or 0) / vmax))), y + bar_height // 2 - 6),
                  f"{100 * mean:.1f}", fill="black")
    draw.line([margin_left, top - 2, margin_left, height - 16], fill="black")
    with atomic_path(out_png) as tmp:
        img.save(tmp, format="PNG")


def write_outputs(table: dict, out: str | os.PathLike) -> list[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "table.json", table)
    with atomic_path(out / "table.md") as tmp:
        Path(tmp).write_text(table_markdown(table))
    plot(table, out / "plot.png")
    with atomic_path(out / "plot.txt") as tmp:
        Path(tmp).write_text(text_plot(table))
    return [out / "table.md", out / "table.json", out / "plot.png", out / "plot.txt"]

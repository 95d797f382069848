"""The benchmark's outputs: table.md, table.json, a Pillow bar plot and a text plot."""
from __future__ import annotations

import os
from pathlib import Path

from bismap.io import atomic_path, write_json
from bismap.sweep.aggregate import method_order


def _fmt(m: float | None, s: float | None) -> str:
    if m is None:
        return "-"
    return f"{100 * m:.1f} ± {100 * (s or 0.0):.1f}"


def _diff(d: dict | None) -> str:
    """A paired difference in points: mean [95 % t-interval] (n), or mean (n) below two pairs."""
    if not d or d.get("mean") is None:
        return f"- ({len(d['other_cpu'])} left out: other CPU)" if d and d.get("other_cpu") else "-"
    left_out = f", {len(d['other_cpu'])} left out: other CPU" if d.get("other_cpu") else ""
    if d.get("lo") is None:
        return f"{100 * d['mean']:+.1f} (n={d['n']}{left_out})"
    return f"{100 * d['mean']:+.1f} [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}] (n={d['n']}{left_out})"


def _provenance(table: dict) -> list[str]:
    runs = table.get("runs", [])
    kept = sum(1 for r in runs if r.get("cpu") is not None)
    commits = sorted({(r.get("commit") or "")[:12] for r in runs if r.get("commit")})
    return [f"Preset `{table.get('preset', 'default')}`: {len(runs)} runs ({kept} from kept records, "
            f"{len(runs) - kept} from results/ only); CPUs: {'; '.join(table.get('cpus', [])) or '-'}; "
            f"commits: {', '.join(commits) or '-'}."
            + (" Results differ across CPU types: means mix them, differences pair only runs on one type."
               if len([c for c in table.get("cpus", []) if not c.startswith("unknown")]) > 1 else ""), ""]


def table_markdown(table: dict) -> str:
    """The benchmark table as markdown. Long because it is one linear sequence of table sections."""
    lines = ["# bismap benchmark", "",
             "Target-val mIoU in %, mean ± sample std over seeds (n = seeds found). "
             "Each ablation is one config switch away from `full`. Differences are paired by seed: "
             "mean [95 % t-interval] (n pairs), in points.", "", *_provenance(table)]
    abls = list(table["ablations"])
    methods = method_order([m for a in abls for m in table["ablations"][a]["models"]])
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
        lines += ["mIoU minus naive self-training's, paired by seed (mean [95 % t-interval] (n)):", "",
                  "| ablation | " + " | ".join(adapted) + " |", "|---|" + "---|" * len(adapted)]
        for a in abls:
            diff = table["ablations"][a].get("over_naive") or {}
            lines.append(f"| {a} | " + " | ".join(_diff(diff.get(m)) for m in adapted) + " |")
        lines.append("")
        if len(abls) > 1:
            lines += [f"Ablation minus `{table.get('reference', 'full')}` on the same seeds (paired; "
                      "mean [95 % t-interval] (n shared seeds)):", "",
                      "| ablation | " + " | ".join(adapted) + " |", "|---|" + "---|" * len(adapted)]
            for a in abls:
                diff = table["ablations"][a].get("over_reference")
                if diff:
                    lines.append(f"| {a} | " + " | ".join(_diff(diff.get(m)) for m in adapted) + " |")
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
    """The plot as text bars (for terminals and docs/results.md): one '#' per 100/width mIoU points."""
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

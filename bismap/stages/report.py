"""Stage: the benchmark table and figures at the end of the workflow.

Collects every model's metrics json and every label set's quality json into one markdown table
(printed at the end of `snakemake`) and one json, draws the per-model mIoU bar plot and mosaics of
example images with their labels, predictions and STM maps. Figures are drawn with Pillow only
(matplotlib is not a dependency) so the report works in the same minimal environment as training.
"""
from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw

from bismap.engine.inference import predict_labels
from bismap.io import InputError, atomic_path, read_json, write_json

# Bar colours: baselines grey, BiSMAP stages blue, oracle green (purely cosmetic).
_BAR_COLOURS = {"source-only": (150, 150, 150), "naive self-training": (190, 150, 110),
                "oracle": (90, 170, 90)}
_BAR_DEFAULT = (70, 120, 200)


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100.0 * float(value):.1f}"


def headline_key(metrics: dict, protocol: str) -> str:
    """The metric the table ranks by: the metrics file's own headline, else by protocol."""
    return str(metrics.get("headline") or ("miou16" if protocol == "synthia" else "miou"))


def build_summary(*, experiment: str, models: Sequence[str], metrics: Sequence[dict], quality_labels: Sequence[str],
                  quality: Sequence[dict], protocol: str) -> dict:
    """summary.json content: one row per model (headline + per-class IoU) and per label set."""
    if len(models) != len(metrics):
        raise InputError(f"report: {len(models)} model names for {len(metrics)} metrics files")
    if len(quality_labels) != len(quality):
        raise InputError(f"report: {len(quality_labels)} label-set names for {len(quality)} quality files")
    rows = []
    for name, m in zip(models, metrics):
        key = headline_key(m, protocol)
        rows.append({
            "model": name,
            "headline": key,
            "miou_headline": m.get(key),
            "miou": m.get("miou"),
            "miou16": m.get("miou16"),
            "miou13": m.get("miou13"),
            "miou16_ignore_missing": m.get("miou16_ignore_missing"),
            "miou13_ignore_missing": m.get("miou13_ignore_missing"),
            "miou_present": m.get("miou_present"),
            "pixel_accuracy": m.get("pixel_accuracy"),
            "iou_per_class": m.get("iou_per_class", {}),
        })
    labels = [{"labels": name, "coverage": q.get("coverage"), "accuracy": q.get("accuracy"), "miou": q.get("miou"),
               "images": q.get("images")} for name, q in zip(quality_labels, quality)]
    return {"experiment": experiment, "protocol": protocol, "models": rows, "label_sets": labels}


def summary_tables(summary: dict) -> dict[str, tuple[str, list[str], list[list[str]]]]:
    """The three tables, each (title, header, rows of cells): models, per-class IoU, label sets.

    One structure rendered twice: Markdown for summary.md and the console, HTML for the report.
    """
    rows = summary["models"]
    synthia = summary["protocol"] == "synthia"
    headline = "mIoU-16" if synthia else "mIoU over 19 classes"
    title = (f"Target val, protocol `{summary['protocol']}` (headline: {headline}); IoU in %, `-` = class "
             "absent from prediction and ground truth.")
    if synthia:
        header = ["model", "mIoU-16", "mIoU-13", "mIoU-16 (missing ignored)", "mIoU-13 (missing ignored)",
                  "mIoU-19", "pixel acc"]
        cells = [[r["model"]] + [_pct(r[k]) for k in ("miou16", "miou13", "miou16_ignore_missing",
                                                      "miou13_ignore_missing", "miou", "pixel_accuracy")]
                 for r in rows]
    else:
        header = ["model", "mIoU (19 classes)", "mIoU (classes present)", "pixel acc"]
        cells = [[r["model"], _pct(r["miou"]), _pct(r["miou_present"]), _pct(r["pixel_accuracy"])] for r in rows]
    tables = {"models": (title, header, cells)}
    classes = list(rows[0]["iou_per_class"]) if rows else []
    tables["per_class_iou"] = ("Per-class IoU:", ["class"] + [r["model"] for r in rows],
                               [[c] + [_pct(r["iou_per_class"].get(c)) for r in rows] for c in classes])
    tables["label_quality"] = (
        "Target train labels (accuracy and mIoU over labelled pixels, against ground truth):",
        ["labels", "coverage", "accuracy", "mIoU"],
        [[q["labels"], _pct(q["coverage"]), _pct(q["accuracy"]), _pct(q["miou"])] for q in summary["label_sets"]])
    return tables


def summary_markdown(summary: dict) -> str:
    """Three tables: models (mIoU), per-class IoU (classes x models), label sets (when any)."""
    lines = [f"# bismap results: {summary['experiment']}"]
    for name, (title, header, cells) in summary_tables(summary).items():
        if name == "label_quality" and not cells:
            continue
        lines += ["", title, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines) + "\n"


def table_html(experiment: str, title: str, header: Sequence[str], cells: Sequence[Sequence[str]]) -> str:
    """One table as a self-contained HTML page (Snakemake's report shows it inline)."""
    def row(tag: str, values: Sequence[str]) -> str:
        return "<tr>" + "".join(f"<{tag}>{html.escape(str(v))}</{tag}>" for v in values) + "</tr>"

    body = "\n".join(row("td", r) for r in cells) or f'<tr><td colspan="{len(header)}">none</td></tr>'
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>" + html.escape(experiment) + "</title>"
            "<style>body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #bbb;"
            "padding:2px 8px;text-align:right}td:first-child,th:first-child{text-align:left}</style></head><body>"
            f"<p>{html.escape(title.replace('`', ''))}</p>\n<table>\n{row('th', header)}\n{body}\n</table>"
            "</body></html>\n")


# ------------------------------------------------------------------------------------- figures
def bar_plot(names: Sequence[str], values: Sequence[float | None], title: str, out_png: str | os.PathLike,
             *, width: int = 640, bar_height: int = 28) -> None:
    """Horizontal bar chart of mIoU per model (Pillow only)."""
    margin_left, margin_right, top = 190, 70, 36
    height = top + bar_height * len(names) + 20
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    draw.text((10, 10), title, fill="black")
    vmax = max([v for v in values if v is not None] + [1e-6])
    scale = max(vmax, 0.05)
    span = width - margin_left - margin_right
    for i, (name, v) in enumerate(zip(names, values)):
        y = top + i * bar_height
        draw.text((10, y + bar_height // 2 - 6), name, fill="black")
        if v is None:
            draw.text((margin_left, y + bar_height // 2 - 6), "n/a", fill="black")
            continue
        w = int(round(span * float(v) / scale))
        draw.rectangle([margin_left, y + 4, margin_left + max(w, 1), y + bar_height - 4],
                       fill=_BAR_COLOURS.get(name, _BAR_DEFAULT))
        draw.text((margin_left + w + 6, y + bar_height // 2 - 6), f"{100 * float(v):.1f}", fill="black")
    draw.line([margin_left, top - 2, margin_left, height - 16], fill="black")
    with atomic_path(out_png) as tmp:
        img.save(tmp, format="PNG")


def _tile(array: np.ndarray, height: int) -> Image.Image:
    im = Image.fromarray(np.ascontiguousarray(array))
    w = max(1, int(round(im.width * height / im.height)))
    return im.resize((w, height), Image.NEAREST if array.ndim == 2 or array.dtype != np.uint8 else Image.BILINEAR)


def _label_rgb(label: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray:
    """Palette colours, ignore white; a grey tile when the label is missing."""
    from bismap.data.labels import colorize

    if label is None:
        return np.full((*shape, 3), 128, np.uint8)
    rgb = colorize(label)
    rgb[np.asarray(label) == 255] = 255
    return rgb


def _grey_rgb(weights: np.ndarray) -> np.ndarray:
    return np.repeat(np.asarray(weights, np.uint8)[..., None], 3, axis=2)


def mosaic(rows: Sequence[Sequence[np.ndarray]], titles: Sequence[str], height: int) -> Image.Image:
    """Grid of RGB uint8 arrays (one list per row) under a row of column titles."""
    tiles = [[_tile(a, height) for a in row] for row in rows]
    ncol = max(len(r) for r in tiles) if tiles else len(titles)
    col_w = [max((r[c].width for r in tiles if c < len(r)), default=height * 2) for c in range(ncol)]
    pad, head = 4, 18
    width = sum(col_w) + pad * (ncol + 1)
    total_h = head + len(tiles) * (height + pad) + pad
    canvas = Image.new("RGB", (width, total_h), "white")
    draw = ImageDraw.Draw(canvas)
    x = pad
    for c in range(ncol):
        draw.text((x, 3), titles[c] if c < len(titles) else "", fill="black")
        x += col_w[c] + pad
    for i, row in enumerate(tiles):
        x, y = pad, head + i * (height + pad)
        for c, t in enumerate(row):
            canvas.paste(t, (x, y))
            x += col_w[c] + pad
    return canvas


def _read_label_dir(folder: str | os.PathLike, file_name: str) -> np.ndarray | None:
    from bismap.data.labels import read_label_png

    path = Path(folder) / file_name
    return read_label_png(path) if path.exists() else None


def target_mosaic(*, target: dict, target_gt: dict | None, label_dirs: Sequence[str], label_dir_names: Sequence[str],
                  final_checkpoint: str | None, n: int, height: int, data: dict) -> Image.Image | None:
    """Rows: target train images | GT | each label set | final model prediction."""
    from bismap.data import open_dataset

    if n <= 0:
        return None
    ds = open_dataset(target)
    gt = open_dataset(target_gt) if target_gt is not None else None
    model = None
    if final_checkpoint is not None:
        from bismap.engine.checkpoint import load_model

        model = load_model(final_checkpoint, device="cpu")
    rows = []
    for i in range(min(n, len(ds))):
        item = ds[i]
        shape = item["image"].shape[:2]
        row = [item["image"], _label_rgb(gt[i]["label"] if gt is not None else None, shape)]
        for folder in label_dirs:
            row.append(_label_rgb(_read_label_dir(folder, item["file"]), shape))
        if model is not None:

            pred = predict_labels(model, item["image"], mean=data["mean"], std=data["std"], size=shape)
            row.append(_label_rgb(pred, shape))
        rows.append(row)
    titles = ["target image", "ground truth", *label_dir_names] + (["final prediction"] if model is not None else [])
    return mosaic(rows, titles, height)


def source_mosaic(*, source: dict, stm_maps: str | None, n: int, height: int) -> Image.Image | None:
    """Rows: source image | stylised image | source label | STM weight map."""
    from bismap.data import open_dataset

    if n <= 0:
        return None
    stylised = open_dataset(source)
    raw = open_dataset({k: v for k, v in source.items() if k != "images"}) if "images" in source else None
    h5 = None
    if stm_maps is not None:
        import h5py

        h5 = h5py.File(stm_maps, "r")
    try:
        rows = []
        for i in range(min(n, len(stylised))):
            item = stylised[i]
            shape = item["image"].shape[:2]
            row = [raw[i]["image"] if raw is not None else item["image"]]
            if raw is not None:
                row.append(item["image"])
            row.append(_label_rgb(item["label"], shape))
            if h5 is not None:
                key = f"maps/{item['name']}"
                row.append(_grey_rgb(h5[key][()]) if key in h5 else np.full((*shape, 3), 128, np.uint8))
            rows.append(row)
    finally:
        if h5 is not None:
            h5.close()
    titles = ["source image"] + (["stylised"] if raw is not None else []) + ["source label"]
    titles += ["STM map"] if h5 is not None else []
    return mosaic(rows, titles, height)


def _stack(images: Sequence[Image.Image | None]) -> Image.Image:
    images = [im for im in images if im is not None]
    if not images:
        return Image.new("RGB", (64, 16), "white")
    width = max(im.width for im in images)
    canvas = Image.new("RGB", (width, sum(im.height for im in images) + 8 * (len(images) - 1)), "white")
    y = 0
    for im in images:
        canvas.paste(im, (0, y))
        y += im.height + 8
    return canvas


# --------------------------------------------------------------------------------------- stage
def run(*, metrics: Sequence[str], models: Sequence[str], quality: Sequence[str], quality_labels: Sequence[str],
        label_dirs: Sequence[str], label_dir_names: Sequence[str], final_checkpoint: str | None,
        stm_maps: str | None, target: dict, target_gt: dict | None, source: dict, out_md: str | os.PathLike,
        out_json: str | os.PathLike, out_miou_png: str | os.PathLike, out_samples_png: str | os.PathLike,
        experiment: str, protocol: str, cfg: dict, data: dict, out_tables: dict[str, str] | None = None,
        threads: int = 1) -> None:
    """Write summary.md/.json, the tables as HTML for the report (`out_tables`: table name -> path, names as
    in summary_tables), the mIoU bar plot and the example mosaic; print the table."""
    summary = build_summary(experiment=experiment, models=models, metrics=[read_json(p) for p in metrics],
                            quality_labels=quality_labels, quality=[read_json(p) for p in quality], protocol=protocol)
    text = summary_markdown(summary)
    write_json(out_json, summary)
    with atomic_path(out_md) as tmp:
        tmp.write_text(text)
    print(text, flush=True)
    tables = summary_tables(summary)
    for name, path in (out_tables or {}).items():
        if name not in tables:
            raise InputError(f"report: no table named {name!r} (have {', '.join(tables)})")
        with atomic_path(path) as tmp:
            tmp.write_text(table_html(experiment, *tables[name]))
    key = summary["models"][0]["headline"] if summary["models"] else "miou"
    bar_plot([r["model"] for r in summary["models"]], [r["miou_headline"] for r in summary["models"]],
             f"{experiment}: target val {key}", out_miou_png)
    n, height = int(cfg["samples"]), int(cfg["sample_height"])
    figure = _stack([
        target_mosaic(target=target, target_gt=target_gt, label_dirs=label_dirs, label_dir_names=label_dir_names,
                      final_checkpoint=final_checkpoint, n=n, height=height, data=data),
        source_mosaic(source=source, stm_maps=stm_maps, n=n, height=height),
    ])
    with atomic_path(out_samples_png) as tmp:
        figure.save(tmp, format="PNG")

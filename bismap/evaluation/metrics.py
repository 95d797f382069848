"""IoU metrics from the 19x(19+void) confusion matrix; identical to cityscapesScripts' class IoUs.

All scores are fractions in [0, 1]. A class whose IoU denominator is 0 (never in GT, never
predicted) has IoU null and is left out of the means, like cityscapesScripts' getScoreAverage.
"""
from __future__ import annotations

import csv
import math
import os
from typing import Any

import numpy as np

from bismap.data.labels import CLASS_NAMES, NUM_CLASSES
from bismap.io import atomic_path, write_json

# trainIds of the SYNTHIA 16-class and 13-class (mIoU*) subsets.
SYNTHIA16 = (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18)
SYNTHIA13 = (0, 1, 2, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18)
SYNTHIA_MISSING = (9, 14, 16)  # terrain, truck, train

DEFINITIONS = {
    "miou": "mean IoU over the 19 Cityscapes classes (classes with empty IoU denominator left out)",
    "miou16": "mean IoU over the 16 SYNTHIA classes, from the 19-way matrix (GT terrain/truck/train pixels stay "
              "and count as FP of what is predicted there; BiSMAP/DAFormer protocol)",
    "miou13": "mean IoU over the 13 SYNTHIA classes (16 minus wall, fence, pole), from the 19-way matrix",
    "miou16_ignore_missing": "mean IoU over the 16 SYNTHIA classes with GT terrain/truck/train pixels ignored "
                             "(ProDA/CPSL --n_class 16 protocol)",
    "miou13_ignore_missing": "mean IoU over the 13 SYNTHIA classes with GT terrain/truck/train pixels ignored",
    "miou_present": "mean IoU over the classes present in the ground truth",
    "pixel_accuracy": "correct pixels / GT pixels not ignored (void predictions count as wrong)",
}
PROTOCOLS = {"cityscapes19": "miou", "synthia": "miou16"}


def iou_per_class(matrix: np.ndarray) -> np.ndarray:
    """IoU per GT class: TP / (row sum incl. void predictions + column sum over GT classes - TP)."""
    m = np.asarray(matrix, dtype=np.int64)
    c = m.shape[0]
    tp = np.diag(m[:, :c]).astype(np.float64)
    fn_tp = m.sum(axis=1).astype(np.float64)
    fp_tp = m[:, :c].sum(axis=0).astype(np.float64)
    denom = fn_tp + fp_tp - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, tp / np.where(denom > 0, denom, 1), np.nan)


def _mean(values: np.ndarray) -> float | None:
    v = values[~np.isnan(values)]
    return float(v.mean()) if v.size else None


def _clean(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def compute_metrics(matrix: np.ndarray, protocol: str = "cityscapes19") -> dict[str, Any]:
    """Metrics dict (contract format plus the SYNTHIA ignore protocol and a definitions table)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown evaluation protocol {protocol!r}; choose from {sorted(PROTOCOLS)}")
    m = np.asarray(matrix, dtype=np.int64)
    if m.shape != (NUM_CLASSES, NUM_CLASSES + 1):
        raise ValueError(f"confusion matrix must be {NUM_CLASSES}x{NUM_CLASSES + 1}, got {m.shape}")
    iou = iou_per_class(m)
    m_ign = m.copy()
    m_ign[list(SYNTHIA_MISSING), :] = 0
    iou_ign = iou_per_class(m_ign)
    total = int(m.sum())
    present = [c for c in range(NUM_CLASSES) if m[c].sum() > 0]
    out: dict[str, Any] = {
        "protocol": protocol,
        "headline": PROTOCOLS[protocol],
        "miou": _mean(iou),
        "miou16": _mean(iou[list(SYNTHIA16)]),
        "miou13": _mean(iou[list(SYNTHIA13)]),
        "miou16_ignore_missing": _mean(iou_ign[list(SYNTHIA16)]),
        "miou13_ignore_missing": _mean(iou_ign[list(SYNTHIA13)]),
        "pixel_accuracy": float(np.trace(m[:, :NUM_CLASSES]) / total) if total else None,
        "iou_per_class": {CLASS_NAMES[c]: _clean(float(iou[c])) for c in range(NUM_CLASSES)},
        "iou_per_class_ignore_missing": {CLASS_NAMES[c]: _clean(float(iou_ign[c])) for c in SYNTHIA16},
        "present_classes": [CLASS_NAMES[c] for c in present],
        "miou_present": _mean(iou[present]) if present else None,
        "pixels": total,
        "void_predictions": int(m[:, NUM_CLASSES].sum()),
        "definitions": DEFINITIONS,
    }
    return out


def write_confusion_csv(path: str | os.PathLike, matrix: np.ndarray) -> None:
    """Rows: GT class; columns: predicted class, last column 'void' (non-class predictions)."""
    m = np.asarray(matrix, dtype=np.int64)
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["gt\\pred", *CLASS_NAMES, "void"])
            for c in range(m.shape[0]):
                w.writerow([CLASS_NAMES[c], *(int(v) for v in m[c])])


def read_confusion_csv(path: str | os.PathLike) -> np.ndarray:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))[1:]
    return np.array([[int(v) for v in r[1:]] for r in rows], dtype=np.int64)


def write_metrics(matrix: np.ndarray, out_json: str | os.PathLike, out_csv: str | os.PathLike | None = None,
                  protocol: str = "cityscapes19", extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Compute metrics, add `extra` (e.g. checkpoint, images), write JSON (+ CSV) atomically."""
    metrics = compute_metrics(matrix, protocol)
    if extra:
        metrics.update(extra)
    write_json(out_json, metrics)
    if out_csv is not None:
        write_confusion_csv(out_csv, matrix)
    return metrics

"""Pseudo-label quality: how much of the target is labelled, and how right those labels are.

Accuracy and mIoU are measured only on pixels that carry a pseudo label (pred != 255) and valid
GT: they measure the precision of the selected labels; `coverage` says how many were selected.
"""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from bismap.data.labels import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES
from bismap.evaluation.confusion import ConfusionMatrix
from bismap.evaluation.metrics import iou_per_class


def label_quality(pairs: Iterable[tuple[np.ndarray, np.ndarray | None]]) -> dict[str, Any]:
    """pairs of (pseudo label uint8 [H,W], GT trainIds uint8 [H,W] or None) -> quality dict.

    coverage: labelled pixels / all pixels; coverage_per_class: share of all pixels given each class;
    accuracy / miou / iou_per_class: over labelled pixels with GT, null when no pair has GT;
    gt_class_frequency: each class's share of the valid GT pixels (the true target-train prior that an
    estimated prior is compared with), null without GT.
    """
    n_images = 0
    total = 0
    per_class = np.zeros(NUM_CLASSES, dtype=np.int64)
    conf = ConfusionMatrix()
    with_gt = 0
    gt_counts = np.zeros(NUM_CLASSES, dtype=np.int64)
    for pred, gt in pairs:
        pred = np.asarray(pred)
        n_images += 1
        total += pred.size
        valid = pred < NUM_CLASSES
        per_class += np.bincount(pred[valid].astype(np.int64), minlength=NUM_CLASSES)[:NUM_CLASSES]
        if gt is not None:
            gt = np.asarray(gt)
            if gt.shape != pred.shape:
                raise ValueError(f"pseudo label shape {pred.shape} != GT shape {gt.shape}")
            with_gt += 1
            conf.update(pred[valid], gt[valid])
            gt_counts += np.bincount(gt[gt < NUM_CLASSES].astype(np.int64), minlength=NUM_CLASSES)[:NUM_CLASSES]
    covered = int(per_class.sum())
    out: dict[str, Any] = {
        "images": n_images,
        "coverage": covered / total if total else 0.0,
        "coverage_per_class": {CLASS_NAMES[c]: (int(per_class[c]) / total if total else 0.0)
                               for c in range(NUM_CLASSES)},
        "accuracy": None, "miou": None, "iou_per_class": None, "images_with_gt": with_gt,
        "gt_class_frequency": ({CLASS_NAMES[c]: int(gt_counts[c]) / int(gt_counts.sum()) for c in range(NUM_CLASSES)}
                               if gt_counts.sum() else None),
    }
    m = conf.matrix
    if with_gt and m.sum() > 0:
        iou = iou_per_class(m)
        out["accuracy"] = float(np.trace(m[:, :NUM_CLASSES]) / m.sum())
        out["miou"] = float(np.nanmean(iou)) if np.any(~np.isnan(iou)) else None
        out["iou_per_class"] = {CLASS_NAMES[c]: (None if np.isnan(iou[c]) else float(iou[c]))
                                for c in range(NUM_CLASSES)}
    return out


__all__ = ["label_quality", "IGNORE_INDEX"]

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


class QualityCounts:
    """The integer counts behind a quality dict, so that label shards can be summed before `summary()`:
    every count is exact (int64), so the summary of summed shards equals one pass over all images."""

    def __init__(self) -> None:
        self.images = 0
        self.pixels = 0
        self.per_class = np.zeros(NUM_CLASSES, dtype=np.int64)
        self.confusion = ConfusionMatrix()
        self.images_with_gt = 0
        self.gt_counts = np.zeros(NUM_CLASSES, dtype=np.int64)

    def add(self, pred: np.ndarray, gt: np.ndarray | None) -> None:
        """One image: its pseudo label (uint8 [H,W], 255 = unlabelled) and GT trainIds (or None)."""
        pred = np.asarray(pred)
        self.images += 1
        self.pixels += pred.size
        valid = pred < NUM_CLASSES
        self.per_class += np.bincount(pred[valid].astype(np.int64), minlength=NUM_CLASSES)[:NUM_CLASSES]
        if gt is not None:
            gt = np.asarray(gt)
            if gt.shape != pred.shape:
                raise ValueError(f"pseudo label shape {pred.shape} != GT shape {gt.shape}")
            self.images_with_gt += 1
            self.confusion.update(pred[valid], gt[valid])
            self.gt_counts += np.bincount(gt[gt < NUM_CLASSES].astype(np.int64),
                                          minlength=NUM_CLASSES)[:NUM_CLASSES]

    def merge(self, other: "QualityCounts") -> None:
        self.images += other.images
        self.pixels += other.pixels
        self.per_class += other.per_class
        self.confusion.merge(other.confusion)
        self.images_with_gt += other.images_with_gt
        self.gt_counts += other.gt_counts

    def to_json(self) -> dict[str, Any]:
        return {"images": self.images, "pixels": self.pixels, "per_class": self.per_class.tolist(),
                "confusion": self.confusion.matrix.tolist(), "images_with_gt": self.images_with_gt,
                "gt_counts": self.gt_counts.tolist()}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "QualityCounts":
        out = cls()
        out.images, out.pixels, out.images_with_gt = int(obj["images"]), int(obj["pixels"]), int(obj["images_with_gt"])
        out.per_class = np.asarray(obj["per_class"], dtype=np.int64).reshape(NUM_CLASSES)
        out.gt_counts = np.asarray(obj["gt_counts"], dtype=np.int64).reshape(NUM_CLASSES)
        out.confusion.matrix = np.asarray(obj["confusion"], dtype=np.int64).reshape(out.confusion.matrix.shape)
        out.confusion.images = out.images_with_gt
        return out

    def summary(self) -> dict[str, Any]:
        """The quality dict (see `label_quality`)."""
        total, per_class, gt_counts = self.pixels, self.per_class, self.gt_counts
        covered = int(per_class.sum())
        out: dict[str, Any] = {
            "images": self.images,
            "coverage": covered / total if total else 0.0,
            "coverage_per_class": {CLASS_NAMES[c]: (int(per_class[c]) / total if total else 0.0)
                                   for c in range(NUM_CLASSES)},
            "accuracy": None, "miou": None, "iou_per_class": None, "images_with_gt": self.images_with_gt,
            "gt_class_frequency": ({CLASS_NAMES[c]: int(gt_counts[c]) / int(gt_counts.sum())
                                    for c in range(NUM_CLASSES)} if gt_counts.sum() else None),
        }
        m = self.confusion.matrix
        if self.images_with_gt and m.sum() > 0:
            iou = iou_per_class(m)
            out["accuracy"] = float(np.trace(m[:, :NUM_CLASSES]) / m.sum())
            out["miou"] = float(np.nanmean(iou)) if np.any(~np.isnan(iou)) else None
            out["iou_per_class"] = {CLASS_NAMES[c]: (None if np.isnan(iou[c]) else float(iou[c]))
                                    for c in range(NUM_CLASSES)}
        return out


def label_quality(pairs: Iterable[tuple[np.ndarray, np.ndarray | None]]) -> dict[str, Any]:
    """pairs of (pseudo label uint8 [H,W], GT trainIds uint8 [H,W] or None) -> quality dict.

    coverage: labelled pixels / all pixels; coverage_per_class: share of all pixels given each class;
    accuracy / miou / iou_per_class: over labelled pixels with GT, null when no pair has GT;
    gt_class_frequency: each class's share of the valid GT pixels (the true target-train prior that an
    estimated prior is compared with), null without GT.
    """
    counts = QualityCounts()
    for pred, gt in pairs:
        counts.add(pred, gt)
    return counts.summary()


__all__ = ["QualityCounts", "label_quality", "IGNORE_INDEX"]

"""Confusion matrix over trainIds with an extra 'void prediction' column.

Rows are GT trainIds 0..18 (GT 255 is ignored, as cityscapesScripts ignores void GT rows).
Columns 0..18 are predicted classes, column 19 collects predictions that are not a class
(255 in trainIds, or a void labelId such as 0): cityscapesScripts counts those as false
negatives of the GT class and as false positives of nothing, and so do we.
"""
from __future__ import annotations

import numpy as np

from bismap.data.labels import NUM_CLASSES

VOID_COLUMN = NUM_CLASSES


def confusion_matrix(pred: np.ndarray, gt: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """int64 [C, C+1] counts for one image (pred, gt: integer arrays of the same shape)."""
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} != ground truth shape {gt.shape}")
    gt = gt.reshape(-1).astype(np.int64)
    pred = pred.reshape(-1).astype(np.int64)
    valid = (gt >= 0) & (gt < num_classes)
    p = pred[valid]
    p = np.where((p >= 0) & (p < num_classes), p, num_classes)
    idx = gt[valid] * (num_classes + 1) + p
    return (np.bincount(idx, minlength=num_classes * (num_classes + 1))
            .reshape(num_classes, num_classes + 1).astype(np.int64))


class ConfusionMatrix:
    """Accumulates `confusion_matrix` over a split (int64: no overflow at Cityscapes scale)."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        self.num_classes = num_classes
        self.matrix = np.zeros((num_classes, num_classes + 1), dtype=np.int64)
        self.images = 0

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """Add one image (or a batch of same-shaped arrays); accepts numpy arrays or CPU tensors."""
        self.matrix += confusion_matrix(np.asarray(pred), np.asarray(gt), self.num_classes)
        self.images += 1

    def merge(self, other: "ConfusionMatrix") -> None:
        self.matrix += other.matrix
        self.images += other.images

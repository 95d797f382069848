"""Evaluation: confusion matrices, Cityscapes-equivalent IoU metrics, folder evaluation, export, label quality."""
from __future__ import annotations

from bismap.evaluation.confusion import ConfusionMatrix
from bismap.evaluation.metrics import compute_metrics, write_confusion_csv, write_metrics

__all__ = ["ConfusionMatrix", "compute_metrics", "write_metrics", "write_confusion_csv"]

"""Stage: evaluate one checkpoint on the target evaluation split (the original's test.py).

The model's own ("student") weights in eval mode, logits averaged over `evaluation.scales` x
optional flip (default: single scale, no flip, as the original), argmax at the label size, one
19x(19+void) confusion matrix over the split, and A's metrics (mIoU-19/16/13, per class by
name, present-class mIoU, both SYNTHIA protocols). Training stages keep their final iteration:
nothing here feeds back into model selection.
"""
from __future__ import annotations

from pathlib import Path

import torch

from bismap.engine.inference import predict_label_maps
from bismap.engine.stage_setup import setup_device
from bismap.evaluation.confusion import ConfusionMatrix
from bismap.io import InputError


def confusion_of(model, dataset, *, scales, flip: bool, data: dict, device,
                 workers: int) -> tuple[ConfusionMatrix, int]:
    """Accumulate the confusion matrix of `model` over a labelled dataset; returns (ConfusionMatrix, images)."""
    conf = ConfusionMatrix()
    n = len(dataset)
    every = max(n // 10, 1)
    for k, (_name, file, pred, label, _) in enumerate(
            predict_label_maps(model, dataset, scales=scales, flip=flip, mean=data["mean"], std=data["std"],
                                      device=device, workers=workers)):
        if label is None:
            raise InputError(f"{file}: evaluation image has no ground truth")
        conf.update(pred, label)
        if (k + 1) % every == 0 or k + 1 == n:
            print(f"evaluate: {k + 1}/{n} images", flush=True)
    return conf, n


def run(*, checkpoint: str | Path, target: dict, out_json: str | Path, out_confusion_csv: str | Path, cfg: dict,
        data: dict, runtime: dict, threads: int = 1) -> None:
    """Write the metrics JSON and the confusion CSV of `checkpoint` on the labelled `target` split."""
    from bismap.data import open_dataset
    from bismap.engine.checkpoint import load_model
    from bismap.evaluation.metrics import write_metrics

    device = setup_device(threads, runtime)
    scales = [float(s) for s in cfg["scales"]]
    flip = bool(cfg["flip"])
    protocol = str(cfg["protocol"])
    dataset = open_dataset(target)
    if not dataset.has_labels:
        raise InputError(f"{target.get('root')}: the evaluation split needs ground truth (labels: none given)")
    if len(dataset) == 0:
        raise InputError(f"{target.get('root')}: no evaluation images")
    model = load_model(str(checkpoint), device=device, which="model")
    with torch.no_grad():
        conf, n = confusion_of(model, dataset, scales=scales, flip=flip, data=data, device=device,
                               workers=int(runtime["workers"]))
    metrics = write_metrics(conf.matrix, out_json, out_confusion_csv, protocol=protocol,
                            extra={"checkpoint": str(checkpoint), "images": n, "scales": scales, "flip": flip,
                                   "split": target.get("split")})
    print(f"evaluate: {checkpoint}: mIoU {metrics['miou']} ({protocol}, {n} images)", flush=True)

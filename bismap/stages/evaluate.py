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
from bismap.io import InputError, read_json, write_json


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


SHARD_FORMAT = "bismap-evaluation-shard/1"


def _open(checkpoint, target: dict, runtime: dict, threads: int):
    from bismap.data import open_dataset
    from bismap.engine.checkpoint import load_model

    device = setup_device(threads, runtime)
    dataset = open_dataset(target)
    if not dataset.has_labels:
        raise InputError(f"{target.get('root')}: the evaluation split needs ground truth (labels: none given)")
    if len(dataset) == 0:
        raise InputError(f"{target.get('root')}: no evaluation images")
    return device, dataset, load_model(str(checkpoint), device=device, which="model")


def _confusion(model, dataset, cfg: dict, data: dict, device, runtime: dict) -> tuple[ConfusionMatrix, int]:
    with torch.no_grad():
        return confusion_of(model, dataset, scales=[float(s) for s in cfg["scales"]], flip=bool(cfg["flip"]),
                            data=data, device=device, workers=int(runtime["workers"]))


def _write(matrix, n: int, *, checkpoint: str, target: dict, cfg: dict, out_json, out_confusion_csv) -> None:
    from bismap.evaluation.metrics import write_metrics

    protocol = str(cfg["protocol"])
    metrics = write_metrics(matrix, out_json, out_confusion_csv, protocol=protocol,
                            extra={"checkpoint": str(checkpoint), "images": n,
                                   "scales": [float(s) for s in cfg["scales"]], "flip": bool(cfg["flip"]),
                                   "split": target.get("split")})
    print(f"evaluate: {checkpoint}: mIoU {metrics['miou']} ({protocol}, {n} images)", flush=True)


def run(*, checkpoint: str | Path, target: dict, out_json: str | Path, out_confusion_csv: str | Path, cfg: dict,
        data: dict, runtime: dict, threads: int = 1) -> None:
    """Write the metrics JSON and the confusion CSV of `checkpoint` on the labelled `target` split."""
    device, dataset, model = _open(checkpoint, target, runtime, threads)
    conf, n = _confusion(model, dataset, cfg, data, device, runtime)
    _write(conf.matrix, n, checkpoint=str(checkpoint), target=target, cfg=cfg, out_json=out_json,
           out_confusion_csv=out_confusion_csv)


def run_shard(*, checkpoint: str | Path, target: dict, out_counts: str | Path, cfg: dict, data: dict,
              runtime: dict, shard: int, shards: int, threads: int = 1) -> None:
    """The confusion matrix of one contiguous block of the split (resources.evaluate.shards), for `gather`."""
    device, dataset, model = _open(checkpoint, target, runtime, threads)
    part = dataset.shard(int(shard), int(shards))
    print(f"evaluate: shard {int(shard) + 1}/{int(shards)}, {len(part)} of {len(dataset)} images", flush=True)
    conf = ConfusionMatrix()
    if len(part):
        conf, _ = _confusion(model, part, cfg, data, device, runtime)
    write_json(out_counts, {"format": SHARD_FORMAT, "shard": int(shard), "shards": int(shards),
                            "checkpoint": str(checkpoint), "images": len(part), "confusion": conf.matrix.tolist()})


def gather(*, shard_counts: list, target: dict, out_json: str | Path, out_confusion_csv: str | Path,
           cfg: dict) -> None:
    """The metrics of the summed shard confusion matrices (integers: exactly one job's)."""
    import numpy as np

    total, n, checkpoints = ConfusionMatrix(), 0, set()
    for k, path in enumerate(shard_counts):
        obj = read_json(path)
        if not isinstance(obj, dict) or obj.get("format") != SHARD_FORMAT or obj.get("shard") != k \
                or obj.get("shards") != len(shard_counts):
            raise InputError(f"{path}: not shard {k} of {len(shard_counts)} ({SHARD_FORMAT})")
        total.matrix += np.asarray(obj["confusion"], dtype=np.int64).reshape(total.matrix.shape)
        n += int(obj["images"])
        checkpoints.add(obj["checkpoint"])
    if len(checkpoints) != 1:
        raise InputError(f"{out_json}: the shards evaluated other checkpoints: {sorted(checkpoints)}")
    print(f"evaluate: joined {len(shard_counts)} shards", flush=True)
    _write(total.matrix, n, checkpoint=checkpoints.pop(), target=target, cfg=cfg, out_json=out_json,
           out_confusion_csv=out_confusion_csv)

"""Stage (baseline): naive pseudo labels from the warm-up network's own softmax.

No STM, no GMM: label = argmax of the (full-size) logits, kept where the softmax confidence
is at least `naive.threshold`, or per class above the `naive.percentile`-th percentile of
confidence. It is the baseline that shows what the prototypes add.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from bismap.engine.inference import to_input
from bismap.engine.stage_setup import mean_std, open_spec, setup_device
from bismap.method.labelling import DEFAULT_CONFIDENCE, Predictor, label_target, prepare_model, selection_settings


def softmax_predictor(model, *, mean, std, device, flip: bool) -> Predictor:
    from bismap.engine.inference import predict_logits

    def predict(item: dict) -> tuple[np.ndarray, np.ndarray]:
        x = to_input([item], mean, std, device)
        with torch.no_grad():
            prob = torch.softmax(predict_logits(model, x, scales=(1.0,), flip=flip)[0], 0)
        conf, arg = prob.max(0)
        return arg.cpu().numpy().astype(np.uint8), conf.cpu().numpy().astype(np.float64)

    return predict


def run(*, checkpoint: str | os.PathLike, target: dict, target_gt: dict | None, out_dir: str | os.PathLike,
        out_quality: str | os.PathLike, cfg: dict, data: dict, runtime: dict, threads: int = 1) -> None:
    """Write `<out_dir>/<image file name>` confidence-thresholded labels and the quality json."""
    device = setup_device(threads, runtime)
    mean, std = mean_std(data)
    ds = open_spec(target, "target")
    gt_ds = None if target_gt is None else open_spec(target_gt, "target_gt")
    model = prepare_model(checkpoint, ds, cfg, data, device, "naive_labels")
    mode, threshold, percentile, sample_pixels, seed = selection_settings(cfg, "confidence", DEFAULT_CONFIDENCE,
                                                                          ("balanced",))
    predict = softmax_predictor(model, mean=mean, std=std, device=device, flip=bool(cfg["flip"]))
    print(f"naive_labels: {len(ds)} target images, selection {mode}", flush=True)
    label_target(ds=ds, gt_ds=gt_ds, predict=predict, out_dir=out_dir, out_quality=out_quality, mode=mode,
                 threshold=threshold, percentile=percentile, sample_pixels=sample_pixels, seed=seed,
                 stage="naive_labels", cache_mb=float(runtime["label_cache_mb"]),
                 min_coverage=float(runtime["min_label_coverage"]))

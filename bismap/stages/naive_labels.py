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
from bismap.io import InputError, write_json
from bismap.method.label_shards import join_shards, read_statistics, write_counts, write_statistics
from bismap.method.labelling import (
    DEFAULT_CONFIDENCE,
    Predictor,
    label_target,
    predict_all,
    prepare_model,
    quality_record,
    selection_settings,
    selection_statistics,
    thread_record,
    write_labels,
)
from bismap.method.sharding import needs_statistics


def softmax_predictor(model, *, mean, std, device, flip: bool) -> Predictor:
    from bismap.engine.inference import predict_logits

    def predict(item: dict) -> tuple[np.ndarray, np.ndarray]:
        x = to_input([item], mean, std, device)
        with torch.no_grad():
            prob = torch.softmax(predict_logits(model, x, scales=(1.0,), flip=flip)[0], 0)
        conf, arg = prob.max(0)
        return arg.cpu().numpy().astype(np.uint8), conf.cpu().numpy().astype(np.float64)

    return predict


STAGE = "naive_labels"


def _open(checkpoint, target: dict, target_gt: dict | None, cfg: dict, data: dict, runtime: dict,
          threads: int) -> dict:
    device = setup_device(threads, runtime)
    mean, std = mean_std(data)
    ds = open_spec(target, "target")
    gt_ds = None if target_gt is None else open_spec(target_gt, "target_gt")
    model = prepare_model(checkpoint, ds, cfg, data, device, STAGE)
    mode, threshold, percentile, sample_pixels, seed = selection_settings(cfg, "confidence", DEFAULT_CONFIDENCE,
                                                                          ("balanced",))
    predict = softmax_predictor(model, mean=mean, std=std, device=device, flip=bool(cfg["flip"]))
    return dict(ds=ds, gt_ds=gt_ds, predict=predict, mode=mode, threshold=threshold, percentile=percentile,
                sample_pixels=sample_pixels, seed=seed)


def run(*, checkpoint: str | os.PathLike, target: dict, target_gt: dict | None, out_dir: str | os.PathLike,
        out_quality: str | os.PathLike, cfg: dict, data: dict, runtime: dict, threads: int = 1) -> None:
    """Write `<out_dir>/<image file name>` confidence-thresholded labels and the quality json."""
    job = _open(checkpoint, target, target_gt, cfg, data, runtime, threads)
    print(f"naive_labels: {len(job['ds'])} target images, selection {job['mode']}", flush=True)
    label_target(ds=job["ds"], gt_ds=job["gt_ds"], predict=job["predict"], out_dir=out_dir, out_quality=out_quality,
                 mode=job["mode"], threshold=job["threshold"], percentile=job["percentile"],
                 sample_pixels=job["sample_pixels"], seed=job["seed"], stage=STAGE,
                 cache_mb=float(runtime["label_cache_mb"]), min_coverage=float(runtime["min_label_coverage"]))


def run_statistics(*, checkpoint: str | os.PathLike, target: dict, cfg: dict, data: dict, runtime: dict,
                   out_statistics: str | os.PathLike, threads: int = 1) -> None:
    """Sharded naive labels, first job: the per-class thresholds over every image."""
    job = _open(checkpoint, target, None, cfg, data, runtime, threads)
    _, class_thr = selection_statistics(ds=job["ds"], predict=job["predict"], mode=job["mode"],
                                        threshold=job["threshold"], percentile=job["percentile"],
                                        sample_pixels=job["sample_pixels"], seed=job["seed"], stage=STAGE)
    write_statistics(out_statistics, stage=STAGE, images=len(job["ds"]), offset=None, class_thr=class_thr,
                     record={}, **thread_record())


def run_shard(*, checkpoint: str | os.PathLike, target: dict, target_gt: dict | None, cfg: dict, data: dict,
              runtime: dict, shard: int, shards: int, out_dir: str | os.PathLike, out_counts: str | os.PathLike,
              statistics: str | os.PathLike | None = None, threads: int = 1) -> None:
    """Sharded naive labels: the `shard`-th of `shards` contiguous blocks of the images, labelled as `run`
    labels them, with `statistics` (run_statistics' file) instead of the pass over every image."""
    if needs_statistics(cfg) and statistics is None:
        raise InputError(f"{STAGE}: this selection needs the statistics file of every image (run_statistics)")
    _, class_thr, _ = (None, None, {}) if statistics is None else read_statistics(statistics, STAGE)
    job = _open(checkpoint, target, target_gt, cfg, data, runtime, threads)
    part = job["ds"].shard(int(shard), int(shards))
    print(f"{STAGE}: shard {int(shard) + 1}/{int(shards)}, {len(part)} of {len(job['ds'])} images", flush=True)
    counts = write_labels(predict_all(part, job["predict"], STAGE), len(part), job["gt_ds"], mode=job["mode"],
                          threshold=job["threshold"], class_thr=class_thr, out_dir=out_dir, stage=STAGE,
                          min_coverage=None)
    write_counts(out_counts, stage=STAGE, shard=shard, shards=shards, counts=counts,
                 same={"checkpoint": str(checkpoint), **thread_record()})


def gather(*, shard_dirs: list, shard_counts: list, out_dir: str | os.PathLike, out_quality: str | os.PathLike,
           runtime: dict, statistics: str | os.PathLike | None = None) -> None:
    """Join the shards' label folders and counts into the folder and quality json that `run` writes."""
    _, class_thr, _ = (None, None, {}) if statistics is None else read_statistics(statistics, STAGE)
    counts, same = join_shards(shard_dirs, shard_counts, out_dir, stage=STAGE,
                               min_coverage=float(runtime["min_label_coverage"]))
    write_json(out_quality, quality_record(counts, class_thr, None, same["threads"]))

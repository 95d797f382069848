"""Stage: hard target labels from the previous model, for a distillation round (Stage E, first half).

As the original's inference.py: logits averaged over `scales` x {identity, flip}, argmax, no
threshold (every pixel labelled: `selection: none`, the paper configs). `selection: confidence`
departs from it: pixels whose softmax confidence is below `threshold` are left unlabelled (255),
so the student's hard-label loss skips the teacher's likely mistakes (the KD term still sees every
pixel). `selection: balanced` is the pseudo labels' class-balanced rule (method.labelling): a first
pass pools sampled confidences per predicted class, then a pixel stays when its confidence reaches
the lower of `threshold` and its class's `percentile`, so a class the teacher is rarely sure of keeps
its most confident pixels. `align_prior` first shifts the logits so that their mean prediction matches
the source label distribution (method.prior_alignment). Optional AdaBN first re-estimates the batch-norm \
statistics on the target images
(design.md: +6 mIoU and more accurate labels on the synthetic benchmark).
Labels are `<out_dir>/<image file name>` palette PNGs (written into a temporary folder renamed
into place); the quality JSON scores them against target ground truth when it exists.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from bismap.engine.inference import item_logits, label_maps
from bismap.engine.stage_setup import setup_device
from bismap.io import InputError, atomic_dir, write_json
from bismap.method.labelling import (
    apply_selection,
    check_coverage,
    check_scores,
    pooled_thresholds,
    replayable,
    thread_record,
)
from bismap.method.prior_alignment import offset_for, prior_report

SECTION = "teacher_labels"


def adapt_if_enabled(model, dataset, cfg: dict, data: dict, device, section: str) -> int:
    """AdaBN on `dataset` when `cfg.adabn.enabled`; returns the number of images used (0 = off)."""
    from bismap.engine.inference import adapt_batchnorm

    adabn = cfg["adabn"]
    if not bool(adabn["enabled"]):
        return 0
    used = adapt_batchnorm(model, dataset, max_images=int(adabn["max_images"]),
                           batch_size=int(adabn["batch_size"]),
                           mean=data["mean"], std=data["std"], device=device)
    print(f"AdaBN: batch-norm statistics re-estimated on {used} target images", flush=True)
    return used


def ground_truth(gt, gt_index: dict, target_gt: dict, name: str, file: str, shape: tuple) -> np.ndarray:
    """The target-train ground truth of one labelled image (for the quality JSON only)."""
    if name not in gt_index:
        raise InputError(f"{target_gt.get('root')}: no ground truth for target image {file}")
    truth = gt[gt_index[name]]["label"]
    if truth.shape != shape:
        raise InputError(f"{target_gt.get('root')}: ground truth of {file} is {truth.shape}, "
                         f"labels are {shape} (give both specs the same size)")
    return truth


def teacher_passes(model, dataset, cfg: dict, data: dict, runtime: dict, device, prior, alignment: dict | None):
    """(a callable giving one pass of (name, file, prediction, label, confidence), the prior offset or None,
    the alignment's record: see offset_for).

    Up to three passes read the target (the alignment's logits, the balanced thresholds, the labels):
    each later one replays the one before while it fits in runtime.label_cache_mb.
    """
    cache_mb = float(runtime["label_cache_mb"])

    def forward_pass():
        return item_logits(model, dataset, scales=[float(s) for s in cfg["scales"]], flip=bool(cfg["flip"]),
                           mean=data["mean"], std=data["std"], device=device, workers=int(runtime["workers"]))

    if alignment:
        forward_pass = replayable(forward_pass, cache_mb)
    record: dict = {}
    offset = offset_for(alignment, prior, lambda: (lg[0] for _, lg in forward_pass()),
                        len(dataset), stage=SECTION, record=record)

    def predictions():
        return label_maps(forward_pass(), has_labels=bool(getattr(dataset, "has_labels", True)),
                          confidence=str(cfg["selection"]) != "none", logit_offset=offset)

    if str(cfg["selection"]) == "balanced":
        predictions = replayable(predictions, cache_mb)
    return predictions, offset, record


def run(*, checkpoint: str | Path, target: dict, target_gt: dict | None, out_dir: str | Path,
        out_quality: str | Path, cfg: dict, data: dict, runtime: dict, threads: int = 1,
        prior: str | Path | None = None, alignment: dict | None = None) -> None:
    """Write the teacher's hard labels for every `target` image, and their quality JSON. `alignment`: the
    `prior_alignment` section, applied when `cfg.align_prior` is on (with `prior`, the source class prior
    file)."""
    from bismap.data import open_dataset
    from bismap.data.labels import save_label_png
    from bismap.engine.checkpoint import load_model
    from bismap.evaluation.quality import label_quality

    device = setup_device(threads, runtime)
    scales = [float(s) for s in cfg["scales"]]
    flip = bool(cfg["flip"])
    selection = str(cfg["selection"])
    selects = selection != "none"
    threshold = float(cfg["threshold"]) if selects else None  # the rule drops it for none
    model = load_model(str(checkpoint), device=device, which="model")
    dataset = open_dataset(target)
    if len(dataset) == 0:
        raise InputError(f"{target.get('root')}: no target images")
    adapt_if_enabled(model, dataset, cfg, data, device, SECTION)
    gt = open_dataset(target_gt) if target_gt else None
    gt_index = {name: i for i, name in enumerate(gt.names)} if gt is not None else {}

    n = len(dataset)
    every = max(n // 10, 1)

    predictions, offset, record = teacher_passes(model, dataset, cfg, data, runtime, device, prior,
                                                 alignment if cfg["align_prior"] else None)
    class_thr = pooled_thresholds(((p, c) for _, _, p, _, c in predictions()), n, mode=selection, threshold=threshold,
                                  percentile=float(cfg["percentile"]), sample_pixels=cfg["sample_pixels"],
                                  seed=int(cfg["seed"]), stage="teacher labels") if selection == "balanced" else None

    def labelled(tmp: Path):
        for k, (name, file, pred, _, conf) in enumerate(predictions()):
            check_scores(conf, file, "teacher labels")
            if selects:
                pred = apply_selection(pred, conf, selection, threshold, class_thr)
            save_label_png(tmp / file, pred)
            truth = None if gt is None else ground_truth(gt, gt_index, target_gt, name, file, pred.shape)
            if (k + 1) % every == 0 or k + 1 == n:
                print(f"teacher labels: {k + 1}/{n} images", flush=True)
            yield pred, truth

    with atomic_dir(out_dir) as tmp:
        quality = label_quality(labelled(tmp))
        check_coverage(quality, float(runtime["min_label_coverage"]), out_dir, "teacher labels")
    quality.update({"checkpoint": str(checkpoint), "scales": scales, "flip": flip, "selection": selection,
                    "threshold": threshold,
                    **({"class_thresholds": {str(c): t for c, t in sorted(class_thr.items())}} if class_thr else {}),
                    "adabn": bool(cfg["adabn"]["enabled"]),
                    **({"prior_offset": offset.tolist()} if offset is not None else {}),
                    **({"prior_alignment": prior_report(record, quality.get("gt_class_frequency"))}
                       if record else {}), **thread_record()})
    write_json(out_quality, quality)

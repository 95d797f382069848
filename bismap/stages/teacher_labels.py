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

Sharding (`resources.teacher_labels.shards` > 1) splits the labelling pass into jobs over contiguous
blocks of the images (`run_shard`), which `gather` joins into the same folder and json, byte for byte:
what needs every image (the prior alignment's offset, the balanced thresholds) is computed first by
`run_statistics` with the same code as one job, and the quality counts are integers, summed exactly.
Each shard re-estimates the AdaBN statistics on the same images, so each has the same model.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from bismap.engine.inference import item_logits, label_maps
from bismap.engine.stage_setup import setup_device
from bismap.evaluation.quality import QualityCounts
from bismap.io import InputError, write_json
from bismap.method.label_shards import join_shards, read_statistics, write_counts, write_statistics
from bismap.method.labelling import (
    check_scores,
    pooled_thresholds,
    replayable,
    thread_record,
    write_labels,
)
from bismap.method.prior_alignment import offset_for, prior_report
from bismap.method.sharding import needs_statistics

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


def _open(checkpoint, target: dict, target_gt: dict | None, cfg: dict, data: dict, runtime: dict, threads: int):
    """(device, model with AdaBN applied when enabled, the target dataset, the ground truth or None)."""
    from bismap.data import open_dataset
    from bismap.engine.checkpoint import load_model

    device = setup_device(threads, runtime)
    model = load_model(str(checkpoint), device=device, which="model")
    dataset = open_dataset(target)
    if len(dataset) == 0:
        raise InputError(f"{target.get('root')}: no target images")
    adapt_if_enabled(model, dataset, cfg, data, device, SECTION)
    gt = open_dataset(target_gt) if target_gt else None
    return device, model, dataset, gt


def _statistics(model, dataset, cfg: dict, data: dict, runtime: dict, device, prior, alignment: dict | None):
    """(predictions: a callable giving passes over every image, prior offset or None, class thresholds or
    None, the alignment's record): the passes that read every image before any label is final."""
    selection = str(cfg["selection"])
    predictions, offset, record = teacher_passes(model, dataset, cfg, data, runtime, device, prior,
                                                 alignment if cfg["align_prior"] else None)
    class_thr = pooled_thresholds(((p, c) for _, _, p, _, c in predictions()), len(dataset), mode=selection,
                                  threshold=float(cfg["threshold"]), percentile=float(cfg["percentile"]),
                                  sample_pixels=cfg["sample_pixels"], seed=int(cfg["seed"]),
                                  stage="teacher labels") if selection == "balanced" else None
    return predictions, offset, class_thr, record


def _write_labels(predictions: Iterable, n: int, cfg: dict, class_thr: dict | None, gt, out_dir,
                  min_coverage: float | None) -> QualityCounts:
    """Save each prediction (after the selection) into `out_dir` (atomically) and count its quality."""
    selection = str(cfg["selection"])

    def checked():
        for name, file, pred, _, conf in predictions:
            check_scores(conf, file, "teacher labels")
            yield name, file, pred, conf

    threshold = float(cfg["threshold"]) if selection != "none" else None
    return write_labels(checked(), n, gt, mode=selection, threshold=threshold, class_thr=class_thr, out_dir=out_dir,
                        stage="teacher labels", min_coverage=min_coverage)


def _quality(counts: QualityCounts, *, checkpoint: str, cfg: dict, offset, class_thr: dict | None, record: dict,
             threads: int) -> dict:
    quality = counts.summary()
    selection = str(cfg["selection"])
    quality.update({"checkpoint": str(checkpoint), "scales": [float(s) for s in cfg["scales"]],
                    "flip": bool(cfg["flip"]), "selection": selection,
                    "threshold": float(cfg["threshold"]) if selection != "none" else None,
                    **({"class_thresholds": {str(c): t for c, t in sorted(class_thr.items())}} if class_thr else {}),
                    "adabn": bool(cfg["adabn"]["enabled"]),
                    **({"prior_offset": [float(v) for v in offset]} if offset is not None else {}),
                    **({"prior_alignment": prior_report(record, quality.get("gt_class_frequency"))}
                       if record else {}), "threads": int(threads)})
    return quality


def run(*, checkpoint: str | Path, target: dict, target_gt: dict | None, out_dir: str | Path,
        out_quality: str | Path, cfg: dict, data: dict, runtime: dict, threads: int = 1,
        prior: str | Path | None = None, alignment: dict | None = None) -> None:
    """Write the teacher's hard labels for every `target` image, and their quality JSON. `alignment`: the
    `prior_alignment` section, applied when `cfg.align_prior` is on (with `prior`, the source class prior
    file)."""
    device, model, dataset, gt = _open(checkpoint, target, target_gt, cfg, data, runtime, threads)
    predictions, offset, class_thr, record = _statistics(model, dataset, cfg, data, runtime, device, prior, alignment)
    counts = _write_labels(predictions(), len(dataset), cfg, class_thr, gt, out_dir,
                           float(runtime["min_label_coverage"]))
    write_json(out_quality, _quality(counts, checkpoint=str(checkpoint), cfg=cfg, offset=offset,
                                     class_thr=class_thr, record=record, **thread_record()))


def run_statistics(*, checkpoint: str | Path, target: dict, cfg: dict, data: dict, runtime: dict,
                   out_statistics: str | Path, threads: int = 1, prior: str | Path | None = None,
                   alignment: dict | None = None) -> None:
    """Sharded labels, first job: the prior offset and balanced thresholds over every image (as `run`)."""
    device, model, dataset, _ = _open(checkpoint, target, None, cfg, data, runtime, threads)
    _, offset, class_thr, record = _statistics(model, dataset, cfg, data, runtime, device, prior, alignment)
    write_statistics(out_statistics, stage=SECTION, images=len(dataset), offset=offset, class_thr=class_thr,
                     record=record, **thread_record())


def run_shard(*, checkpoint: str | Path, target: dict, target_gt: dict | None, cfg: dict, data: dict,
              runtime: dict, shard: int, shards: int, out_dir: str | Path, out_counts: str | Path,
              statistics: str | Path | None = None, threads: int = 1) -> None:
    """Sharded labels: the `shard`-th of `shards` contiguous blocks of the images, labelled as `run` labels
    them, with `statistics` (run_statistics' file; None where bismap.method.sharding needs none) instead
    of the passes over every image; `out_counts` holds the block's quality counts for `gather`."""
    if needs_statistics(cfg) and statistics is None:
        raise InputError(f"{SECTION}: this selection needs the statistics file of every image (run_statistics)")
    offset, class_thr, _ = (None, None, {}) if statistics is None else read_statistics(statistics, SECTION)
    device, model, dataset, gt = _open(checkpoint, target, target_gt, cfg, data, runtime, threads)
    part = dataset.shard(int(shard), int(shards))
    print(f"teacher labels: shard {int(shard) + 1}/{int(shards)}, {len(part)} of {len(dataset)} images", flush=True)
    pairs = item_logits(model, part, scales=[float(s) for s in cfg["scales"]], flip=bool(cfg["flip"]),
                        mean=data["mean"], std=data["std"], device=device, workers=int(runtime["workers"]))
    predictions = label_maps(pairs, has_labels=bool(getattr(part, "has_labels", True)),
                             confidence=str(cfg["selection"]) != "none", logit_offset=offset)
    counts = _write_labels(predictions, len(part), cfg, class_thr, gt, out_dir, None)
    write_counts(out_counts, stage=SECTION, shard=shard, shards=shards, counts=counts,
                 same={"checkpoint": str(checkpoint), **thread_record()})


def gather(*, shard_dirs: list, shard_counts: list, out_dir: str | Path, out_quality: str | Path, cfg: dict,
           runtime: dict, statistics: str | Path | None = None) -> None:
    """Join the shards' label folders and counts into the folder and quality json that `run` writes."""
    offset, class_thr, record = (None, None, {}) if statistics is None else read_statistics(statistics, SECTION)
    counts, same = join_shards(shard_dirs, shard_counts, out_dir, stage=SECTION,
                               min_coverage=float(runtime["min_label_coverage"]))
    write_json(out_quality, _quality(counts, checkpoint=same["checkpoint"], cfg=cfg, offset=offset,
                                     class_thr=class_thr, record=record, threads=same["threads"]))

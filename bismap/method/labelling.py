"""Target label selection shared by the naive baseline and the GMM pseudo labels.

A predictor maps a dataset item to (label, score) per pixel; pixels are rejected (255) by a
global score threshold, per class below the class's percentile (a first pass pools a seeded
sample of scores per class), or `balanced`: below the lower of the two, so a class the network
is rarely sure of still keeps its most confident pixels (class-balanced self-training, CBST),
while every pixel the global threshold keeps stays. Labels are then saved and scored against
ground truth.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, TypeVar

import numpy as np
import torch

from bismap.data.labels import IGNORE_INDEX as IGNORE
from bismap.engine.stage_setup import load_warmup, mean_std
from bismap.io import InputError, atomic_dir, write_json

if TYPE_CHECKING:
    from bismap.evaluation.quality import QualityCounts

DEFAULT_CONFIDENCE = 0.9  # selection confidence with threshold null

Predictor = Callable[[dict], tuple[np.ndarray, np.ndarray]]  # item -> (label uint8 [H,W], score float [H,W])
T = TypeVar("T")


def nbytes(value: Any) -> int:
    """Bytes held by the arrays and tensors in `value` (nested tuples, lists, dicts; anything else counts 0)."""
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, torch.Tensor):
        return int(value.element_size() * value.nelement())
    if isinstance(value, dict):
        return sum(nbytes(v) for v in value.values())
    if isinstance(value, (tuple, list)):
        return sum(nbytes(v) for v in value)
    return 0


def replayable(produce: Callable[[], Iterable[T]], budget_mb: float) -> Callable[[], Iterator[T]]:
    """A pass over the images whose results the next pass replays instead of recomputing.

    The class-balanced rules read every image twice (thresholds from a sample, then the labels), and
    the second forward (+ GMM) pass is a third of a label stage. Results are kept while they fit in
    `budget_mb` (0: never) and only from a pass that ran to the end; past the budget (full-size
    Cityscapes) each pass recomputes. Either way the labels are the same: the replayed arrays are the
    ones the same computation produced. Consumers must not modify what they get.
    """
    budget = float(budget_mb) * 2 ** 20
    store: list[T] | None = None

    def passes() -> Iterator[T]:
        nonlocal store
        if store is not None:
            yield from store
            return
        kept: list[T] | None = [] if budget > 0 else None
        size = 0
        for result in produce():
            if kept is not None:
                size += nbytes(result)
                if size > budget:
                    kept = None
                else:
                    kept.append(result)
            yield result
        if kept is not None:
            store = kept

    return passes



def percentile_thresholds(scores: dict[int, list[np.ndarray]], percentile: float) -> dict[int, float]:
    """Per class: the `percentile`-th percentile of its scores (pixels below it are rejected)."""
    out = {}
    for c, parts in scores.items():
        v = np.concatenate(parts) if parts else np.empty(0)
        if v.size:
            out[c] = float(np.percentile(v, percentile))
    return out


def balanced_thresholds(class_thresholds: dict[int, float], threshold: float) -> dict[int, float]:
    """Per class: min(global threshold, the class's percentile threshold)."""
    return {c: min(float(threshold), t) for c, t in class_thresholds.items()}


def apply_selection(label: np.ndarray, score: np.ndarray, mode: str, threshold: float,
                    class_thresholds: dict[int, float] | None) -> np.ndarray:
    """Set rejected pixels to 255: global `score < threshold`, or per class `score < class_thresholds[c]`
    (a class without one: every pixel rejected in percentile mode, the global threshold in balanced)."""
    out = label.copy()
    if mode in ("loglik", "confidence"):
        out[score < threshold] = IGNORE
    elif mode in ("percentile", "balanced"):
        assert class_thresholds is not None
        thr = np.full(256, np.inf if mode == "percentile" else float(threshold))
        for c, t in class_thresholds.items():
            thr[c] = t
        out[score < thr[label]] = IGNORE
    else:
        raise InputError(f"config: unknown selection mode {mode!r}")
    return out


def check_scores(score: np.ndarray | None, name: str, stage: str) -> None:
    """NaN (or +inf) scores would pass every threshold test (`score < t` is False) and label the pixel."""
    if score is not None and (np.isnan(score).any() or np.isposinf(score).any()):
        raise InputError(f"{stage}: the scores of target image {name} hold NaN or inf (a diverged model or "
                         f"prototypes?); nothing was written")


def check_coverage(quality: dict, min_coverage: float, out_dir, stage: str) -> None:
    """An empty (or nearly empty) label set turns self-training into source-only training silently."""
    coverage = float(quality["coverage"])
    if min_coverage > 0 and coverage < min_coverage:
        raise InputError(f"{out_dir}: {stage} gave labels to {coverage:.2%} of the target pixels, under "
                         f"runtime.min_label_coverage ({min_coverage:.2%}); nothing was written. Lower the "
                         f"stage's threshold, or set runtime.min_label_coverage: 0 to accept it")


def sample_scores(label: np.ndarray, score: np.ndarray, n: int | None, rng: np.random.Generator,
                  into: dict[int, list[np.ndarray]]) -> None:
    """Add (a seeded random subset of n pixels of) this image's scores to the per-class pools."""
    lab, sc = label.reshape(-1), score.reshape(-1)
    valid = np.flatnonzero(lab != IGNORE)
    if n is not None and valid.size > n:
        valid = np.sort(rng.choice(valid, size=int(n), replace=False))
    lab, sc = lab[valid], sc[valid]
    for c in np.unique(lab):
        into.setdefault(int(c), []).append(sc[lab == c].astype(np.float64))


def predict_all(ds, predict: Predictor, stage: str) -> Iterator[tuple[str, str, np.ndarray, np.ndarray]]:
    """(name, file, label, score) of every image of `ds`, in order; NaN or inf scores stop the stage."""
    for i in range(len(ds)):
        item = ds[i]
        label, score = predict(item)
        check_scores(score, item["file"], stage)
        yield item["name"], item["file"], label, score


def ground_truth(gt_ds, gt_index: dict[str, int], name: str, file: str, shape: tuple) -> np.ndarray:
    """The target-train ground truth of one labelled image (for the quality JSON only)."""
    root = getattr(gt_ds, "root", None)
    if name not in gt_index:
        raise InputError(f"{root}: no ground truth for target image {file}")
    truth = gt_ds[gt_index[name]]["label"]
    if truth.shape != shape:
        raise InputError(f"{root}: ground truth of {file} is {truth.shape}, labels are {shape} "
                         f"(give both specs the same size)")
    return truth


def write_labels(results: Iterable[tuple[str, str, np.ndarray, np.ndarray]], n: int, gt_ds, *, mode: str,
                 threshold: float | None, class_thr: dict[int, float] | None, out_dir, stage: str,
                 min_coverage: float | None) -> "QualityCounts":
    """The labelling pass: select (`mode` "none": keep every pixel, as the teacher's argmax), save into
    `out_dir` (atomically), count the quality against ground truth (`min_coverage` None: not checked here,
    as for one shard of the images)."""
    from bismap.data.labels import save_label_png
    from bismap.evaluation.quality import QualityCounts

    gt_index = None if gt_ds is None else {name: i for i, name in enumerate(gt_ds.names)}
    counts = QualityCounts()
    with atomic_dir(out_dir) as tmp:
        for i, (name, file, label, score) in enumerate(results):
            final = label if mode == "none" else apply_selection(label, score, mode, threshold, class_thr)
            save_label_png(Path(tmp) / file, final)
            gt = None if gt_index is None else ground_truth(gt_ds, gt_index, name, file, final.shape)
            counts.add(final, gt)
            if (i + 1) % 10 == 0 or i + 1 == n:
                kept = float((final != IGNORE).mean())
                print(f"{stage}: {i + 1}/{n} images labelled (last kept {kept:.1%})", flush=True)
        if min_coverage is not None:
            check_coverage(counts.summary(), min_coverage, out_dir, stage)  # inside: a refused set leaves nothing
    return counts


def pooled_thresholds(pairs, n: int, *, mode: str, threshold: float | None, percentile: float,
                      sample_pixels: int | None, seed: int, stage: str) -> dict[int, float]:
    """First pass of `percentile` / `balanced`: per-class thresholds from up to `sample_pixels` seeded
    pixels of each (label, score) pair; `balanced` caps each at `threshold`."""
    pools: dict[int, list[np.ndarray]] = {}
    for i, (label, score) in enumerate(pairs):
        sample_scores(label, score, sample_pixels, np.random.default_rng([int(seed), i]), pools)
        if (i + 1) % 10 == 0 or i + 1 == n:
            print(f"{stage}: percentile pass {i + 1}/{n}", flush=True)
    class_thr = percentile_thresholds(pools, percentile)
    if mode == "balanced":
        class_thr = balanced_thresholds(class_thr, threshold)
    print(f"{stage}: per-class thresholds ({mode}, percentile {percentile}): "
          + ", ".join(f"{c}:{t:.4g}" for c, t in sorted(class_thr.items())), flush=True)
    return class_thr


def selection_statistics(*, ds, predict: Predictor, mode: str, threshold: float, percentile: float,
                         sample_pixels: int | None, seed: int, stage: str, cache_mb: float = 0
                         ) -> tuple[Callable[[], Iterator[tuple[str, str, np.ndarray, np.ndarray]]],
                                    dict[int, float] | None]:
    """(a callable giving a pass of (name, file, label, score) over `ds`, the per-class thresholds or None):
    the first pass of the percentile rules (the next pass replays it while it fits in `cache_mb`, see
    `replayable`)."""
    def results() -> Iterator[tuple[str, str, np.ndarray, np.ndarray]]:
        return predict_all(ds, predict, stage)

    if mode not in ("percentile", "balanced"):
        return results, None
    passes = replayable(results, cache_mb)
    class_thr = pooled_thresholds(((label, score) for _, _, label, score in passes()), len(ds), mode=mode,
                                  threshold=threshold, percentile=percentile, sample_pixels=sample_pixels,
                                  seed=seed, stage=stage)
    return passes, class_thr


def quality_record(counts: "QualityCounts", class_thr: dict[int, float] | None, alignment: dict | None,
                   threads: int) -> dict:
    """The quality json of a label set: quality, the class thresholds, the alignment report, the threads."""
    from bismap.method.prior_alignment import prior_report

    quality = counts.summary()
    if class_thr is not None:
        quality = {**quality, "class_thresholds": {str(c): t for c, t in sorted(class_thr.items())}}
    if alignment:
        quality = {**quality, "prior_alignment": prior_report(alignment, quality.get("gt_class_frequency"))}
    return {**quality, "threads": int(threads)}


def label_target(*, ds, gt_ds, predict: Predictor, out_dir, out_quality, mode: str, threshold: float,
                 percentile: float, sample_pixels: int | None, seed: int, stage: str, cache_mb: float = 0,
                 min_coverage: float = 0.0, alignment: dict | None = None) -> None:
    """Shared driver: optional first pass for per-class percentiles, then label, save, and score
    (`cache_mb`: the first pass's results are replayed by the second while they fit, see `replayable`;
    `alignment`: offset_for's record, reported in the json with its distance to the true prior)."""
    results, class_thr = selection_statistics(ds=ds, predict=predict, mode=mode, threshold=threshold,
                                              percentile=percentile, sample_pixels=sample_pixels, seed=seed,
                                              stage=stage, cache_mb=cache_mb)
    counts = write_labels(results(), len(ds), gt_ds, mode=mode, threshold=threshold, class_thr=class_thr,
                          out_dir=out_dir, stage=stage, min_coverage=min_coverage)
    write_json(out_quality, quality_record(counts, class_thr, alignment, **thread_record()))


def thread_record() -> dict:
    """The intra-op thread count the labels were computed with: float sums are ordered differently for
    another count, so a pixel near a threshold or a class tie can flip (about 1 in 400 images on the
    synthetic benchmark). Recorded so two label sets can be compared; see docs/troubleshooting.md."""
    import torch

    return {"threads": torch.get_num_threads()}


def prepare_model(checkpoint, target_ds, cfg: dict, data: dict, device: torch.device, stage: str):
    """Warm-up model in eval mode, BN statistics re-estimated on target images when cfg.adabn.enabled."""
    from bismap.engine.inference import adapt_batchnorm

    model = load_warmup(checkpoint, device)
    ab = cfg["adabn"]
    if bool(ab["enabled"]):
        mean, std = mean_std(data)
        used = adapt_batchnorm(model, target_ds, int(ab["max_images"]), int(ab["batch_size"]),
                               mean=mean, std=std, device=device)
        print(f"{stage}: AdaBN statistics re-estimated on {used} target images", flush=True)
    return model.eval()


def selection_settings(cfg: dict, default_mode: str, default_threshold: float,
                       allowed: tuple[str, ...] = ()) -> tuple[str, float, float, int | None, int]:
    mode = str(cfg["selection"])
    modes = (default_mode, "percentile", *allowed)
    # balanced caps confidence percentiles at the confidence threshold: a softmax scale
    confidence_scale = mode in ("confidence", "balanced")
    if mode not in modes:
        raise InputError(f"config: selection must be one of {', '.join(map(repr, modes))}, got {mode!r}")
    sp = cfg["sample_pixels"]
    thr = cfg["threshold"]
    # threshold null: the mode's own scale (softmax 0.9, or the caller's default: the original's tau = 100)
    threshold = (DEFAULT_CONFIDENCE if confidence_scale else float(default_threshold)) if thr is None else float(thr)
    return (mode, threshold, float(cfg["percentile"]), None if sp is None else int(sp),
            int(cfg["seed"]))

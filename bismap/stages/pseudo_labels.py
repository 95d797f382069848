"""Stage: target pseudo labels from the per-class source GMMs (the MAP prototypes).

Label = argmax over classes of the mixture log-likelihood of the warm-up model's stride-4
decoder feature, bilinearly upsampled (align_corners=True) to the image size, as the
original. Pixels are rejected (255) either by the original's global log-likelihood
threshold, or per class: per-class diagonal Gaussians give near one-hot posteriors, so the
useful confidence is the likelihood itself, and a per-class percentile keeps the same share
of every class instead of letting one global number favour the compact classes.

Upsampling and scoring run in chunks of output rows (two-tap interpolation), so a 1024x2048
image never needs its full [D, H, W] feature map in memory. Class scores are float32 matmuls
on features centred before upsampling; pixels whose two best classes are within
prototypes.TIE_RTOL are re-scored in float64, so the labels are the float64 scorer's (checked,
and timed against the network forward, by `python -m bismap.bench scoring`).

The two-pass thresholding driver here is shared with the naive baseline (naive_labels).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from bismap.io import InputError, atomic_dir, write_json
from bismap.prototypes import ClassScorer, DiagonalGMM, best_class
from bismap.stages.fit_prototypes import load_prototypes
from bismap.stages.source_features import (IGNORE, NUM_CLASSES, forward, load_warmup, mean_std, open_spec,
                                           setup_device, to_input)

DEFAULT_CONFIDENCE = 0.9  # selection confidence with threshold null
Predictor = Callable[[dict], tuple[np.ndarray, np.ndarray]]  # item -> (label uint8 [H,W], score float [H,W])


# ----------------------------------------------------------------------------- upsampling
def interp_taps(n_out: int, n_in: int, device: torch.device | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(lo, hi, frac) of linear interpolation with align_corners=True: out[i] = lerp(in[lo], in[hi], frac)."""
    if n_in == 1 or n_out == 1:
        z = torch.zeros(n_out, dtype=torch.long, device=device)
        return z, z, torch.zeros(n_out, device=device)
    src = torch.arange(n_out, dtype=torch.float64) * (n_in - 1) / (n_out - 1)
    lo = src.floor().long().clamp(max=n_in - 1)
    hi = (lo + 1).clamp(max=n_in - 1)
    return lo.to(device), hi.to(device), (src - lo).float().to(device)


def upsampled_cols(feat: torch.Tensor, size: tuple[int, int], rows_per_chunk: int) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (first row, [D, rows*W]) of feat [D,h,w] bilinearly upsampled (align_corners=True) to size.

    Rows: two taps (gather + lerp) on the stride-4 map; columns: torch's fused linear interpolation
    (the same align_corners=True mapping). Channel-major, as ClassScorer.columns takes it.
    """
    d = feat.shape[0]
    ly, hy, fy = interp_taps(size[0], feat.shape[1], feat.device)
    fy = fy.to(feat.dtype)
    for r0 in range(0, size[0], rows_per_chunk):
        r = slice(r0, r0 + rows_per_chunk)
        t = torch.lerp(feat[:, ly[r]], feat[:, hy[r]], fy[None, r, None])  # [D, rows, w]
        out = torch.nn.functional.interpolate(t, size=size[1], mode="linear", align_corners=True)
        yield r0, out.reshape(d, -1)


def upsampled_rows(feat: torch.Tensor, size: tuple[int, int], rows_per_chunk: int) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (first row, [rows*W, D]) (a transposed view of upsampled_cols)."""
    for r0, cols in upsampled_cols(feat, size, rows_per_chunk):
        yield r0, cols.T


# ----------------------------------------------------------------------------- selection
def percentile_thresholds(scores: dict[int, list[np.ndarray]], percentile: float) -> dict[int, float]:
    """Per class: the `percentile`-th percentile of its scores (pixels below it are rejected)."""
    out = {}
    for c, parts in scores.items():
        v = np.concatenate(parts) if parts else np.empty(0)
        if v.size:
            out[c] = float(np.percentile(v, percentile))
    return out


def apply_selection(label: np.ndarray, score: np.ndarray, mode: str, threshold: float,
                    class_thresholds: dict[int, float] | None) -> np.ndarray:
    """Set rejected pixels to 255: global `score < threshold`, or per class `score < class_thresholds[c]`."""
    out = label.copy()
    if mode in ("loglik", "confidence"):
        out[score < threshold] = IGNORE
    elif mode == "percentile":
        assert class_thresholds is not None
        thr = np.full(256, np.inf)
        for c, t in class_thresholds.items():
            thr[c] = t
        out[score < thr[label]] = IGNORE
    else:
        raise InputError(f"config: unknown selection mode {mode!r}")
    return out


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


def _quality_pairs(ds, gt_ds, predict: Predictor, mode: str, threshold: float, class_thr, out_dir: Path,
                   stage: str) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    gt_index = None if gt_ds is None else {n: i for i, n in enumerate(gt_ds.names)}
    n = len(ds)
    for i in range(n):
        item = ds[i]
        label, score = predict(item)
        final = apply_selection(label, score, mode, threshold, class_thr)
        from bismap.data.labels import save_label_png

        save_label_png(out_dir / item["file"], final)
        gt = None
        if gt_index is not None:
            if item["name"] not in gt_index:
                raise InputError(f"target_gt: no ground truth for {item['name']}")
            gt = gt_ds[gt_index[item["name"]]]["label"]
            if gt.shape != final.shape:
                raise InputError(f"target_gt: {item['name']} label is {gt.shape}, pseudo label {final.shape}; "
                                 f"give both specs the same size")
        if (i + 1) % 10 == 0 or i + 1 == n:
            kept = float((final != IGNORE).mean())
            print(f"{stage}: {i + 1}/{n} images labelled (last kept {kept:.1%})", flush=True)
        yield final, gt


def label_target(*, ds, gt_ds, predict: Predictor, out_dir, out_quality, mode: str, threshold: float,
                 percentile: float, sample_pixels: int | None, seed: int, stage: str) -> None:
    """Shared driver: optional first pass for per-class percentiles, then label, save, and score."""
    from bismap.evaluation.quality import label_quality

    class_thr = None
    if mode == "percentile":
        pools: dict[int, list[np.ndarray]] = {}
        for i in range(len(ds)):
            label, score = predict(ds[i])
            sample_scores(label, score, sample_pixels, np.random.default_rng([int(seed), i]), pools)
            if (i + 1) % 10 == 0 or i + 1 == len(ds):
                print(f"{stage}: percentile pass {i + 1}/{len(ds)}", flush=True)
        class_thr = percentile_thresholds(pools, percentile)
        print(f"{stage}: per-class thresholds at percentile {percentile}: "
              + ", ".join(f"{c}:{t:.4g}" for c, t in sorted(class_thr.items())), flush=True)
    with atomic_dir(out_dir) as tmp:
        quality = label_quality(_quality_pairs(ds, gt_ds, predict, mode, threshold, class_thr, Path(tmp), stage))
    if class_thr is not None and isinstance(quality, dict):
        quality = {**quality, "class_thresholds": {str(c): t for c, t in sorted(class_thr.items())}}
    write_json(out_quality, quality)


def prepare_model(checkpoint, target_ds, cfg: dict, data: dict, device: torch.device, stage: str):
    """Warm-up model in eval mode, BN statistics re-estimated on target images when cfg.adabn.enabled."""
    from bismap.engine.inference import adapt_batchnorm

    model = load_warmup(checkpoint, device)
    ab = cfg.get("adabn") or {}
    if bool(ab.get("enabled", False)):
        mean, std = mean_std(data, stage)
        used = adapt_batchnorm(model, target_ds, int(ab.get("max_images", 100)), int(ab.get("batch_size", 4)),
                               mean=mean, std=std, device=device)
        print(f"{stage}: AdaBN statistics re-estimated on {used} target images", flush=True)
    return model.eval()


def selection_settings(cfg: dict, default_mode: str, default_threshold: float,
                       allowed: tuple[str, ...] = ()) -> tuple[str, float, float, int | None, int]:
    mode = str(cfg.get("selection", default_mode))
    modes = (default_mode, "percentile", *allowed)
    if mode not in modes:
        raise InputError(f"config: selection must be one of {', '.join(map(repr, modes))}, got {mode!r}")
    sp = cfg.get("sample_pixels", 20000)
    thr = cfg.get("threshold")
    # threshold null: the mode's own scale (softmax 0.9, or the caller's default: the original's tau = 100)
    threshold = (DEFAULT_CONFIDENCE if mode == "confidence" else float(default_threshold)) if thr is None else float(thr)
    return (mode, threshold, float(cfg.get("percentile", 50.0)), None if sp is None else int(sp),
            int(cfg.get("seed", 0)))


# ----------------------------------------------------------------------------- stage
def gmm_predictor(model, gmms: dict[int, DiagonalGMM], *, mean, std, device, flip: bool, chunk_pixels: int,
                  classes: list[int] | None, rule: str = "gmm", score: str = "loglik") -> Predictor:
    """Per pixel: the GMMs' class (rule gmm), that class only where the network's argmax agrees
    (rule agree, others 255), or the network's class alone (rule network: the ablation without
    prototypes); score = the best log-likelihood, or the network's softmax confidence."""
    allowed = dict(gmms) if classes is None else {c: g for c, g in gmms.items() if c in set(classes)}
    if not allowed:
        raise InputError(f"config: pseudo_labels.classes {classes} has no class with a fitted GMM")
    if rule not in ("gmm", "agree", "network"):
        raise InputError(f"config: pseudo_labels.rule must be 'gmm', 'agree' or 'network', got {rule!r}")
    need_logits = rule != "gmm" or score == "confidence"
    if need_logits and classes is not None:
        mask = torch.full((NUM_CLASSES,), -math.inf, device=device)
        mask[list(allowed)] = 0.0
    else:
        mask = None
    fast = ClassScorer(allowed, NUM_CLASSES, torch.float32)
    exact = ClassScorer(allowed, NUM_CLASSES, torch.float64)

    def predict(item: dict) -> tuple[np.ndarray, np.ndarray]:
        feat, logits = forward(model, to_input([item], mean, std, device), flip)
        return label_features(feat, logits, item["image"].shape[:2])

    def label_features(feat: torch.Tensor, logits: torch.Tensor, size: tuple[int, int]
                       ) -> tuple[np.ndarray, np.ndarray]:
        """Everything after the forward: upsampling, class scores, rule and score (timed by bismap.bench)."""
        h, w = size
        label = np.empty((h, w), np.uint8)
        out_score = np.empty((h, w), np.float64)
        rows = max(1, int(chunk_pixels) // w)
        logit_rows = upsampled_rows(logits[0], (h, w), rows) if need_logits else None
        centred = feat[0] - fast.shift.to(feat.device)[:, None, None]  # interpolation weights sum to 1
        for r0, f in upsampled_cols(centred, (h, w), rows):
            sc, arg, _ = best_class(f, fast, exact)
            if logit_rows is not None:
                _, lg = next(logit_rows)
                if mask is not None:
                    lg = lg + mask
                conf, net_arg = torch.softmax(lg.double(), 1).max(1)
                if score == "confidence":
                    sc = conf
                if rule == "agree":
                    arg = torch.where(arg == net_arg, arg, torch.full_like(arg, IGNORE))
                elif rule == "network":
                    arg = net_arg
            r1 = r0 + f.shape[1] // w
            label[r0:r1] = arg.reshape(-1, w).cpu().numpy().astype(np.uint8)
            out_score[r0:r1] = sc.reshape(-1, w).cpu().numpy()
        return label, out_score

    predict.label_features = label_features  # type: ignore[attr-defined]
    return predict


def run(*, checkpoint: str | os.PathLike, prototypes: str | os.PathLike, target: dict, target_gt: dict | None,
        out_dir: str | os.PathLike, out_quality: str | os.PathLike, cfg: dict, data: dict, threads: int = 1) -> None:
    """Write `<out_dir>/<image file name>` pseudo labels (255 = rejected) and the quality json."""
    device = setup_device(threads, data, cfg)
    mean, std = mean_std(data, "pseudo_labels")
    gmms, meta = load_prototypes(prototypes, device=device)
    ds = open_spec(target, "target")
    gt_ds = None if target_gt is None else open_spec(target_gt, "target_gt")
    model = prepare_model(checkpoint, ds, cfg, data, device, "pseudo_labels")
    dim = int(getattr(model, "feature_dim", meta.get("feature_dim", 0)))
    if meta.get("feature_dim") is not None and int(meta["feature_dim"]) != dim:
        raise InputError(f"{prototypes}: GMMs have {meta['feature_dim']} features, the model gives {dim}")
    mode, threshold, percentile, sample_pixels, seed = selection_settings(cfg, "loglik", 100.0, ("confidence",))
    rule = str(cfg.get("rule", "gmm"))
    predict = gmm_predictor(model, gmms, mean=mean, std=std, device=device, flip=bool(cfg.get("flip", False)),
                            chunk_pixels=int(cfg.get("chunk_pixels", 200_000)), classes=cfg.get("classes"),
                            rule=rule, score="confidence" if mode == "confidence" else "loglik")
    print(f"pseudo_labels: {len(ds)} target images, GMMs for classes {sorted(gmms)}, rule {rule}, "
          f"selection {mode}", flush=True)
    label_target(ds=ds, gt_ds=gt_ds, predict=predict, out_dir=out_dir, out_quality=out_quality, mode=mode,
                 threshold=threshold, percentile=percentile, sample_pixels=sample_pixels, seed=seed,
                 stage="pseudo_labels")

"""Stage: target pseudo labels from the per-class source GMMs (the MAP prototypes).

Label = argmax over classes of the mixture log-likelihood of the warm-up model's stride-4
decoder feature, bilinearly upsampled (align_corners=True) to the image size, as the
original. Pixels are rejected (255) either by the original's global log-likelihood
threshold, or per class: per-class diagonal Gaussians give near one-hot posteriors, so the
useful confidence is the likelihood itself, and a per-class percentile keeps the same share
of every class instead of letting one global number favour the compact classes.

Upsampling and scoring run in chunks of output rows (separable interpolation matrices), so
a 1024x2048 image never needs its full [D, H, W] feature map in memory.

The two-pass thresholding driver here is shared with the naive baseline (naive_labels).
"""
from __future__ import annotations

import math
import os
from typing import Iterator

import numpy as np
import torch

from bismap.engine.labelling import Predictor, label_target, prepare_model, selection_settings
from bismap.io import InputError
from bismap.prototypes import DiagonalGMM, class_log_likelihood
from bismap.data.labels import IGNORE_INDEX as IGNORE, NUM_CLASSES
from bismap.engine.inference import forward, to_input
from bismap.engine.stage_setup import mean_std, open_spec, setup_device
from bismap.prototypes import load_prototypes


# ----------------------------------------------------------------------------- upsampling
def interp_matrix(n_out: int, n_in: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[n_out, n_in] linear interpolation weights with align_corners=True semantics."""
    a = torch.zeros(n_out, n_in, dtype=torch.float64)
    if n_in == 1 or n_out == 1:
        a[:, 0] = 1.0
        return a.to(dtype)
    src = torch.arange(n_out, dtype=torch.float64) * (n_in - 1) / (n_out - 1)
    lo = src.floor().long().clamp(max=n_in - 1)
    hi = (lo + 1).clamp(max=n_in - 1)
    frac = src - lo
    rows = torch.arange(n_out)
    a.index_put_((rows, lo), 1.0 - frac, accumulate=True)
    a.index_put_((rows, hi), frac, accumulate=True)
    return a.to(dtype)


def upsampled_rows(feat: torch.Tensor, size: tuple[int, int], rows_per_chunk: int) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (first row, [rows*W, D]) of feat [D,h,w] bilinearly upsampled (align_corners=True) to size."""
    d, h, w = feat.shape
    ay = interp_matrix(size[0], h).to(feat.device)
    ax = interp_matrix(size[1], w).to(feat.device)
    for r0 in range(0, size[0], rows_per_chunk):
        t = torch.einsum("Hh,dhw->Hwd", ay[r0:r0 + rows_per_chunk], feat)
        out = torch.einsum("Ww,Hwd->HWd", ax, t)
        yield r0, out.reshape(-1, d)


# ----------------------------------------------------------------------------- selection


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

    def predict(item: dict) -> tuple[np.ndarray, np.ndarray]:
        x = to_input([item], mean, std, device)
        feat, logits = forward(model, x, flip)
        h, w = item["image"].shape[:2]
        label = np.empty((h, w), np.uint8)
        out_score = np.empty((h, w), np.float64)
        rows = max(1, int(chunk_pixels) // w)
        logit_rows = upsampled_rows(logits[0], (h, w), rows) if need_logits else None
        for r0, f in upsampled_rows(feat[0], (h, w), rows):
            ll = class_log_likelihood(allowed, f, NUM_CLASSES, batch_size=max(1, int(chunk_pixels)))
            best, arg = ll.max(1)
            sc = best
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
            r1 = r0 + f.shape[0] // w
            label[r0:r1] = arg.reshape(-1, w).cpu().numpy().astype(np.uint8)
            out_score[r0:r1] = sc.reshape(-1, w).cpu().numpy()
        return label, out_score

    return predict


def run(*, checkpoint: str | os.PathLike, prototypes: str | os.PathLike, target: dict, target_gt: dict | None,
        out_dir: str | os.PathLike, out_quality: str | os.PathLike, cfg: dict, data: dict, runtime: dict,
        threads: int = 1) -> None:
    """Write `<out_dir>/<image file name>` pseudo labels (255 = rejected) and the quality json."""
    device = setup_device(threads, runtime)
    mean, std = mean_std(data)
    gmms, meta = load_prototypes(prototypes, device=device)
    ds = open_spec(target, "target")
    gt_ds = None if target_gt is None else open_spec(target_gt, "target_gt")
    model = prepare_model(checkpoint, ds, cfg, data, device, "pseudo_labels")
    dim = int(getattr(model, "feature_dim", meta.get("feature_dim", 0)))
    if meta.get("feature_dim") is not None and int(meta["feature_dim"]) != dim:
        raise InputError(f"{prototypes}: GMMs have {meta['feature_dim']} features, the model gives {dim}")
    mode, threshold, percentile, sample_pixels, seed = selection_settings(cfg, "loglik", 100.0, ("confidence",))
    rule = str(cfg["rule"])
    predict = gmm_predictor(model, gmms, mean=mean, std=std, device=device, flip=bool(cfg["flip"]),
                            chunk_pixels=int(cfg["chunk_pixels"]), classes=cfg["classes"],
                            rule=rule, score="confidence" if mode == "confidence" else "loglik")
    print(f"pseudo_labels: {len(ds)} target images, GMMs for classes {sorted(gmms)}, rule {rule}, "
          f"selection {mode}", flush=True)
    label_target(ds=ds, gt_ds=gt_ds, predict=predict, out_dir=out_dir, out_quality=out_quality, mode=mode,
                 threshold=threshold, percentile=percentile, sample_pixels=sample_pixels, seed=seed,
                 stage="pseudo_labels")

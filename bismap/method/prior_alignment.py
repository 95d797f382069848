"""Class-prior alignment of a network's target predictions (distribution alignment).

Under domain shift a network over-predicts some classes on the target and starves others (on
the suburb preset the warm-up labels 3.5 % of target pixels truck, against 0.6 % truth and 1.3 %
of source pixels): its softmax carries the source classifier's bias, and every label rule that
reads it (the `agree` veto, the class-balanced cut, the teacher's argmax) inherits it. Alignment
adds one per-class logit offset so that the mean target prediction matches the source label
prior: offset += strength * (log prior - log mean prediction), repeated `iterations` times, each
mean re-estimated under the offset so far (one iteration is ReMixMatch's distribution alignment,
Berthelot et al. 2020; more approach the fixed point where the aligned mean equals the prior).
The means come from a seeded sample of pixel logits, so memory does not grow with the data set.

What the mean is moved to: the source label prior (`target: source`), or an estimate of the
TARGET's class prior (`target: estimated`): the EM of Saerens, Latinne and Decaestecker (2002,
"Adjusting the outputs of a classifier to new a priori probabilities"), which re-weights each
pixel's softmax by prior_new / prior_source, renormalises, and takes the mean as the next prior,
from the source prior on. Real targets rarely share a synthetic source's class frequencies, and
pulling them to the source's is then wrong. The EM is only as good as the network's calibration:
it assumes the softmax is the source-trained posterior p_s(c | x) and that only the prior moved,
while under domain shift the network is also biased and over-confident, so the estimate inherits
part of that bias (a floor per class keeps a class the network never predicts from dropping to 0,
and the iterations are bounded).
"""
from __future__ import annotations

import os
from typing import Callable, Iterable

import numpy as np
import torch

from bismap.data.labels import CLASS_NAMES, NUM_CLASSES
from bismap.io import InputError, read_json

PRIOR_FORMAT = "bismap-class-prior/1"


def read_prior(path: str | os.PathLike) -> np.ndarray:
    """The source class prior [19] (float64, sums to 1) from the source_prior stage's json."""
    obj = read_json(path)
    if not isinstance(obj, dict) or obj.get("format") != PRIOR_FORMAT or len(obj.get("pixels", [])) != NUM_CLASSES:
        raise InputError(f"{path}: not a {PRIOR_FORMAT} file with {NUM_CLASSES} pixel counts")
    pixels = np.asarray(obj["pixels"], dtype=np.float64)
    if pixels.sum() <= 0 or (pixels < 0).any():
        raise InputError(f"{path}: class pixel counts must be >= 0 with a positive sum")
    return pixels / pixels.sum()


def sample_logits(logits: Iterable[torch.Tensor], n_images: int, sample_pixels: int, seed: int) -> torch.Tensor:
    """[N, C] float64: about sample_pixels / n_images random pixels of each [C, H, W] logit map."""
    per_image = max(1, -(-int(sample_pixels) // max(1, int(n_images))))
    gen = torch.Generator().manual_seed(int(seed))
    parts = []
    for lg in logits:
        flat = lg.reshape(lg.shape[0], -1)
        idx = torch.randint(flat.shape[1], (min(per_image, flat.shape[1]),), generator=gen)
        parts.append(flat[:, idx.to(flat.device)].T.double().cpu())  # index on the device: maps can be large
    if not parts:
        raise InputError("prior alignment: no target image to estimate the mean prediction from")
    return torch.cat(parts)


def alignment_offset(sample: torch.Tensor, prior: np.ndarray, *, strength: float, iterations: int,
                     classes: list[int] | None = None) -> torch.Tensor:
    """Per-class logit offset [C] (float64) that moves the sample's mean softmax towards `prior`.

    Classes outside `classes` (or with zero prior) get no offset: a class the labels may not
    assign, or that the source never shows, is not pushed either way.
    """
    prior_t = torch.as_tensor(prior, dtype=torch.float64)
    active = prior_t > 0
    if classes is not None:
        mask = torch.zeros_like(active)
        mask[list(classes)] = True
        active &= mask
    offset = torch.zeros(sample.shape[1], dtype=torch.float64)
    for _ in range(int(iterations)):
        mean = torch.softmax(sample + offset, dim=1).mean(0).clamp_min(1e-12)
        step = float(strength) * (prior_t.clamp_min(1e-12).log() - mean.log())
        offset = offset + torch.where(active, step, torch.zeros_like(step))
    return offset


def em_target_prior(sample: torch.Tensor, source_prior: np.ndarray, *, max_iterations: int, tolerance: float,
                    floor: float, max_ratio: float) -> tuple[np.ndarray, int]:
    """(estimated target prior [C], EM iterations run): Saerens et al.'s EM on the sample's softmax.

    Each step: posteriors p(c | x) * prior_new(c) / prior_source(c), renormalised per pixel; the new
    prior is their mean, kept within [source / max_ratio, source * max_ratio] and at least `floor` for
    classes the source has, and renormalised. Stops when no class moves by more than `tolerance` or
    after `max_iterations`. Classes absent from the source stay at 0 (the source-trained posteriors say
    nothing about them). The ratio bound is what keeps a poorly calibrated network safe: with nearly
    flat posteriors (an early or weak model) the EM's fixed point is ill-posed and it drifts towards
    whichever class is slightly favoured, measured on a 2-iteration model: one class at 95 %.
    """
    src = torch.as_tensor(source_prior, dtype=torch.float64)
    present = src > 0
    log_post = torch.log_softmax(sample.double(), dim=1)
    prior = src.clone()
    done = 0
    for done in range(1, int(max_iterations) + 1):  # noqa: B007  (the iteration count, returned after the loop)
        weight = torch.where(present, prior.clamp_min(1e-300).log() - src.clamp_min(1e-300).log(),
                             torch.full_like(prior, -torch.inf))
        new = torch.softmax(log_post + weight, dim=1).mean(0)
        new = torch.minimum(torch.maximum(new, src / float(max_ratio)), src * float(max_ratio))
        new = torch.where(present, new.clamp_min(float(floor)), torch.zeros_like(new))
        new = new / new.sum()
        moved = float((new - prior).abs().max())
        prior = new
        if moved <= float(tolerance):
            break
    return prior.numpy(), done


def offset_for(cfg: dict | None, prior_path, logit_maps: Callable[[], Iterable[torch.Tensor]], n_images: int,
               classes: list[int] | None = None, stage: str = "", record: dict | None = None) -> torch.Tensor | None:
    """The offset for a stage's `prior_alignment` settings (None: the stage does not align; the rule
    passes them only when its `align_prior` is on), with a one-line report. `record` (a dict) receives
    what was aimed at and measured, for the stage's json (see `prior_report`)."""
    if cfg is None:
        return None
    if prior_path is None:
        raise InputError(f"{stage}: prior_alignment is enabled but no source class prior file was given")
    prior = source_prior = read_prior(prior_path)
    sample = sample_logits(logit_maps(), n_images, int(cfg["sample_pixels"]), int(cfg["seed"]))
    steps = None
    if cfg["target"] == "estimated":
        source = prior
        prior, steps = em_target_prior(sample, source, max_iterations=int(cfg["em_max_iterations"]),
                                       tolerance=float(cfg["em_tolerance"]), floor=float(cfg["em_floor"]),
                                       max_ratio=float(cfg["em_max_ratio"]))
        shifted = ", ".join(f"{c}: {100 * source[c]:.1f}->{100 * prior[c]:.1f}"
                            for c in np.argsort(-np.abs(prior - source))[:4].tolist())
        print(f"{stage}: target prior estimated by EM in {steps} iterations; largest changes from the source "
              f"prior, class: % {shifted}", flush=True)
    before = torch.softmax(sample, 1).mean(0)
    offset = alignment_offset(sample, prior, strength=float(cfg["strength"]), iterations=int(cfg["iterations"]),
                              classes=classes)
    after = torch.softmax(sample + offset, 1).mean(0)
    aim = "estimated target" if cfg["target"] == "estimated" else "source"
    moved = ", ".join(f"{c}: {100 * before[c]:.1f}->{100 * after[c]:.1f} ({aim} {100 * prior[c]:.1f})"
                      for c in torch.argsort((before - after).abs(), descending=True)[:4].tolist())
    print(f"{stage}: prior alignment on {sample.shape[0]} sampled pixels; largest moves, class: mean prediction % "
          f"{moved}", flush=True)
    if record is not None:
        record.update({"target": str(cfg["target"]), "aimed_prior": [float(v) for v in prior],
                       "source_prior": [float(v) for v in source_prior], "em_iterations": steps,
                       "sampled_pixels": int(sample.shape[0]),
                       "mean_prediction_before": before.tolist(), "mean_prediction_after": after.tolist()})
    return offset


def prior_report(record: dict, truth: dict | None) -> dict:
    """The alignment record for a label stage's json, with how far each prior is from the truth.

    `truth`: class name -> share of the target-train ground-truth pixels (the quality json's
    `gt_class_frequency`; None without ground truth). Distances are total variation (half the L1
    distance, 0 = equal, 1 = disjoint) over the 19 classes: of the prior aimed at (the EM's estimate
    under `target: estimated`), of the source prior, and of the network's mean prediction before
    alignment, so a user sees whether the estimate is nearer the target than the source prior was.
    """
    out = {"target": record["target"], "em_iterations": record["em_iterations"],
           "sampled_pixels": record["sampled_pixels"]}
    named = {key: dict(zip(CLASS_NAMES, record[key]))
             for key in ("aimed_prior", "source_prior", "mean_prediction_before", "mean_prediction_after")}
    out.update(named)
    if truth:
        true = np.array([float(truth.get(name, 0.0)) for name in CLASS_NAMES])
        out["true_target_frequency"] = dict(zip(CLASS_NAMES, true.tolist()))
        out["total_variation_to_truth"] = {
            key: 0.5 * float(np.abs(np.asarray(record[key], dtype=np.float64) - true).sum())
            for key in ("aimed_prior", "source_prior", "mean_prediction_before", "mean_prediction_after")}
    return out

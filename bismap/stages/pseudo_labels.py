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

The two-pass thresholding driver is shared with the naive baseline: bismap.method.labelling.
"""
from __future__ import annotations

import math
import os
from typing import Iterator

import numpy as np
import torch

from bismap.data.labels import IGNORE_INDEX as IGNORE
from bismap.data.labels import NUM_CLASSES
from bismap.engine.inference import forward, to_input
from bismap.engine.stage_setup import mean_std, open_spec, setup_device
from bismap.io import InputError, write_json
from bismap.method.label_shards import join_shards, read_statistics, write_counts, write_statistics
from bismap.method.labelling import (
    Predictor,
    label_target,
    nbytes,
    predict_all,
    prepare_model,
    quality_record,
    selection_settings,
    selection_statistics,
    thread_record,
    write_labels,
)
from bismap.method.prior_alignment import offset_for
from bismap.method.prototypes import ClassScorer, DiagonalGMM, best_class, load_prototypes, unit_rows
from bismap.method.sharding import needs_statistics


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


def upsampled_cols(feat: torch.Tensor, size: tuple[int, int],
                   rows_per_chunk: int) -> Iterator[tuple[int, torch.Tensor]]:
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


def upsampled_rows(feat: torch.Tensor, size: tuple[int, int],
                   rows_per_chunk: int) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (first row, [rows*W, D]) (a transposed view of upsampled_cols)."""
    for r0, cols in upsampled_cols(feat, size, rows_per_chunk):
        yield r0, cols.T


# ----------------------------------------------------------------------------- stage
def gmm_predictor(model, gmms: dict[int, DiagonalGMM], *, mean, std, device, flip: bool, chunk_pixels: int,
                  classes: list[int] | None, rule: str = "gmm", score: str = "loglik", normalize: bool = False,
                  logit_offset: torch.Tensor | None = None) -> Predictor:
    """Per pixel: the GMMs' class (rule gmm), that class only where the network's argmax agrees
    (rule agree, others 255), or the network's class alone (rule network: the ablation without
    prototypes); score = the best log-likelihood, or the network's softmax confidence. `normalize`:
    the GMMs were fitted on unit-length features, so each upsampled pixel feature is scaled to unit
    length before scoring (then it cannot be centred before upsampling). `logit_offset` [19]: the
    prior alignment's per-class offset, added to the network's logits wherever they are read."""
    allowed = dict(gmms) if classes is None else {c: g for c, g in gmms.items() if c in set(classes)}
    if not allowed:
        raise InputError(f"config: pseudo_labels.classes {classes} has no class with a fitted GMM")
    need_logits = rule != "gmm" or score == "confidence"
    mask = None if logit_offset is None else logit_offset.to(device=device, dtype=torch.float32)
    if need_logits and classes is not None:
        blocked = torch.full((NUM_CLASSES,), -math.inf, device=device)
        blocked[list(allowed)] = 0.0
        mask = blocked if mask is None else mask + blocked
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
        shift = fast.shift.to(feat.device)
        if normalize:
            chunks = ((r0, unit_rows(f, dim=0) - shift[:, None]) for r0, f in upsampled_cols(feat[0], (h, w), rows))
        else:
            chunks = upsampled_cols(feat[0] - shift[:, None, None], (h, w), rows)  # interpolation weights sum to 1
        for r0, f in chunks:
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


def network_logits(model, ds, mean, std, device, flip: bool, keep: dict | None = None,
                   keep_mb: float = 0) -> Iterator[torch.Tensor]:
    """The network's stride-4 logits [19, h, w] of every target image (the prior alignment's sample).
    `keep`: filled with image name -> (feature, logits) while they fit in `keep_mb`, so that the
    labelling pass does not run the network again."""
    budget, size = float(keep_mb) * 2 ** 20, 0
    for i in range(len(ds)):
        item = ds[i]
        with torch.no_grad():
            feat, logits = forward(model, to_input([item], mean, std, device), flip)
        size += nbytes((feat, logits))
        if keep is not None and size <= budget:
            keep[item["name"]] = (feat, logits)
        yield logits[0]


def reusing(predict: Predictor, kept: dict) -> Predictor:
    """`predict` that takes an image's network outputs from `kept` (dropping them) when they are there."""
    def from_kept(item: dict) -> tuple[np.ndarray, np.ndarray]:
        outputs = kept.pop(item["name"], None)
        if outputs is None:
            return predict(item)
        return predict.label_features(*outputs, item["image"].shape[:2])  # type: ignore[attr-defined]

    return from_kept


STAGE = "pseudo_labels"


def _open(checkpoint, prototypes, target: dict, target_gt: dict | None, cfg: dict, data: dict, runtime: dict,
          threads: int) -> dict:
    """What every job of the stage starts from: device, GMMs, datasets and the (AdaBN-adapted) model."""
    device = setup_device(threads, runtime)
    mean, std = mean_std(data)
    gmms, meta = load_prototypes(prototypes, device=device)
    ds = open_spec(target, "target")
    gt_ds = None if target_gt is None else open_spec(target_gt, "target_gt")
    model = prepare_model(checkpoint, ds, cfg, data, device, STAGE)
    dim = int(getattr(model, "feature_dim", meta.get("feature_dim", 0)))
    if meta.get("feature_dim") is not None and int(meta["feature_dim"]) != dim:
        raise InputError(f"{prototypes}: GMMs have {meta['feature_dim']} features, the model gives {dim}")
    mode, threshold, percentile, sample_pixels, seed = selection_settings(cfg, "loglik", 100.0,
                                                                          ("confidence", "balanced"))
    return dict(device=device, mean=mean, std=std, gmms=gmms, meta=meta, ds=ds, gt_ds=gt_ds, model=model,
                mode=mode, threshold=threshold, percentile=percentile, sample_pixels=sample_pixels, seed=seed)


def _alignment(job: dict, cfg: dict, runtime: dict, prior, alignment: dict | None) -> tuple:
    """(logit offset or None, the alignment's record, the network outputs its pass kept for the next)."""
    kept: dict = {}
    record: dict = {}
    offset = offset_for(alignment if cfg["align_prior"] else None, prior,
                        lambda: network_logits(job["model"], job["ds"], job["mean"], job["std"], job["device"],
                                               bool(cfg["flip"]), kept, float(runtime["label_cache_mb"])),
                        len(job["ds"]), classes=cfg["classes"], stage=STAGE, record=record)
    return offset, record, kept


def _predictor(job: dict, cfg: dict, offset) -> Predictor:
    mode = job["mode"]
    return gmm_predictor(job["model"], job["gmms"], mean=job["mean"], std=job["std"], device=job["device"],
                         flip=bool(cfg["flip"]), chunk_pixels=int(cfg["chunk_pixels"]), classes=cfg["classes"],
                         rule=str(cfg["rule"]),
                         score="confidence" if mode in ("confidence", "balanced") else "loglik",
                         normalize=bool(job["meta"].get("normalize", False)), logit_offset=offset)


def run(*, checkpoint: str | os.PathLike, prototypes: str | os.PathLike, target: dict, target_gt: dict | None,
        out_dir: str | os.PathLike, out_quality: str | os.PathLike, cfg: dict, data: dict, runtime: dict,
        threads: int = 1, prior: str | os.PathLike | None = None, alignment: dict | None = None) -> None:
    """Write `<out_dir>/<image file name>` pseudo labels (255 = rejected) and the quality json.
    `alignment`: the `prior_alignment` section, applied when `cfg.align_prior` is on (with `prior`, the
    source class prior file)."""
    job = _open(checkpoint, prototypes, target, target_gt, cfg, data, runtime, threads)
    offset, record, kept = _alignment(job, cfg, runtime, prior, alignment)  # kept: reused by the first pass
    predict = _predictor(job, cfg, offset)
    print(f"pseudo_labels: {len(job['ds'])} target images, GMMs for classes {sorted(job['gmms'])}, rule "
          f"{cfg['rule']}, selection {job['mode']}, {'unit-length' if job['meta'].get('normalize') else 'raw'} "
          f"features", flush=True)
    label_target(ds=job["ds"], gt_ds=job["gt_ds"], predict=reusing(predict, kept), out_dir=out_dir,
                 out_quality=out_quality, mode=job["mode"], threshold=job["threshold"], percentile=job["percentile"],
                 sample_pixels=job["sample_pixels"], seed=job["seed"], stage=STAGE,
                 cache_mb=float(runtime["label_cache_mb"]), min_coverage=float(runtime["min_label_coverage"]),
                 alignment=record)


def run_statistics(*, checkpoint: str | os.PathLike, prototypes: str | os.PathLike, target: dict, cfg: dict,
                   data: dict, runtime: dict, out_statistics: str | os.PathLike, threads: int = 1,
                   prior: str | os.PathLike | None = None, alignment: dict | None = None) -> None:
    """Sharded pseudo labels, first job: the prior offset and per-class thresholds over every image."""
    job = _open(checkpoint, prototypes, target, None, cfg, data, runtime, threads)
    offset, record, kept = _alignment(job, cfg, runtime, prior, alignment)
    _, class_thr = selection_statistics(ds=job["ds"], predict=reusing(_predictor(job, cfg, offset), kept),
                                        mode=job["mode"], threshold=job["threshold"], percentile=job["percentile"],
                                        sample_pixels=job["sample_pixels"], seed=job["seed"], stage=STAGE)
    write_statistics(out_statistics, stage=STAGE, images=len(job["ds"]), offset=offset, class_thr=class_thr,
                     record=record, **thread_record())


def run_shard(*, checkpoint: str | os.PathLike, prototypes: str | os.PathLike, target: dict,
              target_gt: dict | None, cfg: dict, data: dict, runtime: dict, shard: int, shards: int,
              out_dir: str | os.PathLike, out_counts: str | os.PathLike,
              statistics: str | os.PathLike | None = None, threads: int = 1) -> None:
    """Sharded pseudo labels: the `shard`-th of `shards` contiguous blocks of the images, labelled as `run`
    labels them, with `statistics` (run_statistics' file) instead of the passes over every image."""
    if needs_statistics(cfg) and statistics is None:
        raise InputError(f"{STAGE}: this selection needs the statistics file of every image (run_statistics)")
    offset, class_thr, _ = (None, None, {}) if statistics is None else read_statistics(statistics, STAGE)
    job = _open(checkpoint, prototypes, target, target_gt, cfg, data, runtime, threads)
    part = job["ds"].shard(int(shard), int(shards))
    print(f"{STAGE}: shard {int(shard) + 1}/{int(shards)}, {len(part)} of {len(job['ds'])} images", flush=True)
    counts = write_labels(predict_all(part, _predictor(job, cfg, offset), STAGE), len(part), job["gt_ds"],
                          mode=job["mode"], threshold=job["threshold"], class_thr=class_thr, out_dir=out_dir,
                          stage=STAGE, min_coverage=None)
    write_counts(out_counts, stage=STAGE, shard=shard, shards=shards, counts=counts,
                 same={"checkpoint": str(checkpoint), "prototypes": str(prototypes), **thread_record()})


def gather(*, shard_dirs: list, shard_counts: list, out_dir: str | os.PathLike, out_quality: str | os.PathLike,
           runtime: dict, statistics: str | os.PathLike | None = None) -> None:
    """Join the shards' label folders and counts into the folder and quality json that `run` writes."""
    _, class_thr, record = (None, None, {}) if statistics is None else read_statistics(statistics, STAGE)
    counts, same = join_shards(shard_dirs, shard_counts, out_dir, stage=STAGE,
                               min_coverage=float(runtime["min_label_coverage"]))
    write_json(out_quality, quality_record(counts, class_thr, record, same["threads"]))

"""Helpers shared by the training and inference stages (warmup, self-training, teacher labels,
distillation, evaluation, predict).

They exist so every stage builds its data streams, fingerprints its configuration and runs
its models the same way: a resume is only valid when the fingerprint matches, and a label
written by one stage must be computed exactly like the labels evaluated by another.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bismap.io import InputError

# Keys of the `data` slice that change how fast, not what, a stage computes: excluded from the fingerprint.
_DATA_SPEED_KEYS = ("workers",)
# Keys of the `train` slice that do not change the trained weights: excluded from the fingerprint.
_TRAIN_SPEED_KEYS = ("log_every", "checkpoint_every")


def path_signature(path: Any) -> Any:
    """Identify an input by path, size and modification time, so changed content invalidates a resume."""
    if path is None:
        return None
    p = Path(path)
    try:
        st = p.stat()
    except OSError:
        return str(p)
    if p.is_dir():
        return [str(p), st.st_mtime_ns, sum(1 for _ in p.iterdir())]
    return [str(p), st.st_size, st.st_mtime_ns]


def spec_signature(spec: dict | None) -> Any:
    """A dataset spec plus the signatures of the folders it names (root, images, labels)."""
    if spec is None:
        return None
    sig = dict(spec)
    for key in ("root", "images", "labels"):
        value = spec.get(key)
        if value is not None and value != "none":
            sig[f"{key}__stat"] = path_signature(value)
    return sig


def fingerprint(**parts: Any) -> str:
    """sha256 of the JSON of every config slice and input that determines a stage's result.

    The trainer resumes from `<checkpoint>.resume.pt` only when this matches, so a changed
    config value or input never continues a stale run.
    """
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def data_for_fingerprint(data: dict) -> dict:
    return {k: v for k, v in data.items() if k not in _DATA_SPEED_KEYS}


def train_for_fingerprint(train: dict) -> dict:
    return {k: v for k, v in train.items() if k not in _TRAIN_SPEED_KEYS}


def derive_seed(seed: int, name: str) -> int:
    """A per-stream seed from the configured seed, so source and target streams draw independent
    augmentations while everything still follows from the one `train.seed`."""
    digest = hashlib.sha256(f"{int(seed)}:{name}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def require(cfg: dict, key: str, section: str) -> Any:
    """Read a mandatory config key with an error that names the section."""
    if key not in cfg:
        raise InputError(f"config: `{section}.{key}` is missing")
    return cfg[key]


# --------------------------------------------------------------------------------------------
# Training data


def build_view(spec: dict, augment: dict, data: dict, *, seed: int, weight_maps: str | os.PathLike | None = None,
               strong: dict | None = None):
    """open_dataset(spec) wrapped in the TrainingView that augments, normalises and aligns weights."""
    from bismap.data import open_dataset
    from bismap.data.training_view import TrainingView

    dataset = open_dataset(spec)
    if len(dataset) == 0:
        raise InputError(f"{spec.get('root')}: dataset has no images")
    return TrainingView(
        dataset,
        augment,
        mean=require(data, "mean", "data"),
        std=require(data, "std", "data"),
        weight_maps=None if weight_maps is None else str(weight_maps),
        strong=strong,
        seed=seed,
    )


def build_stream(view, train: dict, data: dict, *, seed: int):
    """An InfiniteStream of collated batches of `train.batch_size`."""
    from bismap.engine.stream import InfiniteStream

    return InfiniteStream(view, batch_size=int(require(train, "batch_size", "train")), seed=seed,
                          workers=int(data.get("workers", 0)))


def model_config(model: dict, weights: Any = None, backbone: str | None = None) -> dict:
    """The `model` slice with optional overrides (distillation's student backbone/weights)."""
    cfg = dict(model)
    if weights is not None:
        cfg["weights"] = weights
    if backbone is not None:
        cfg["backbone"] = backbone
    return cfg


def build_seeded_model(model_cfg: dict, seed: int):
    """build_model with the head's Kaiming init drawn from `train.seed`: same config, same initial weights."""
    from bismap.models import build_model

    torch.manual_seed(derive_seed(seed, "model-init"))
    return build_model(model_cfg)


def init_from_checkpoint(net: torch.nn.Module, path: str | os.PathLike, *, stage: str) -> torch.nn.Module:
    """Load the "model" weights of a bismap checkpoint into `net` (warm start: `self_training.init:
    warmup`, `distillation.init: teacher`); the architectures must match."""
    from bismap.engine.checkpoint import load_checkpoint

    ckpt = load_checkpoint(str(path))
    weights = ckpt.get("model") if isinstance(ckpt, dict) else None
    if weights is None:
        raise InputError(f"{path}: checkpoint has no 'model' weights to initialise {stage} from")
    try:
        net.load_state_dict(weights)
    except RuntimeError as e:
        raise InputError(f"{stage}: cannot initialise from {path}: the architectures differ "
                         f"({str(e).splitlines()[0]})") from None
    return net


def source_and_target_losses(cfg: dict, section: str):
    """The two supervised terms self-training and distillation share: STM-weighted source CE and
    symmetric CE on the target labels. Returns `step(ctx) -> (losses, target_logits)` so the
    stage can add its own term on the same target forward pass."""
    from bismap.losses import symmetric_cross_entropy, weighted_cross_entropy

    use_stm = bool(require(cfg, "use_stm", section))
    sce = require(cfg, "sce", section)
    alpha = float(require(sce, "alpha", f"{section}.sce"))
    beta = float(require(sce, "beta", f"{section}.sce"))

    def step(ctx):
        src, tgt = ctx.batches["source"], ctx.batches["target"]
        with ctx.autocast():
            _, src_logits = ctx.model(src["image"])
            _, tgt_logits = ctx.model(tgt["image"])
        losses = {
            "source_ce": weighted_cross_entropy(src_logits.float(), src["label"],
                                                weight=src["weight"] if use_stm else None),
            "target_sce": symmetric_cross_entropy(tgt_logits.float(), tgt["label"], alpha=alpha, beta=beta),
        }
        return losses, tgt_logits

    return step


def setup(threads: int, data: dict) -> torch.device:
    """Thread count and device for a stage; device from `data.device` ("auto" = GPU when present)."""
    from bismap.engine import device as dev

    dev.set_threads(threads)
    return dev.resolve_device(str(data.get("device", "auto")))


# --------------------------------------------------------------------------------------------
# Inference helpers


def predict_labels(model: torch.nn.Module, image: np.ndarray, *, mean, std, scales=(1.0,), flip: bool = False,
                   device: torch.device | str = "cpu", size: tuple[int, int] | None = None) -> np.ndarray:
    """Hard labels (uint8 [H,W]) for one image: multi-scale x flip logit averaging, then argmax.

    `size` (H, W) resamples the averaged logits bilinearly before the argmax (label size).
    """
    from bismap.engine.inference import normalise_image, predict_logits

    x = normalise_image(image, mean, std).unsqueeze(0).to(device)
    with torch.no_grad():
        logits = predict_logits(model, x, scales=tuple(float(s) for s in scales), flip=bool(flip))
        if size is not None and tuple(logits.shape[-2:]) != tuple(size):
            logits = torch.nn.functional.interpolate(logits.float(), size=tuple(size), mode="bilinear",
                                                     align_corners=True)
        return logits.argmax(1)[0].to(torch.uint8).cpu().numpy()


def _identity(item: Any) -> Any:
    return item


def predict_label_maps(model: torch.nn.Module, dataset, *, scales, flip: bool, mean, std,
                       device: torch.device | str, workers: int = 0):
    """Yield (name, file, prediction uint8 [H,W], label uint8 [H,W] or None) for every dataset item.

    Like engine.inference.predict_dataset, but the argmax (at the label size) happens on the
    device: copying full-resolution 19-channel logits to the host per image would dominate.
    """
    from bismap.engine.inference import normalise_image, predict_logits

    has_labels = bool(getattr(dataset, "has_labels", True))
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=False, num_workers=int(workers),
                                         collate_fn=_identity)
    model.eval()
    with torch.no_grad():
        for item in loader:
            x = normalise_image(item["image"], mean, std).unsqueeze(0).to(device)
            logits = predict_logits(model, x, scales=tuple(float(s) for s in scales), flip=bool(flip))
            label = item.get("label") if has_labels else None
            if label is not None and tuple(logits.shape[-2:]) != tuple(label.shape):
                logits = torch.nn.functional.interpolate(logits, size=tuple(label.shape), mode="bilinear",
                                                         align_corners=True)
            pred = logits.argmax(1)[0].to(torch.uint8).cpu().numpy()
            yield item["name"], item.get("file", item["name"]), pred, label


def normalisation(data: dict) -> dict:
    """Stored in every checkpoint (extra_state) so `bismap predict` normalises as training did."""
    return {"mean": [float(v) for v in require(data, "mean", "data")],
            "std": [float(v) for v in require(data, "std", "data")]}

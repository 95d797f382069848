"""What every stage does before its real work: devices and threads, datasets, models, seeds.

One home so that every stage opens its inputs, seeds its streams and builds its models the same
way (a label written by one stage must be computed exactly like the labels another evaluates).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from bismap.io import InputError


def check_file(path: str | os.PathLike, what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: {what} not found")
    return p


def open_spec(spec: dict, name: str, **override) -> torch.utils.data.Dataset:
    """open_dataset(spec) with overrides; an empty dataset is an input error naming its root."""
    from bismap.data import open_dataset

    if not isinstance(spec, dict):
        raise InputError(f"{name}: dataset spec must be a mapping, got {type(spec).__name__}")
    ds = open_dataset({**spec, **override})
    if len(ds) == 0:
        raise InputError(f"{spec.get('root')}: {name} dataset has no images")
    return ds


def mean_std(data: dict) -> tuple[list[float], list[float]]:
    """The `data` slice's normalisation as lists."""
    return list(data["mean"]), list(data["std"])


def setup_device(threads: int, runtime: dict) -> torch.device:
    """Threads from Snakemake; device from `runtime.device` ("auto" = GPU when present)."""
    from bismap.engine.device import resolve_device, set_threads

    set_threads(threads)
    return resolve_device(str(runtime["device"]))


def load_warmup(checkpoint: str | os.PathLike, device: torch.device) -> torch.nn.Module:
    from bismap.engine.checkpoint import load_model

    check_file(checkpoint, "checkpoint")
    return load_model(checkpoint, device=device).eval()


def derive_seed(seed: int, name: str) -> int:
    """A per-stream seed from the configured seed, so source and target streams draw independent
    augmentations while everything still follows from the one `train.seed`."""
    digest = hashlib.sha256(f"{int(seed)}:{name}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


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
        mean=data["mean"],
        std=data["std"],
        weight_maps=None if weight_maps is None else str(weight_maps),
        strong=strong,
        seed=seed,
    )


def build_stream(view, train: dict, runtime: dict, *, seed: int):
    """An InfiniteStream of collated batches of `train.batch_size`, loaded by `runtime.workers` processes."""
    from bismap.engine.stream import InfiniteStream

    return InfiniteStream(view, batch_size=int(train["batch_size"]), seed=seed,
                          workers=int(runtime["workers"]))


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


def normalisation(data: dict) -> dict:
    """Stored in every checkpoint (extra_state) so `bismap predict` normalises as training did."""
    return {"mean": [float(v) for v in data["mean"]],
            "std": [float(v) for v in data["std"]]}



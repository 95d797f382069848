"""Segmentation models: DeepLabV3+ on torchvision ResNets or SimCLRv2 (SK-)ResNets, and weight loading.

`build_model(cfg)` takes the config `model` slice; `load_pretrained` loads the pretrained-file
layouts in /work/shared/pretrained-weights.md (SimCLRv2 `state_dict` / `resnet`, torchvision
names, `module.` prefixes, fc dropped for backbones) and fails with one InputError line that
lists the missing and unexpected keys.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from bismap.io import InputError, check_keys
from bismap.models.deeplabv3plus import DeepLabV3Plus
from bismap.models.frozen_bn import FrozenBatchNorm2d, freeze_batchnorm
from bismap.models.resnet import RESNET_DEPTHS, ResNetBackbone, imagenet_state_dict
from bismap.models.simclr import (
    SIMCLR_LAYERS,
    SimCLRBackbone,
    SimCLRResNet,
    simclr_sk0_to_torchvision,
    torchvision_to_simclr_sk0,
)

__all__ = ["MODEL_KEYS", "DeepLabV3Plus", "FrozenBatchNorm2d", "SimCLRResNet", "build_model", "build_backbone",
           "freeze_batchnorm", "load_pretrained", "load_state"]

# The keys of the config's `model` slice (defaults: configs/schema.yaml).
MODEL_KEYS = ("backbone", "weights", "output_stride", "multi_grid", "aspp_channels", "decoder_channels",
              "low_level_channels", "num_classes", "dropout", "sk_ratio", "width_multiplier")

# where a whole-file dict nests its weights, in the order tried when `key` is not given
_NESTED_KEYS = ("state_dict", "resnet", "model_state", "model")


def build_backbone(cfg: Mapping[str, Any]) -> nn.Module:
    name = str(cfg["backbone"])
    mg = cfg["multi_grid"] or [1]
    if name.startswith("resnet") and name[6:].isdigit() and int(name[6:]) in RESNET_DEPTHS:
        return ResNetBackbone(int(name[6:]), int(cfg["output_stride"]), mg)
    if name.startswith("simclr_r") and name[8:].isdigit() and int(name[8:]) in SIMCLR_LAYERS:
        return SimCLRBackbone(int(name[8:]), int(cfg["width_multiplier"]), float(cfg["sk_ratio"]),
                              int(cfg["output_stride"]), mg)
    choices = [f"resnet{d}" for d in RESNET_DEPTHS] + [f"simclr_r{d}" for d in SIMCLR_LAYERS]
    raise InputError(f"model.backbone: unknown backbone {name!r} (choices: {', '.join(choices)})")


def build_model(cfg: Mapping[str, Any]) -> DeepLabV3Plus:
    """DeepLabV3+ from the config's complete `model` slice (MODEL_KEYS).

    Kaiming init everywhere, then the backbone weights: "none", "imagenet" (torchvision
    ResNets only) or a file path (see load_pretrained). The head is always freshly initialised.
    """
    check_keys("model", cfg, MODEL_KEYS)
    cfg = dict(cfg)
    backbone = build_backbone(cfg)
    model = DeepLabV3Plus(backbone, num_classes=int(cfg["num_classes"]), output_stride=int(cfg["output_stride"]),
                          aspp_channels=int(cfg["aspp_channels"]), decoder_channels=int(cfg["decoder_channels"]),
                          low_level_channels=int(cfg["low_level_channels"]), dropout=float(cfg["dropout"]))
    weights = cfg["weights"]
    if weights is None or str(weights).lower() == "none":
        pass
    elif str(weights).lower() == "imagenet":
        if not isinstance(backbone, ResNetBackbone):
            raise InputError(f"model.weights: 'imagenet' is only available for torchvision backbones, "
                             f"not {cfg['backbone']!r}; "
                             f"give a SimCLRv2 .pth path instead")
        load_state(backbone, imagenet_state_dict(backbone.depth), f"imagenet:{backbone.arch}")
    else:
        load_pretrained(model.backbone, weights)
    model.model_config = cfg  # checkpoints store it so load_model can rebuild the network
    return model


def _read(path: Path) -> Any:
    if not path.is_file():
        raise InputError(f"{path}: weights file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise InputError(f"{path}: cannot read as a torch weights file "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None


def _is_state(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def _select(obj: Any, key: str | None, source: str) -> dict[str, torch.Tensor]:
    if key is not None:
        if not isinstance(obj, Mapping) or key not in obj:
            have = list(obj)[:8] if isinstance(obj, Mapping) else type(obj).__name__
            raise InputError(f"{source}: no key {key!r} (top-level keys: {have})")
        obj = obj[key]
    elif not _is_state(obj) and isinstance(obj, Mapping):
        for k in _NESTED_KEYS:
            if k in obj and _is_state(obj[k]):
                obj = obj[k]
                break
    if not _is_state(obj):
        have = list(obj)[:8] if isinstance(obj, Mapping) else type(obj).__name__
        raise InputError(f"{source}: no state dict of tensors found (top-level: {have}; tried {list(_NESTED_KEYS)})")
    return dict(obj)


def _fmt(keys: list[str], n: int = 5) -> str:
    keys = sorted(keys)
    more = f", ... (+{len(keys) - n})" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def _remap(state: dict[str, torch.Tensor], target_keys: set[str]) -> dict[str, torch.Tensor]:
    """Pick, among identity / torchvision->sk0 / sk0->torchvision naming, the one that fits the target best."""
    best, best_hits = state, len(set(state) & target_keys)
    for fn in (torchvision_to_simclr_sk0, simclr_sk0_to_torchvision):
        mapped = {}
        for k, v in state.items():
            nk = fn(k)
            mapped[nk if nk is not None else k] = v
        hits = len(set(mapped) & target_keys)
        if hits > best_hits:
            best, best_hits = mapped, hits
    return best


def load_state(module: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> nn.Module:
    """Load `state` into `module` strictly after normalising the layout; InputError names `source` on mismatch.

    Normalisation: strip `module.`; take `backbone.*` only when `module` is a bare backbone; map
    torchvision <-> SimCLRv2-sk0 names; drop `fc.*` if `module` has no fc; ignore
    `num_batches_tracked` differences (frozen BN has none).
    """
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    target = module.state_dict()
    tkeys = set(target)
    if not any(k.startswith("backbone.") for k in tkeys) and any(k.startswith("backbone.") for k in state):
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    state = _remap(state, tkeys)
    if not any(k.startswith("fc.") for k in tkeys):
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    state = {k: v for k, v in state.items() if not (k.endswith("num_batches_tracked") and k not in tkeys)}
    missing = [k for k in tkeys - set(state) if not k.endswith("num_batches_tracked")]
    unexpected = sorted(set(state) - tkeys)
    shapes = [f"{k} {list(state[k].shape)} vs {list(target[k].shape)}" for k in sorted(tkeys & set(state))
              if state[k].shape != target[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys ({_fmt(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({_fmt(unexpected)})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches ({_fmt(shapes, 3)})")
        raise InputError(f"{source}: weights do not fit {type(module).__name__}: " + "; ".join(parts))
    module.load_state_dict(state, strict=False)  # strictness checked above (num_batches_tracked tolerated)
    return module


def load_pretrained(module: nn.Module, path: str | os.PathLike, key: str | None = None) -> nn.Module:
    """Load a pretrained file into `module` (a backbone, a SimCLRResNet, or a DeepLabV3Plus -> its backbone).

    `key` picks the nested dict (e.g. "resnet" for r152_1x_sk1.pth, "state_dict" for
    r101_1x_sk0.pth); without it the first of state_dict/resnet/model_state/model holding
    tensors is used, or the file itself if it is a flat state dict.
    """
    path = Path(path)
    state = _select(_read(path), key, str(path))
    if isinstance(module, DeepLabV3Plus) and not any(k.startswith(("backbone.", "module.backbone.")) for k in state):
        module = module.backbone
    return load_state(module, state, str(path))

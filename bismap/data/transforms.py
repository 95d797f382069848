"""Joint augmentation for training crops: one geometry (resize, crop, flip) shared by image,
label, STM weight map and the strong view, so they stay pixel-aligned; photometric changes
touch only the image. Every random draw comes from the numpy Generator passed in, so a view
is a pure function of (seed, epoch, index) and training resumes exactly.

Images are uint8 HxWx3 RGB numpy arrays until `normalize`, which maps them to [0,1] and
applies (x - mean) / std with mean/std given on the [0,1] scale (ImageNet: 0.485.../0.229...).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageEnhance, ImageOps

from bismap.data.labels import IGNORE_INDEX
from bismap.io import InputError, check_keys

# The keys of the config's `augment` and `self_training.strong` slices (defaults: configs/schema.yaml).
AUGMENT_KEYS = ("scale", "crop", "flip", "jitter", "crop_retries")
JITTER_KEYS = ("brightness", "contrast", "saturation", "hue")
STRONG_KEYS = ("ops", "magnitude", "cutout")


def augment_config(augment: Mapping[str, Any]) -> dict[str, Any]:
    """The `augment` slice, checked: every key present (crop may be null = keep the resized image whole)."""
    check_keys("augment", augment, AUGMENT_KEYS)
    check_keys("augment.jitter", augment["jitter"], JITTER_KEYS)
    out = {**augment, "jitter": dict(augment["jitter"])}
    lo, hi = (float(v) for v in out["scale"])
    if not 0 < lo <= hi:
        raise InputError(f"augment.scale: need 0 < lo <= hi, got {out['scale']}")
    if out["crop"] is not None and (len(out["crop"]) != 2 or min(out["crop"]) < 1):
        raise InputError(f"augment.crop: need [h, w] >= 1, got {out['crop']}")
    return out


def strong_config(strong: Mapping[str, Any]) -> dict[str, Any]:
    """The strong view's slice (`self_training.strong`), checked."""
    check_keys("strong", strong, STRONG_KEYS)
    return dict(strong)


@dataclass(frozen=True)
class Geometry:
    """Resize to `size` (h, w), crop `crop` (h, w) at (top, left) padding past the border, then flip."""

    size: tuple[int, int]
    top: int
    left: int
    crop: tuple[int, int]
    flip: bool


def _resize(array: np.ndarray, size: tuple[int, int], nearest: bool) -> np.ndarray:
    if array.shape[:2] == tuple(size):
        return array
    img = Image.fromarray(array)
    return np.asarray(img.resize((size[1], size[0]), Image.NEAREST if nearest else Image.BILINEAR))


def _crop(array: np.ndarray, top: int, left: int, crop: tuple[int, int], fill: int | float) -> np.ndarray:
    ch, cw = crop
    h, w = array.shape[:2]
    if top == 0 and left == 0 and (h, w) == (ch, cw):
        return array
    out = np.full((ch, cw) + array.shape[2:], fill, dtype=array.dtype)
    part = array[top:top + ch, left:left + cw]
    out[:part.shape[0], :part.shape[1]] = part
    return out


def sample_geometry(rng: np.random.Generator, label: np.ndarray, augment: Mapping[str, Any]) -> Geometry:
    """Draw scale, crop position (re-drawn while the label crop holds a single value) and flip."""
    h, w = label.shape[:2]
    lo, hi = (float(v) for v in augment["scale"])
    s = float(rng.uniform(lo, hi)) if hi > lo else lo
    size = (max(1, int(round(h * s))), max(1, int(round(w * s))))
    crop = tuple(int(v) for v in augment["crop"]) if augment["crop"] is not None else size
    resized = _resize(label, size, nearest=True)
    top = left = 0
    for _ in range(max(1, int(augment["crop_retries"]))):
        top = int(rng.integers(0, max(size[0] - crop[0], 0) + 1))
        left = int(rng.integers(0, max(size[1] - crop[1], 0) + 1))
        if np.unique(_crop(resized, top, left, crop, IGNORE_INDEX)).size > 1:
            break
    flip = bool(augment["flip"]) and bool(rng.random() < 0.5)
    return Geometry(size=size, top=top, left=left, crop=crop, flip=flip)


def apply_geometry(array: np.ndarray, geom: Geometry, kind: str) -> np.ndarray:
    """kind "image" (bilinear, pad 0), "label" (nearest, pad 255) or "weight" (nearest, pad 0)."""
    if kind not in ("image", "label", "weight"):
        raise ValueError(f"unknown kind {kind!r}")
    out = _resize(array, geom.size, nearest=kind != "image")
    out = _crop(out, geom.top, geom.left, geom.crop, IGNORE_INDEX if kind == "label" else 0)
    if geom.flip:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def color_jitter(image: np.ndarray, rng: np.random.Generator, jitter: Mapping[str, float]) -> np.ndarray:
    """Hue, brightness, saturation, contrast (the original's order); factors U(1-x, 1+x), hue U(-x, x)."""
    img = Image.fromarray(image)
    hue = float(jitter["hue"])
    if hue > 0:
        img = TF.adjust_hue(img, float(rng.uniform(-min(hue, 0.5), min(hue, 0.5))))
    for key, fn in (("brightness", TF.adjust_brightness), ("saturation", TF.adjust_saturation),
                    ("contrast", TF.adjust_contrast)):
        x = float(jitter[key])
        if x > 0:
            img = fn(img, float(rng.uniform(max(0.0, 1.0 - x), 1.0 + x)))
    return np.asarray(img)


# RandAugment (FixMatch's RandAugmentMC pool as the original uses it); v in [1, m), PARAMETER_MAX = 10
_PARAMETER_MAX = 10


def _enhance(cls: type) -> Any:
    return lambda img, v: cls(img).enhance(0.05 + 0.9 * v / _PARAMETER_MAX)


RAND_AUGMENT_OPS: dict[str, Any] = {
    "AutoContrast": lambda img, v: ImageOps.autocontrast(img),
    "Brightness": _enhance(ImageEnhance.Brightness),
    "Color": _enhance(ImageEnhance.Color),
    "Contrast": _enhance(ImageEnhance.Contrast),
    "Equalize": lambda img, v: ImageOps.equalize(img),
    "Identity": lambda img, v: img,
    "Posterize": lambda img, v: ImageOps.posterize(img, 4 + int(v * 4 / _PARAMETER_MAX)),
    "Sharpness": _enhance(ImageEnhance.Sharpness),
    "Solarize": lambda img, v: ImageOps.solarize(img, 256 - int(v * 256 / _PARAMETER_MAX)),
}


def rand_augment(image: np.ndarray, rng: np.random.Generator, ops: int, magnitude: int) -> np.ndarray:
    """`ops` ops drawn with replacement; each applied with p=0.5 at magnitude v = randint(1, magnitude) (exclusive)."""
    names = list(RAND_AUGMENT_OPS)
    img = Image.fromarray(image)
    for _ in range(int(ops)):
        name = names[int(rng.integers(0, len(names)))]
        v = int(rng.integers(1, max(int(magnitude), 2)))
        if rng.random() < 0.5:
            img = RAND_AUGMENT_OPS[name](img, v)
    return np.asarray(img.convert("RGB"))


def cutout_keep_mask(rng: np.random.Generator, size: tuple[int, int], side: int) -> np.ndarray:
    """bool [h,w], False inside one side x side square with a uniform centre, clipped to the image."""
    h, w = size
    keep = np.ones((h, w), dtype=bool)
    if side <= 0:
        return keep
    cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
    y0, x0 = cy - side // 2, cx - side // 2
    keep[max(y0, 0):max(min(y0 + side, h), 0), max(x0, 0):max(min(x0 + side, w), 0)] = False
    return keep


def normalize(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 HxWx3 -> float32 [3,H,W], (x/255 - mean) / std."""
    x = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1).div_(255.0)
    m = torch.tensor([float(v) for v in mean]).view(-1, 1, 1)
    s = torch.tensor([float(v) for v in std]).view(-1, 1, 1)
    return (x - m) / s

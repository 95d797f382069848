"""How each domain looks: per-class palettes, object rates and the rendering of a scene to RGB."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from bismap.data.labels import CLASS_NAMES
from bismap.data.synthetic.config import (
    BASE_COLOURS,
    BUILDING,
    PRESETS,
    SIDEWALK,
    SKY,
    SUBURB_RATE_FACTORS,
    TERRAIN,
    VEG,
)


# ----------------------------------------------------------------------------- palettes
def _hue_rotate(rgb: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate colours about the grey axis (a hue rotation that keeps luminance roughly)."""
    a = math.radians(degrees)
    c, s = math.cos(a), math.sin(a)
    k = 1.0 / 3.0
    sq = math.sqrt(k)
    m = np.array([
        [c + (1 - c) * k, k * (1 - c) - sq * s, k * (1 - c) + sq * s],
        [k * (1 - c) + sq * s, c + k * (1 - c), k * (1 - c) - sq * s],
        [k * (1 - c) - sq * s, k * (1 - c) + sq * s, c + k * (1 - c)],
    ], dtype=np.float32)
    return rgb @ m.T


def domain_style(cfg: dict[str, Any]) -> dict[str, Any]:
    """Per-domain palettes and class-rate multipliers, fixed by the seed (shared by all images)."""
    preset = cfg.get("preset", "default")
    # the default keeps its historical stream; another preset draws its own colour shift
    key = [int(cfg["seed"]), 99] if preset == "default" else [int(cfg["seed"]), 99, PRESETS.index(preset)]
    rng = np.random.default_rng(np.random.SeedSequence(key))
    sh = cfg["shift"]
    grey = BASE_COLOURS.mean(axis=1, keepdims=True)
    src = np.clip(grey + (BASE_COLOURS - grey) * sh["saturation"], 0, 255)
    rand = rng.uniform(30, 230, size=BASE_COLOURS.shape).astype(np.float32)
    blend = (1 - sh["palette_blend"]) * BASE_COLOURS + sh["palette_blend"] * rand
    angles = rng.uniform(-sh["hue_rotation"], sh["hue_rotation"], size=len(CLASS_NAMES))
    tgt = np.stack([_hue_rotate(blend[c], angles[c]) for c in range(len(CLASS_NAMES))])
    tgt = np.clip(tgt, 0, 255)
    z = rng.uniform(-1, 1, size=len(cfg["object_rates"]))
    factors = SUBURB_RATE_FACTORS if preset == "suburb" else {}
    rates_src = {k: float(v) * factors.get(k, 1.0) for k, v in cfg["object_rates"].items()}
    label_shift = cfg.get("target_rate_factors", {})
    rates_tgt = {k: v * math.exp(sh["class_frequency"] * zk) * float(label_shift.get(k, 1.0))
                 for (k, v), zk in zip(rates_src.items(), z)}
    return {"source": {"palette": src.astype(np.float32), "rates": rates_src},
            "target": {"palette": tgt.astype(np.float32), "rates": rates_tgt}}



# ----------------------------------------------------------------------------- rendering
def _lowfreq(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    gh, gw = max(2, h // cell + 2), max(2, w // cell + 2)
    g = rng.standard_normal((gh, gw)).astype(np.float32)
    ys = np.linspace(0, gh - 1.001, h)
    xs = np.linspace(0, gw - 1.001, w)
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    a = g[y0][:, x0] * (1 - fx) + g[y0][:, x0 + 1] * fx
    b = g[y0 + 1][:, x0] * (1 - fx) + g[y0 + 1][:, x0 + 1] * fx
    return a * (1 - fy) + b * fy


def _overcast(img: np.ndarray, il: float, rng: np.random.Generator) -> np.ndarray:
    """The suburb target's light: desaturated, cool and vignetted (strength from shift.illumination)."""
    h, w = img.shape[:2]
    grey = img.mean(axis=2, keepdims=True)
    img = grey + (img - grey) * max(0.0, 1.0 - 0.8 * il * rng.uniform(0.8, 1.2))
    img = img * np.array([1 - 0.15 * il, 1.0, 1 + 0.15 * il], np.float32)
    ry = (np.arange(h, dtype=np.float32)[:, None] / h - 0.5) * 2
    rx = (np.arange(w, dtype=np.float32)[None, :] / w - 0.5) * 2
    return img * (1 - 0.4 * il * (ry ** 2 + rx ** 2) / 2)[..., None]


def render(rng: np.random.Generator, label: np.ndarray, image: np.ndarray, cfg: dict[str, Any],
           target: bool, horizon: float) -> np.ndarray:
    """Textures, lighting, blur and noise of the domain -> uint8 RGB."""
    from PIL import Image, ImageFilter

    h, w = label.shape
    sh = cfg["shift"]
    t = sh["texture"] if target else 0.0
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]
    hf = rng.standard_normal((h, w)).astype(np.float32)
    lf = _lowfreq(rng, h, w, int(8 * (1 + t)))
    gain = np.ones((h, w), np.float32)
    amp_hf = 0.04 * (1 + 2 * t)
    gain += amp_hf * hf
    veg = (label == VEG) | (label == TERRAIN)
    gain[veg] += (0.22 if not target else 0.22 * (1 + t)) * lf[veg]
    bld = label == BUILDING
    if bld.any():
        py = max(3, int(round(6 * (1 + t) * rng.uniform(0.8, 1.2))))
        px = max(3, int(round(7 * (1 - 0.4 * t) * rng.uniform(0.8, 1.2))))
        win = ((yy.astype(int) % py) < py // 2) & ((xx.astype(int) % px) < (px + 1) // 2)
        gain[bld & win] *= 0.55 if not target else 0.75
    side = label == SIDEWALK
    if side.any():
        ty = max(3, int(round(5 * (1 + t))))
        lines = ((yy.astype(int) % ty) == 0) | ((xx.astype(int) % (2 * ty)) == 0)
        gain[side & lines] *= 0.8
    sky = label == SKY
    if sky.any():
        grad = 0.75 + 0.35 * np.clip(yy / max(horizon, 1), 0, 1)
        g = np.broadcast_to(grad, (h, w))
        gain[sky] *= g[sky]
        if target:
            gain[sky] += 0.12 * t * np.clip(lf[sky] - 0.3, 0, None)
    img = image * gain[..., None]
    if target and sh["illumination"] > 0:
        il = sh["illumination"]
        g0 = rng.uniform(1 - il, 1 + il * 0.5)
        slope = rng.uniform(-il, il) * 0.6
        temp = rng.uniform(-il, il) * 0.3
        ramp = g0 * (1 + slope * (xx / w - 0.5))
        img = img * ramp[..., None] * np.array([1 + temp, 1.0, 1 - temp], np.float32)
        if cfg.get("preset") == "suburb":
            img = _overcast(img, il, rng)
    img = np.clip(img, 0, 255).astype(np.uint8)
    if target and sh["blur"] > 0:
        img = np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(radius=float(sh["blur"]))))
    if target and sh["noise"] > 0:
        noisy = img.astype(np.float32) + sh["noise"] * rng.standard_normal(img.shape).astype(np.float32)
        img = np.clip(noisy + 0.5, 0, 255).astype(np.uint8)
    return img


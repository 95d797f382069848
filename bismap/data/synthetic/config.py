"""Settings of the synthetic benchmark (defaults, validation) and the class ids the scenes use."""
from __future__ import annotations

import copy
from typing import Any

import numpy as np

from bismap.io import InputError

DEFAULTS: dict[str, Any] = {
    "preset": "default",
    "seed": 0,
    "height": 128,
    "width": 256,
    "n_source": 300,
    "n_target_train": 300,
    "n_target_val": 100,
    "workers": 2,
    "compress_level": 1,
    "train_cities": ["arnstadt", "brookvale", "corrin"],
    "val_cities": ["dunmore", "elsfeld"],
    "color_jitter": 0.12,
    "small_object_scale": 1.4,
    "object_rates": {
        "car": 3.5, "person": 3.0, "rider": 1.2, "pole": 3.0, "truck": 0.6, "bus": 0.5, "train": 0.15,
        "tree": 2.5, "fence": 0.6, "wall": 0.5, "terrain": 0.7,
    },
    # Target-only multipliers of the object rates: a label shift on top of the appearance shift (the
    # target's class frequencies differ from the source's by these known factors; all 1 = none).
    "target_rate_factors": {
        "car": 1.0, "person": 1.0, "rider": 1.0, "pole": 1.0, "truck": 1.0, "bus": 1.0, "train": 1.0,
        "tree": 1.0, "fence": 1.0, "wall": 1.0, "terrain": 1.0,
    },
    "shift": {
        "palette_blend": 0.35,
        "hue_rotation": 30.0,
        "saturation": 1.3,
        "texture": 0.5,
        "illumination": 0.25,
        "blur": 0.7,
        "noise": 4.0,
        "object_scale": 0.85,
        "class_frequency": 0.4,
        "ego_hood": 0.07,
    },
}

# trainIds
ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEG, TERRAIN, SKY, PERSON, RIDER, CAR, \
    TRUCK, BUS, TRAIN, MOTO, BIKE = range(19)
THINGS = {PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTO, BIKE}
EGO_VEHICLE_ID = 1  # Cityscapes 'ego vehicle' (void)

# "Natural" base colours per class (RGB 0..255); each domain distorts them differently.
BASE_COLOURS = np.array([
    (110, 105, 110), (175, 165, 160), (150, 110, 90), (190, 180, 150), (120, 95, 70),
    (90, 90, 95), (40, 40, 35), (230, 200, 40), (60, 120, 50), (150, 160, 80),
    (120, 170, 225), (180, 60, 70), (70, 90, 170), (160, 40, 40), (200, 200, 210),
    (230, 160, 40), (90, 140, 130), (40, 40, 120), (30, 120, 150),
], dtype=np.float32)

DOMAINS = {"source": 0, "train": 1, "val": 2}

# Scene kinds (`preset`): "default" is the city street of scene.py; "suburb" (suburb.py) is a
# residential street of another kind. Its object rates are the configured ones times these
# factors, so `object_rates` keeps its meaning (relative to the default street) under either preset.
PRESETS = ("default", "suburb")
SUBURB_RATE_FACTORS = {"car": 0.7, "person": 0.5, "rider": 1.3, "pole": 0.7, "truck": 0.7, "bus": 0.6,
                       "train": 1.0, "tree": 1.6, "fence": 1.3, "wall": 1.0, "terrain": 1.0}


# ----------------------------------------------------------------------------- config
def resolve_config(cfg: dict[str, Any] | None) -> dict[str, Any]:
    """Defaults overlaid with `cfg`; unknown keys are an InputError (a typo must not be ignored)."""
    out = copy.deepcopy(DEFAULTS)
    for key, value in (cfg or {}).items():
        if key not in DEFAULTS:
            raise InputError(f"synthetic config: unknown key {key!r}; known: {sorted(DEFAULTS)}")
        if isinstance(DEFAULTS[key], dict):
            if not isinstance(value, dict):
                raise InputError(f"synthetic config: {key} must be a mapping")
            for k, v in value.items():
                if k not in DEFAULTS[key]:
                    raise InputError(f"synthetic config: unknown key {key}.{k}; known: {sorted(DEFAULTS[key])}")
                out[key][k] = float(v)
        else:
            out[key] = value
    for key in ("height", "width", "workers"):
        if int(out[key]) < 1:
            raise InputError(f"synthetic config: {key} must be >= 1, got {out[key]}")
    for key in ("n_source", "n_target_train", "n_target_val"):
        if int(out[key]) < 0:
            raise InputError(f"synthetic config: {key} must be >= 0, got {out[key]}")
    if not (0.0 <= out["shift"]["palette_blend"] <= 1.0):
        raise InputError("synthetic config: shift.palette_blend must lie in [0, 1]")
    if out["preset"] not in PRESETS:
        raise InputError(f"synthetic config: unknown preset {out['preset']!r}; known: {', '.join(PRESETS)}")
    if not out["train_cities"] or not out["val_cities"]:
        raise InputError("synthetic config: train_cities and val_cities must be non-empty lists")
    return out



"""Procedural street scenes with a controllable synthetic-to-real style domain shift.

Both domains share the scene grammar (perspective road, sidewalks, building facades, objects
standing on the ground plane), so shape and context transfer; the per-class colours do not
(palette blend + per-class hue rotation), which is what makes the gap (design.md). Texture,
illumination, blur, noise, object sizes and class frequencies shift too, more mildly.

Config slice `synthetic` (every knob, with defaults in DEFAULTS):
  seed (0)               master seed; image i of domain d uses SeedSequence([seed, d, i]), so
                         output is identical for any number of workers
  height, width (128, 256) image size
  n_source (300)         source images (GTA5 layout)
  n_target_train (300)   target train images (Cityscapes layout, split 'train')
  n_target_val (100)     target val images (split 'val')
  workers (2)            worker processes writing images (1 = in-process)
  compress_level (1)     PNG zlib level (1 = fast; output bytes depend on it)
  train_cities / val_cities  fake city names used in Cityscapes file names
  color_jitter (0.12)    per-instance colour variation inside a domain (things get 2.5x)
  small_object_scale (1.4)  size multiplier for poles, signs, lights, persons, riders, bikes
  object_rates           SOURCE mean count per image (Poisson) of car, person, rider (on a bicycle
                         or motorcycle), pole (with sign/light), truck, bus, train, tree; for
                         fence, wall, terrain: probability per road side
  shift.palette_blend (0.35)  target class colour = (1-b)*base + b*random colour
  shift.hue_rotation (30)     max |per-class hue rotation| in degrees for the target
  shift.saturation (1.3)      source colours are saturated by this factor ("game-like")
  shift.texture (0.5)         target texture change: pattern periods x(1+t), noise amplitude x(1+2t)
  shift.illumination (0.25)   target global gain / gradient / colour-temperature range
  shift.blur (0.7)            target Gaussian blur radius in pixels (0 = none)
  shift.noise (4.0)           target sensor noise std (0..255 scale)
  shift.object_scale (0.85)   target object size multiplier
  shift.class_frequency (0.4) target object rates x exp(cf * z_c), z_c in [-1, 1] fixed per seed
  shift.ego_hood (0.07)       target ego-vehicle hood height (fraction of H; labelled void id 1)
"""
from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np

from bismap.data.labels import CLASS_NAMES, IGNORE_INDEX, TRAINID_TO_ID
from bismap.io import InputError

DEFAULTS: dict[str, Any] = {
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
    if not out["train_cities"] or not out["val_cities"]:
        raise InputError("synthetic config: train_cities and val_cities must be non-empty lists")
    return out


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
    rng = np.random.default_rng(np.random.SeedSequence([int(cfg["seed"]), 99]))
    sh = cfg["shift"]
    grey = BASE_COLOURS.mean(axis=1, keepdims=True)
    src = np.clip(grey + (BASE_COLOURS - grey) * sh["saturation"], 0, 255)
    rand = rng.uniform(30, 230, size=BASE_COLOURS.shape).astype(np.float32)
    blend = (1 - sh["palette_blend"]) * BASE_COLOURS + sh["palette_blend"] * rand
    angles = rng.uniform(-sh["hue_rotation"], sh["hue_rotation"], size=len(CLASS_NAMES))
    tgt = np.stack([_hue_rotate(blend[c], angles[c]) for c in range(len(CLASS_NAMES))])
    tgt = np.clip(tgt, 0, 255)
    z = rng.uniform(-1, 1, size=len(cfg["object_rates"]))
    rates_src = {k: float(v) for k, v in cfg["object_rates"].items()}
    rates_tgt = {k: float(v) * math.exp(sh["class_frequency"] * zk) for (k, v), zk in zip(cfg["object_rates"].items(), z)}
    return {"source": {"palette": src.astype(np.float32), "rates": rates_src},
            "target": {"palette": tgt.astype(np.float32), "rates": rates_tgt}}


# ----------------------------------------------------------------------------- scene
class _Canvas:
    """Label map + instance map; each instance has its own colour (painter's algorithm)."""

    def __init__(self, h: int, w: int) -> None:
        self.h, self.w = h, w
        self.lab = np.full((h, w), IGNORE_INDEX, dtype=np.uint8)
        self.ins = np.zeros((h, w), dtype=np.int32)
        self.colours: list[np.ndarray] = [np.zeros(3, np.float32)]

    def new(self, colour: np.ndarray) -> int:
        self.colours.append(np.asarray(colour, np.float32))
        return len(self.colours) - 1

    def mask(self, m: np.ndarray, cls: int, colour: np.ndarray) -> None:
        i = self.new(colour)
        self.lab[m] = cls
        self.ins[m] = i

    def rect(self, y0: float, y1: float, x0: float, x1: float, cls: int, colour: np.ndarray) -> None:
        ya, yb = max(int(round(y0)), 0), min(int(round(y1)), self.h)
        xa, xb = max(int(round(x0)), 0), min(int(round(x1)), self.w)
        if ya >= yb or xa >= xb:
            return
        i = self.new(colour)
        self.lab[ya:yb, xa:xb] = cls
        self.ins[ya:yb, xa:xb] = i

    def ellipse(self, cy: float, cx: float, ry: float, rx: float, cls: int, colour: np.ndarray) -> None:
        ry, rx = max(ry, 0.6), max(rx, 0.6)
        ya, yb = max(int(cy - ry), 0), min(int(math.ceil(cy + ry)) + 1, self.h)
        xa, xb = max(int(cx - rx), 0), min(int(math.ceil(cx + rx)) + 1, self.w)
        if ya >= yb or xa >= xb:
            return
        yy, xx = np.ogrid[ya:yb, xa:xb]
        m = ((yy + 0.5 - cy) / ry) ** 2 + ((xx + 0.5 - cx) / rx) ** 2 <= 1.0
        if not m.any():
            return
        i = self.new(colour)
        self.lab[ya:yb, xa:xb][m] = cls
        self.ins[ya:yb, xa:xb][m] = i


def _jitter(rng: np.random.Generator, base: np.ndarray, amount: float) -> np.ndarray:
    return np.clip(base * (1 + amount * rng.standard_normal(3)) + 40 * amount * rng.standard_normal(), 0, 255)


def make_scene(rng: np.random.Generator, h: int, w: int, style: dict[str, Any], cfg: dict[str, Any],
               target: bool) -> tuple[np.ndarray, np.ndarray, list[tuple[str, int, float, float]]]:
    """Draw one scene: (trainId label with 255 void, instance-coloured float image, texture info)."""
    pal = style["palette"]
    rates = style["rates"]
    jit = float(cfg["color_jitter"])
    sh = cfg["shift"]
    obj_scale = sh["object_scale"] if target else 1.0
    small = float(cfg["small_object_scale"])

    def col(c: int) -> np.ndarray:
        return _jitter(rng, pal[c], jit * (2.5 if c in THINGS else 1.0))

    cv = _Canvas(h, w)
    yh = h * rng.uniform(0.36, 0.48)          # horizon
    vx = w * rng.uniform(0.38, 0.62)          # vanishing point x
    rw = rng.uniform(0.32, 0.5)               # road half width at the bottom row (fraction of W)
    sw = rng.uniform(0.12, 0.22)              # sidewalk width
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]
    s_row = np.clip((yy - yh) / (h - yh), 1e-3, None)   # depth scale per row (1 at bottom)
    below = yy > yh

    # sky and generic ground
    cv.mask(np.broadcast_to(~below, (h, w)), SKY, col(SKY))
    d = np.abs(xx - vx) / (s_row * w)
    sides = {}
    for side, sign in (("L", -1), ("R", 1)):
        terrain = rng.random() < rates["terrain"]
        tw = rng.uniform(0.08, 0.25) if terrain else 0.0
        sides[side] = (sign, tw)
        half = (xx - vx) * sign > 0
        outer = rw + sw + tw
        cv.mask(below & half & (d >= rw + sw), TERRAIN if terrain else SIDEWALK, col(TERRAIN if terrain else SIDEWALK))
    cv.mask(below & (d < rw + sw), SIDEWALK, col(SIDEWALK))
    cv.mask(below & (d < rw), ROAD, col(ROAD))
    # lane dashes (road label, painted white-ish)
    if rng.random() < 0.8:
        period = rng.uniform(0.12, 0.2)
        dash = below & (d < 0.02) & (np.mod(np.log(s_row + 1e-3) / period, 1.0) < 0.5)
        cv.mask(dash, ROAD, _jitter(rng, np.array([225, 225, 215], np.float32), 0.05))

    # facades per side: blocks along depth with own height and colour; gaps show trees
    for side, (sign, tw) in sides.items():
        outer = rw + sw + tw
        s_col = np.clip((xx[0] - vx) * sign / (outer * w), 0, None)      # depth of each column's ground line
        y_ground = yh + s_col * (h - yh)
        s_edge = 0.04
        while s_edge < 3.0:
            length = rng.uniform(0.15, 0.6) * (1 + s_edge)
            s0, s1 = s_edge, s_edge + length
            s_edge = s1 + (rng.uniform(0.05, 0.3) if rng.random() < 0.35 else 0.0)
            cols_in = (s_col >= s0) & (s_col < s1)
            if not cols_in.any():
                continue
            if rng.random() < 0.15:   # gap filled with a hedge / tree row
                top = yh - s_col * rng.uniform(0.15, 0.5) * h
                cv.mask((yy >= top[None, :]) & (yy < y_ground[None, :]) & cols_in[None, :], VEG, col(VEG))
                continue
            hb = rng.uniform(0.6, 1.8)
            top = yh - s_col * hb * (h - yh) - rng.uniform(2, 8)
            cv.mask((yy >= top[None, :]) & (yy < y_ground[None, :]) & cols_in[None, :], BUILDING, col(BUILDING))
        # wall / fence segment in front of the facade
        for cls, key, hgt in ((WALL, "wall", (0.08, 0.16)), (FENCE, "fence", (0.10, 0.2))):
            if rng.random() < rates[key]:
                s0 = rng.uniform(0.1, 0.8)
                s1 = s0 + rng.uniform(0.4, 1.5)
                cols_in = (s_col >= s0) & (s_col < s1)
                top = y_ground - s_col * rng.uniform(*hgt) * h * 1.6
                cv.mask((yy >= top[None, :]) & (yy < y_ground[None, :]) & cols_in[None, :], cls, col(cls))

    objects: list[tuple[float, str, float, float]] = []   # (ground y, kind, x, scale)

    def place(kind: str, lo: float, hi: float, dmin: float, dmax: float) -> None:
        for _ in range(rng.poisson(rates[kind])):
            s = rng.uniform(lo, hi)
            y = yh + s * (h - yh)
            x = vx + rng.choice([-1, 1]) * rng.uniform(dmin, dmax) * s * w
            objects.append((y, kind, x, s))

    place("car", 0.15, 1.0, 0.0, rw * 0.85)
    place("truck", 0.15, 0.9, 0.1, rw * 0.8)
    place("bus", 0.15, 0.9, 0.1, rw * 0.8)
    place("train", 0.12, 0.6, 0.0, rw * 0.3)
    place("rider", 0.2, 1.0, rw * 0.6, rw * 0.95)
    place("person", 0.15, 1.0, rw + 0.02, rw + sw - 0.02)
    place("pole", 0.12, 1.0, rw + 0.03, rw + sw - 0.03)
    for _ in range(rng.poisson(rates["tree"])):
        sign, tw = sides["L" if rng.random() < 0.5 else "R"]
        s = rng.uniform(0.1, 1.0)
        objects.append((yh + s * (h - yh), "tree", vx + sign * (rw + sw + tw * 0.5 + 0.02) * s * w, s))
    objects.sort(key=lambda o: o[0])

    for y, kind, x, s in objects:
        u = s * w * obj_scale           # pixels per "unit" at this depth
        if kind == "car":
            cw = 0.2 * u * rng.uniform(0.85, 1.15)
            ch = cw * rng.uniform(0.55, 0.7)
            c = col(CAR)
            cv.rect(y - ch * 0.6, y - ch * 0.08, x - cw / 2, x + cw / 2, CAR, c)
            cv.rect(y - ch, y - ch * 0.55, x - cw * 0.35, x + cw * 0.35, CAR, np.clip(c * 0.55 + 40, 0, 255))
            for wx in (x - cw * 0.32, x + cw * 0.32):
                cv.ellipse(y - ch * 0.1, wx, ch * 0.12, cw * 0.09, CAR, np.array([25, 25, 25], np.float32))
        elif kind in ("truck", "bus", "train"):
            cls = {"truck": TRUCK, "bus": BUS, "train": TRAIN}[kind]
            vw = {"truck": 0.3, "bus": 0.34, "train": 0.5}[kind] * u * rng.uniform(0.9, 1.1)
            vh = vw * {"truck": 0.85, "bus": 0.8, "train": 0.55}[kind]
            c = col(cls)
            if kind == "truck":
                cv.rect(y - vh, y - vh * 0.1, x - vw / 2, x + vw * 0.2, cls, c)
                cv.rect(y - vh * 0.6, y - vh * 0.1, x + vw * 0.22, x + vw / 2, cls, np.clip(c * 0.7, 0, 255))
            else:
                cv.rect(y - vh, y - vh * 0.05, x - vw / 2, x + vw / 2, cls, c)
                n_win = 4 if kind == "bus" else 6
                for k in range(n_win):
                    x0 = x - vw / 2 + vw * (k + 0.15) / n_win
                    cv.rect(y - vh * 0.85, y - vh * 0.55, x0, x0 + vw * 0.7 / n_win, cls, np.clip(c * 0.4 + 20, 0, 255))
            for wx in (x - vw * 0.33, x + vw * 0.33):
                cv.ellipse(y - vh * 0.08, wx, vh * 0.1, vw * 0.07, cls, np.array([25, 25, 25], np.float32))
        elif kind == "person":
            ph = 0.2 * u * small * rng.uniform(0.85, 1.15)
            pw = ph * 0.28
            c = col(PERSON)
            cv.rect(y - ph * 0.45, y, x - pw * 0.4, x + pw * 0.4, PERSON, np.clip(c * 0.6, 0, 255))   # legs
            cv.rect(y - ph * 0.82, y - ph * 0.42, x - pw / 2, x + pw / 2, PERSON, c)                  # torso
            cv.ellipse(y - ph * 0.9, x, ph * 0.1, pw * 0.35, PERSON, np.array([200, 160, 130], np.float32))
        elif kind == "rider":
            moto = rng.random() < 0.45
            bcls = MOTO if moto else BIKE
            bw = 0.2 * u * small * rng.uniform(0.9, 1.1) * (1.15 if moto else 1.0)
            r = bw * (0.24 if moto else 0.22)
            bc = col(bcls)
            for wx in (x - bw / 2 + r, x + bw / 2 - r):
                cv.ellipse(y - r, wx, r, r, bcls, bc)
            if moto:
                cv.rect(y - 2.4 * r, y - 0.8 * r, x - bw * 0.3, x + bw * 0.3, MOTO, bc)
            else:
                cv.rect(y - 1.6 * r, y - 1.1 * r, x - bw * 0.3, x + bw * 0.3, BIKE, bc)
            rh = bw * 0.95
            rc = col(RIDER)
            cv.rect(y - 1.6 * r - rh * 0.55, y - 1.4 * r, x - rh * 0.13, x + rh * 0.13, RIDER, rc)
            cv.ellipse(y - 1.6 * r - rh * 0.62, x, rh * 0.1, rh * 0.09, RIDER, np.array([200, 160, 130], np.float32))
        elif kind == "pole":
            ph = 0.75 * u * rng.uniform(0.8, 1.2)
            pw = max(1.0, 0.018 * u * small)
            cv.rect(y - ph, y, x - pw / 2, x + pw / 2, POLE, col(POLE))
            r = rng.random()
            if r < 0.6:   # traffic sign on top (square or disc)
                ss = 0.07 * u * small
                if rng.random() < 0.5:
                    cv.rect(y - ph - ss * 0.3, y - ph + ss * 0.7, x - ss / 2, x + ss / 2, SIGN, col(SIGN))
                else:
                    cv.ellipse(y - ph + ss * 0.2, x, ss / 2, ss / 2, SIGN, col(SIGN))
            if r > 0.45:  # traffic light box, lamps in three colours (still traffic light)
                lw, lh = 0.045 * u * small, 0.11 * u * small
                ly = y - ph * 0.85
                lx = x + rng.choice([-1, 1]) * (pw / 2 + lw / 2)
                cv.rect(ly, ly + lh, lx - lw / 2, lx + lw / 2, LIGHT, col(LIGHT))
                lamp = [(220, 40, 30), (230, 180, 30), (40, 200, 80)][int(rng.integers(3))]
                k = int(rng.integers(3))
                cv.ellipse(ly + lh * (k + 0.5) / 3, lx, lh / 8, lw / 3, LIGHT, np.array(lamp, np.float32))
        elif kind == "tree":
            th = 0.6 * u * rng.uniform(0.7, 1.3)
            cv.rect(y - th * 0.5, y, x - 0.015 * u - 0.5, x + 0.015 * u + 0.5, VEG, np.clip(pal[VEG] * 0.5 + 30, 0, 255))
            cv.ellipse(y - th * 0.7, x, th * 0.32, th * 0.28, VEG, col(VEG))

    if target and sh["ego_hood"] > 0:
        hh = sh["ego_hood"] * h
        top = h - hh * (1 - 0.5 * ((xx - w / 2) / (w / 2)) ** 2)
        cv.mask(np.broadcast_to(yy >= top, (h, w)), IGNORE_INDEX, np.array([35, 35, 40], np.float32))
    image = np.stack(cv.colours)[cv.ins]
    return cv.lab, image, [("horizon", 0, yh, vx)]


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
    img = np.clip(img, 0, 255).astype(np.uint8)
    if target and sh["blur"] > 0:
        img = np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(radius=float(sh["blur"]))))
    if target and sh["noise"] > 0:
        noisy = img.astype(np.float32) + sh["noise"] * rng.standard_normal(img.shape).astype(np.float32)
        img = np.clip(noisy + 0.5, 0, 255).astype(np.uint8)
    return img


def generate(cfg: dict[str, Any], domain: str, index: int, style: dict[str, Any] | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """One image of `domain` ("source"|"train"|"val"): (uint8 RGB [H,W,3], uint8 trainIds [H,W], 255 void).

    The RNG depends only on (seed, domain, index): the same image comes out in any worker.
    """
    cfg = resolve_config(cfg)
    style = style or domain_style(cfg)
    target = domain != "source"
    rng = np.random.default_rng(np.random.SeedSequence([int(cfg["seed"]), DOMAINS[domain], int(index)]))
    h, w = int(cfg["height"]), int(cfg["width"])
    label, image, info = make_scene(rng, h, w, style["target" if target else "source"], cfg, target)
    img = render(rng, label, image, cfg, target, info[0][2])
    return img, label


_ID_LUT = np.zeros(256, dtype=np.uint8)
for _t, _i in TRAINID_TO_ID.items():
    _ID_LUT[_t] = _i


def trainids_to_ids(label: np.ndarray, void_id: int = EGO_VEHICLE_ID) -> np.ndarray:
    """Synthetic trainIds -> Cityscapes label ids (the files use ids, like GTA5 and gtFine)."""
    lut = _ID_LUT.copy()
    lut[IGNORE_INDEX] = void_id
    return lut[label]


# ----------------------------------------------------------------------------- writing
def _file_names(cfg: dict[str, Any], domain: str, index: int) -> tuple[str, str, str]:
    """(image relative path, label relative path, name) in GTA5 / Cityscapes layout."""
    if domain == "source":
        stem = f"{index + 1:05d}"
        return f"images/{stem}.png", f"labels/{stem}.png", stem
    cities = cfg["train_cities"] if domain == "train" else cfg["val_cities"]
    city = cities[index % len(cities)]
    seq = index // len(cities)
    prefix = f"{city}_{seq:06d}_{19:06d}"
    return (f"leftImg8bit/{domain}/{city}/{prefix}_leftImg8bit.png",
            f"gtFine/{domain}/{city}/{prefix}_gtFine_labelIds.png", prefix)


def _write_one(task: tuple[dict[str, Any], str, int, str]) -> None:
    from pathlib import Path

    from PIL import Image

    from bismap.data.labels import ID_PNG_PALETTE

    cfg, domain, index, root = task
    img, label = generate(cfg, domain, index)
    ids = trainids_to_ids(label)
    img_rel, lab_rel, _ = _file_names(cfg, domain, index)
    level = int(cfg["compress_level"])
    ip, lp = Path(root) / img_rel, Path(root) / lab_rel
    ip.parent.mkdir(parents=True, exist_ok=True)
    lp.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(ip, format="PNG", compress_level=level)
    lim = Image.frombytes("P", (ids.shape[1], ids.shape[0]), ids.tobytes())
    lim.putpalette(ID_PNG_PALETTE)
    lim.save(lp, format="PNG", compress_level=level)


def _run_tasks(tasks: list[tuple[dict[str, Any], str, int, str]], workers: int) -> None:
    import multiprocessing as mp
    import time

    t0 = time.perf_counter()
    done = 0
    step = max(1, len(tasks) // 10)
    if workers <= 1 or len(tasks) < 2:
        iterator = map(_write_one, tasks)
        for _ in iterator:
            done += 1
            if done % step == 0:
                print(f"synthetic: {done}/{len(tasks)} images ({time.perf_counter() - t0:.1f}s)", flush=True)
        return
    ctx = mp.get_context("spawn" if "fork" not in mp.get_all_start_methods() else "fork")
    with ctx.Pool(workers) as pool:
        for _ in pool.imap_unordered(_write_one, tasks, chunksize=8):
            done += 1
            if done % step == 0:
                print(f"synthetic: {done}/{len(tasks)} images ({time.perf_counter() - t0:.1f}s)", flush=True)


def write_benchmark(source_dir: str, target_dir: str, cfg: dict[str, Any] | None) -> dict[str, Any]:
    """Write the source (GTA5 layout) and target (Cityscapes layout, train + val) folders atomically.

    Returns the resolved config. Each folder also gets `synthetic.json` (resolved config + palettes)
    so a generated benchmark documents itself.
    """
    import json
    from pathlib import Path

    from bismap.io import atomic_dir

    cfg = resolve_config(cfg)
    style = domain_style(cfg)
    meta = {"config": cfg, "class_names": list(CLASS_NAMES),
            "palette_source": style["source"]["palette"].round(1).tolist(),
            "palette_target": style["target"]["palette"].round(1).tolist(),
            "rates_target": style["target"]["rates"]}
    workers = int(cfg["workers"])
    with atomic_dir(source_dir) as src_tmp, atomic_dir(target_dir) as tgt_tmp:
        tasks = [(cfg, "source", i, str(src_tmp)) for i in range(int(cfg["n_source"]))]
        tasks += [(cfg, "train", i, str(tgt_tmp)) for i in range(int(cfg["n_target_train"]))]
        tasks += [(cfg, "val", i, str(tgt_tmp)) for i in range(int(cfg["n_target_val"]))]
        for sub in ("images", "labels"):
            (Path(src_tmp) / sub).mkdir(parents=True, exist_ok=True)
        _run_tasks(tasks, workers)
        for root, role in ((src_tmp, "source (GTA5 layout)"), (tgt_tmp, "target (Cityscapes layout)")):
            (Path(root) / "synthetic.json").write_text(json.dumps({"role": role, **meta}, indent=1) + "\n")
    print(f"synthetic: wrote {cfg['n_source']} source images to {source_dir}, "
          f"{cfg['n_target_train']}+{cfg['n_target_val']} target images to {target_dir}", flush=True)
    return cfg

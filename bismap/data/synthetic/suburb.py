"""The `suburb` preset: a residential street of another kind than the default city street.

What differs in kind from scene.py (not only in knob values):
  * camera: mounted higher and pitched down, so the horizon sits higher (24-34 % of H instead of
    36-48 %): less sky, more ground;
  * road geometry: a narrow two-lane road that bends (its centre drifts sideways with depth), a
    thin footpath, front lawns (terrain) and gardens (vegetation) instead of facades lining the kerb;
  * buildings: detached houses with gabled roofs, set back behind the lawns, with gaps between them;
    a distant tree line on the horizon;
  * objects: estate cars parked along the kerb, street lamps with an arm (sign half-way up, traffic
    light hanging from some arms), conifers and round trees on the lawns, picket fences at the
    footpath and low garden walls before the houses; class rates are the configured `object_rates`
    times config.SUBURB_RATE_FACTORS;
  * lighting (appearance.py): the target is overcast (desaturated, cool, vignetted) rather than the
    default's gain ramp and colour temperature; the per-class colour shift uses its own draw.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from bismap.data.labels import IGNORE_INDEX
from bismap.data.synthetic.config import (
    BUILDING,
    CAR,
    FENCE,
    LIGHT,
    POLE,
    ROAD,
    SIDEWALK,
    SIGN,
    SKY,
    TERRAIN,
    THINGS,
    VEG,
    WALL,
)
from bismap.data.synthetic.scene import _Canvas, _jitter, paint_object

Colour = Callable[[int], np.ndarray]


def _layout(rng: np.random.Generator, h: int, w: int) -> dict[str, Any]:
    """Camera and road geometry of one image (fractions of W at the bottom row unless noted)."""
    return {"yh": h * rng.uniform(0.24, 0.34),      # horizon row: higher camera looking down
            "vx": w * rng.uniform(0.42, 0.58),      # vanishing point x
            "curve": rng.uniform(-0.35, 0.35),      # road centre shift at the horizon (fraction of W)
            "rw": rng.uniform(0.2, 0.3),            # road half width
            "sw": rng.uniform(0.04, 0.08),          # footpath width
            "lawn": [rng.uniform(0.2, 0.45), rng.uniform(0.2, 0.45)]}   # lawn depth, left / right


def _ground(cv: _Canvas, rng: np.random.Generator, geo: dict[str, Any], rates: dict[str, float], col: Colour
            ) -> tuple[np.ndarray, np.ndarray]:
    """Sky, tree line, gardens, lawns, footpaths, road and its centre line; returns (row depth, centre x)."""
    h, w, yh = cv.h, cv.w, geo["yh"]
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]
    s_row = np.clip((yy - yh) / (h - yh), 1e-3, None)
    cx = geo["vx"] + geo["curve"] * w * (1 - np.clip(s_row, 0, 1)) ** 2
    below = yy > yh
    cv.mask(np.broadcast_to(~below, (h, w)), SKY, col(SKY))
    line = yh - h * (0.02 + 0.05 * (1 + np.sin(xx[0] / w * rng.uniform(8, 16) + rng.uniform(0, 6))) / 2)
    cv.mask((yy >= line[None, :]) & ~below, VEG, col(VEG))                 # distant tree line
    cv.mask(np.broadcast_to(below, (h, w)), VEG, col(VEG))                # gardens behind the houses
    d = (xx - cx) / (s_row * w)
    rw, sw = geo["rw"], geo["sw"]
    for k, sign in enumerate((-1, 1)):
        side = below & (d * sign > 0) & (np.abs(d) < rw + sw + geo["lawn"][k])
        cls = TERRAIN if rng.random() < min(1.0, rates["terrain"] + 0.2) else SIDEWALK   # lawn or paved forecourt
        cv.mask(side, cls, col(cls))
    cv.mask(below & (np.abs(d) < rw + sw), SIDEWALK, col(SIDEWALK))
    cv.mask(below & (np.abs(d) < rw), ROAD, col(ROAD))
    if rng.random() < 0.6:   # solid yellowish centre line (road label)
        cv.mask(below & (np.abs(d) < 0.012), ROAD, _jitter(rng, np.array([220, 200, 120], np.float32), 0.05))
    return s_row[:, 0], cx[:, 0]


def _band(cv: _Canvas, s_row: np.ndarray, cx: np.ndarray, sign: int, offset: float, s0: float, s1: float,
          height: float, thick: float, cls: int, colour: np.ndarray) -> None:
    """A fence or wall along the road at lateral `offset`, between depths s0 and s1, one column run per row."""
    h, w = cv.h, cv.w
    m = np.zeros((h, w), dtype=bool)
    for y in range(h):
        s = float(s_row[y])
        if not (s0 <= s < s1):
            continue
        x = cx[y] + sign * offset * s * w
        half = max(0.5, thick * s * w / 2)
        xa, xb = max(int(round(x - half)), 0), min(int(round(x + half)) + 1, w)
        ya = max(int(round(y - height * s * w)), 0)
        if xa < xb:   # (a negative xb would wrap around)
            m[ya:y + 1, xa:xb] = True
    if m.any():
        cv.mask(m, cls, colour)


def _triangle(cv: _Canvas, apex_y: float, base_y: float, x: float, half_w: float, cls: int, colour: np.ndarray) -> None:
    """A filled isosceles triangle (roofs, conifers)."""
    h, w = cv.h, cv.w
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]
    frac = (yy + 0.5 - apex_y) / max(base_y - apex_y, 1e-3)
    m = (frac >= 0) & (frac <= 1) & (np.abs(xx + 0.5 - x) <= frac * half_w + 0.5)
    if m.any():
        cv.mask(m, cls, colour)


def _house(cv: _Canvas, rng: np.random.Generator, y: float, x: float, u: float, col: Colour) -> None:
    """A detached house: walls, gabled roof, darker windows and door (all building)."""
    hw = 0.42 * u * rng.uniform(0.85, 1.2)
    hh = hw * rng.uniform(0.45, 0.65)
    wall = col(BUILDING)
    cv.rect(y - hh, y, x - hw / 2, x + hw / 2, BUILDING, wall)
    roof = np.clip(wall * rng.uniform(0.45, 0.7) + rng.uniform(-20, 20, 3), 0, 255)
    _triangle(cv, y - hh - hw * rng.uniform(0.25, 0.4), y - hh + 0.5, x, hw * 0.58, BUILDING, roof)
    dark = np.clip(wall * 0.45, 0, 255)
    for fx in (-0.3, 0.3):
        cv.rect(y - hh * 0.75, y - hh * 0.45, x + fx * hw - hw * 0.09, x + fx * hw + hw * 0.09, BUILDING, dark)
    cv.rect(y - hh * 0.55, y, x - hw * 0.06, x + hw * 0.06, BUILDING, np.clip(wall * 0.6, 0, 255))


def _estate_car(cv: _Canvas, rng: np.random.Generator, y: float, x: float, u: float, col: Colour) -> None:
    """A long estate car seen from the side-rear: low body, roof set back, large wheels."""
    cw = 0.24 * u * rng.uniform(0.85, 1.15)
    ch = cw * rng.uniform(0.42, 0.52)
    c = col(CAR)
    back = rng.choice([-1, 1])
    cv.rect(y - ch * 0.6, y - ch * 0.12, x - cw / 2, x + cw / 2, CAR, c)
    cv.rect(y - ch, y - ch * 0.55, x - cw * 0.4 + back * cw * 0.08, x + cw * 0.4 + back * cw * 0.08, CAR,
            np.clip(c * 0.5 + 50, 0, 255))
    for wx in (x - cw * 0.34, x + cw * 0.34):
        cv.ellipse(y - ch * 0.14, wx, ch * 0.16, ch * 0.16, CAR, np.array([20, 20, 22], np.float32))


def _lamp(cv: _Canvas, rng: np.random.Generator, y: float, x: float, u: float, small: float, col: Colour) -> None:
    """A street lamp: pole with an arm over the road, a sign half-way up, sometimes a hanging traffic light."""
    ph = 0.8 * u * rng.uniform(0.85, 1.15)
    pw = max(1.0, 0.016 * u * small)
    towards = rng.choice([-1, 1])
    c = col(POLE)
    cv.rect(y - ph, y, x - pw / 2, x + pw / 2, POLE, c)
    arm = 0.18 * u
    cv.rect(y - ph, y - ph + pw, min(x, x + towards * arm), max(x, x + towards * arm), POLE, c)
    if rng.random() < 0.6:
        ss = 0.08 * u * small
        _triangle(cv, y - ph * 0.55 - ss, y - ph * 0.55, x, ss * 0.6, SIGN, col(SIGN))   # triangular warning sign
    if rng.random() < 0.6:
        lw, lh = 0.05 * u * small, 0.13 * u * small
        lx = x + towards * arm
        cv.rect(y - ph + pw, y - ph + pw + lh, lx - lw / 2, lx + lw / 2, LIGHT, col(LIGHT))


def _tree(cv: _Canvas, rng: np.random.Generator, y: float, x: float, u: float, col: Colour, pal: np.ndarray) -> None:
    """A conifer (stacked triangles) or a round tree; both vegetation."""
    th = 0.55 * u * rng.uniform(0.7, 1.3)
    cv.rect(y - th * 0.25, y, x - 0.012 * u - 0.5, x + 0.012 * u + 0.5, VEG, np.clip(pal[VEG] * 0.45 + 25, 0, 255))
    c = col(VEG)
    if rng.random() < 0.55:
        for k in range(3):
            _triangle(cv, y - th * (1.0 - 0.22 * k), y - th * (0.55 - 0.2 * k), x, th * (0.16 + 0.06 * k), VEG, c)
    else:
        cv.ellipse(y - th * 0.6, x, th * 0.3, th * 0.3, VEG, c)


def _objects(rng: np.random.Generator, geo: dict[str, Any], rates: dict[str, float], h: int, w: int
             ) -> list[tuple[float, str, float, float]]:
    """(ground y, kind, x, depth scale) of every object, nearest last."""
    yh, rw, sw = geo["yh"], geo["rw"], geo["sw"]
    out: list[tuple[float, str, float, float]] = []

    def add(kind: str, s: float, lateral: float) -> None:
        cx = geo["vx"] + geo["curve"] * w * (1 - s) ** 2
        out.append((yh + s * (h - yh), kind, cx + lateral * s * w, s))

    for k, sign in enumerate((-1, 1)):      # houses, back from the lawn, with gaps
        s = rng.uniform(0.05, 0.12)
        while s < 1.6:
            if rng.random() < 0.8:
                add("house", s, sign * (rw + sw + geo["lawn"][k] + 0.25))
            s *= rng.uniform(1.5, 2.1)
    spans = {"car": (0.15, 1.0, rw * 0.55, rw * 0.9), "truck": (0.15, 0.9, 0.05, rw * 0.6),
             "bus": (0.15, 0.9, 0.05, rw * 0.6), "train": (0.12, 0.6, 0.0, rw * 0.15),
             "rider": (0.2, 1.0, rw * 0.4, rw * 0.85), "person": (0.15, 1.0, rw + 0.005, rw + sw + 0.1),
             "pole": (0.12, 1.0, rw + 0.01, rw + sw)}
    for kind, (lo, hi, dmin, dmax) in spans.items():
        for _ in range(rng.poisson(rates[kind])):
            add(kind, rng.uniform(lo, hi), rng.choice([-1, 1]) * rng.uniform(dmin, dmax))
    for _ in range(rng.poisson(rates["tree"])):
        k = int(rng.random() < 0.5)
        add("tree", rng.uniform(0.08, 1.0), (2 * k - 1) * (rw + sw + rng.uniform(0.05, 0.9) * geo["lawn"][k]))
    out.sort(key=lambda o: o[0])
    return out


def make_suburb_scene(rng: np.random.Generator, h: int, w: int, style: dict[str, Any], cfg: dict[str, Any],
                      target: bool) -> tuple[np.ndarray, np.ndarray, list[tuple[str, int, float, float]]]:
    """Draw one suburban scene: (trainId label with 255 void, instance-coloured float image, texture info)."""
    pal, rates = style["palette"], style["rates"]
    jit, sh = float(cfg["color_jitter"]), cfg["shift"]
    obj_scale = sh["object_scale"] if target else 1.0
    small = float(cfg["small_object_scale"])

    def col(c: int) -> np.ndarray:
        return _jitter(rng, pal[c], jit * (2.5 if c in THINGS else 1.0))

    cv = _Canvas(h, w)
    geo = _layout(rng, h, w)
    s_row, cx = _ground(cv, rng, geo, rates, col)
    objects = _objects(rng, geo, rates, h, w)
    for y, _kind, x, s in [o for o in objects if o[1] == "house"]:
        _house(cv, rng, y, x, s * w * obj_scale, col)
    for k, sign in enumerate((-1, 1)):      # picket fence at the footpath, low wall before the houses
        if rng.random() < rates["fence"]:
            s0 = rng.uniform(0.05, 0.5)
            _band(cv, s_row, cx, sign, geo["rw"] + geo["sw"] + 0.01, s0, s0 + rng.uniform(0.3, 1.2), 0.05, 0.012,
                  FENCE, col(FENCE))
        if rng.random() < rates["wall"]:
            s0 = rng.uniform(0.05, 0.6)
            _band(cv, s_row, cx, sign, geo["rw"] + geo["sw"] + geo["lawn"][k] + 0.02, s0, s0 + rng.uniform(0.2, 0.7),
                  0.035, 0.015, WALL, col(WALL))
    for y, kind, x, s in objects:
        u = s * w * obj_scale
        if kind == "car":
            _estate_car(cv, rng, y, x, u, col)
        elif kind == "pole":
            _lamp(cv, rng, y, x, u, small, col)
        elif kind == "tree":
            _tree(cv, rng, y, x, u, col, pal)
        elif kind != "house":
            paint_object(cv, rng, kind, y, x, u, small, col, pal)
    if target and sh["ego_hood"] > 0:
        yy = np.arange(h, dtype=np.float32)[:, None]
        xx = np.arange(w, dtype=np.float32)[None, :]
        top = h - sh["ego_hood"] * h * (1 - 0.5 * ((xx - w / 2) / (w / 2)) ** 2)
        cv.mask(np.broadcast_to(yy >= top, (h, w)), IGNORE_INDEX, np.array([35, 35, 40], np.float32))
    return cv.lab, np.stack(cv.colours)[cv.ins], [("horizon", 0, geo["yh"], geo["vx"])]

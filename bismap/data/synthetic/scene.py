"""The scene layout both domains share: perspective road, sidewalks, facades, objects on the ground."""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from bismap.data.labels import IGNORE_INDEX
from bismap.data.synthetic.config import (
    BIKE,
    BUILDING,
    BUS,
    CAR,
    FENCE,
    LIGHT,
    MOTO,
    PERSON,
    POLE,
    RIDER,
    ROAD,
    SIDEWALK,
    SIGN,
    SKY,
    TERRAIN,
    THINGS,
    TRAIN,
    TRUCK,
    VEG,
    WALL,
)


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
    """Draw one scene: (trainId label with 255 void, instance-coloured float image, texture info).

    Long because the order of its random draws fixes the default preset's bytes (pinned by a test):
    splitting it must keep every draw in place.
    """
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
    for _side, (sign, tw) in sides.items():
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
        paint_object(cv, rng, kind, y, x, s * w * obj_scale, small, col, pal)

    if target and sh["ego_hood"] > 0:
        hh = sh["ego_hood"] * h
        top = h - hh * (1 - 0.5 * ((xx - w / 2) / (w / 2)) ** 2)
        cv.mask(np.broadcast_to(yy >= top, (h, w)), IGNORE_INDEX, np.array([35, 35, 40], np.float32))
    image = np.stack(cv.colours)[cv.ins]
    return cv.lab, image, [("horizon", 0, yh, vx)]


def _paint_car(cv: _Canvas, rng: np.random.Generator, kind: str, y: float, x: float, u: float,
               small: float, col: Callable[[int], np.ndarray], pal: np.ndarray) -> None:
    """A car: body, cabin, two wheels."""
    cw = 0.2 * u * rng.uniform(0.85, 1.15)
    ch = cw * rng.uniform(0.55, 0.7)
    c = col(CAR)
    cv.rect(y - ch * 0.6, y - ch * 0.08, x - cw / 2, x + cw / 2, CAR, c)
    cv.rect(y - ch, y - ch * 0.55, x - cw * 0.35, x + cw * 0.35, CAR, np.clip(c * 0.55 + 40, 0, 255))
    for wx in (x - cw * 0.32, x + cw * 0.32):
        cv.ellipse(y - ch * 0.1, wx, ch * 0.12, cw * 0.09, CAR, np.array([25, 25, 25], np.float32))


def _paint_vehicle(cv: _Canvas, rng: np.random.Generator, kind: str, y: float, x: float, u: float,
                   small: float, col: Callable[[int], np.ndarray], pal: np.ndarray) -> None:
    """Truck (cab + box), bus or train (windows), two wheels."""
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


def _paint_person(cv: _Canvas, rng: np.random.Generator, kind: str, y: float, x: float, u: float,
                  small: float, col: Callable[[int], np.ndarray], pal: np.ndarray) -> None:
    """A person: legs, torso, head."""
    ph = 0.2 * u * small * rng.uniform(0.85, 1.15)
    pw = ph * 0.28
    c = col(PERSON)
    cv.rect(y - ph * 0.45, y, x - pw * 0.4, x + pw * 0.4, PERSON, np.clip(c * 0.6, 0, 255))   # legs
    cv.rect(y - ph * 0.82, y - ph * 0.42, x - pw / 2, x + pw / 2, PERSON, c)                  # torso
    cv.ellipse(y - ph * 0.9, x, ph * 0.1, pw * 0.35, PERSON, np.array([200, 160, 130], np.float32))


def _paint_rider(cv: _Canvas, rng: np.random.Generator, kind: str, y: float, x: float, u: float,
                 small: float, col: Callable[[int], np.ndarray], pal: np.ndarray) -> None:
    """A rider on a bicycle or motorcycle."""
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


def _paint_pole(cv: _Canvas, rng: np.random.Generator, kind: str, y: float, x: float, u: float,
                small: float, col: Callable[[int], np.ndarray], pal: np.ndarray) -> None:
    """A pole, with a traffic sign on top and/or a traffic light box."""
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


def _paint_tree(cv: _Canvas, rng: np.random.Generator, kind: str, y: float, x: float, u: float,
                small: float, col: Callable[[int], np.ndarray], pal: np.ndarray) -> None:
    """A tree: trunk and round crown (vegetation)."""
    th = 0.6 * u * rng.uniform(0.7, 1.3)
    cv.rect(y - th * 0.5, y, x - 0.015 * u - 0.5, x + 0.015 * u + 0.5, VEG, np.clip(pal[VEG] * 0.5 + 30, 0, 255))
    cv.ellipse(y - th * 0.7, x, th * 0.32, th * 0.28, VEG, col(VEG))


_PAINTERS = {"car": _paint_car, "truck": _paint_vehicle, "bus": _paint_vehicle, "train": _paint_vehicle,
             "person": _paint_person, "rider": _paint_rider, "pole": _paint_pole, "tree": _paint_tree}


def paint_object(cv: _Canvas, rng: np.random.Generator, kind: str, y: float, x: float, u: float, small: float,
                 col: Callable[[int], np.ndarray], pal: np.ndarray) -> None:
    """Draw one object standing on ground row `y` at column `x`; `u` = pixels per unit at its depth."""
    _PAINTERS[kind](cv, rng, kind, y, x, u, small, col, pal)

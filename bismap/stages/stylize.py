"""Stage: stylize source images towards the target with Fourier domain adaptation (FDA, Yang & Soatto 2020).

The low-frequency amplitude spectrum carries global colour/illumination style and the phase
carries structure, so swapping only the former restyles an image without moving its edges (the
source labels stay valid).

cfg (the `stylize` slice without `folder`, complete: defaults live in configs/schema.yaml): method
("fda"), beta (the swapped square's half-size is floor(beta*min(H,W)) coefficients, as the original;
0 disables), seed (which target image styles which source image). A beta whose band is 0 coefficients
at an image's size would swap only the mean colour: refused, naming the image and the smallest beta
that gives a band (the paper's 0.01 is a band of 7-10 at 720-1024 rows, of 0 at 96).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from bismap.io import InputError, atomic_dir, check_keys

KEYS = ("method", "beta", "seed")


def fda_band(beta: float, height: int, width: int) -> int:
    """Half-size of the FDA square of swapped low frequencies, as the original: floor(beta * min(H, W))."""
    return int(math.floor(beta * min(height, width)))


def fda_problem(beta: float, height: int, width: int, where: str) -> str | None:
    """A message when `beta` > 0 swaps no frequency band at this image size (only the mean colour)."""
    if beta <= 0 or fda_band(beta, height, width) > 0:
        return None
    need = math.ceil(1e4 / min(height, width)) / 1e4
    return (f"{where}: stylize.beta {beta} gives an FDA band of 0 coefficients at {height}x{width} "
            f"(floor(beta x {min(height, width)})), so only the mean colour would be swapped; set "
            f"stylize.beta >= {need} for a band of 1, or stylize.method: none to switch stylizing off")


def fda_float(source: np.ndarray, target: np.ndarray, beta: float) -> np.ndarray:
    """FDA without clipping: float [H,W,C] with the source phase and the target's low-frequency amplitude."""
    src = np.asarray(source, dtype=np.float64)
    trg = np.asarray(target, dtype=np.float64)
    if src.shape != trg.shape:
        raise ValueError(f"FDA needs equal shapes, got {src.shape} and {trg.shape}")
    h, w = src.shape[:2]
    b = fda_band(beta, h, w)
    if beta <= 0:
        return src.copy()
    fs = np.fft.fftshift(np.fft.fft2(src, axes=(0, 1)), axes=(0, 1))
    ft = np.fft.fftshift(np.fft.fft2(trg, axes=(0, 1)), axes=(0, 1))
    amp, phase = np.abs(fs), np.angle(fs)
    ch, cw = h // 2, w // 2
    y0, y1, x0, x1 = max(ch - b, 0), min(ch + b + 1, h), max(cw - b, 0), min(cw + b + 1, w)
    amp[y0:y1, x0:x1] = np.abs(ft)[y0:y1, x0:x1]
    out = np.fft.ifft2(np.fft.ifftshift(amp * np.exp(1j * phase), axes=(0, 1)), axes=(0, 1))
    return out.real


def fda(source: np.ndarray, target: np.ndarray, beta: float) -> np.ndarray:
    """uint8 FDA result (target resized to the source size first, then clipped to [0, 255])."""
    from bismap.data.image_io import resize_image

    if target.shape[:2] != source.shape[:2]:
        target = resize_image(target, source.shape[:2])
    if beta <= 0:
        return np.asarray(source, dtype=np.uint8).copy()
    return np.clip(np.rint(fda_float(source, target, beta)), 0, 255).astype(np.uint8)


def run(*, source: dict, target: dict, out_dir: str | os.PathLike, cfg: dict[str, Any], threads: int = 1) -> None:
    """Write one stylized PNG per source image, same file name, into out_dir (atomically as a folder)."""
    from PIL import Image

    from bismap.data import open_dataset

    check_keys("stylize", cfg, KEYS)
    beta = float(cfg["beta"])
    if not 0 <= beta <= 0.5:
        raise InputError(f"stylize config: beta must lie in [0, 0.5], got {beta}")
    src = open_dataset({**source, "labels": "none"}) if source.get("labels") is None else open_dataset(source)
    trg = open_dataset({**target, "labels": "none"})
    n = len(src)
    with atomic_dir(out_dir) as tmp:
        for i in range(n):
            rng = np.random.default_rng(np.random.SeedSequence([int(cfg["seed"]), i]))
            j = int(rng.integers(len(trg)))
            image = src.read_image(i)
            problem = fda_problem(beta, image.shape[0], image.shape[1], str(src.entries[i].image))
            if problem:
                raise InputError(problem)
            out = fda(image, trg.read_image(j), beta)
            Image.fromarray(out).save(Path(tmp) / src.files[i], format="PNG")
            if (i + 1) % max(1, n // 10) == 0:
                print(f"stylize: {i + 1}/{n}", flush=True)

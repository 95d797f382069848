"""Image and label files in, as numpy arrays: full decode, one-line errors, exact 16-bit reads.

Pillow happily returns garbage or raises deep inside training for broken files; every reader here
forces a full decode and turns any failure into a one-line InputError naming the file.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from bismap.io import InputError

_DECODE_ERRORS = (OSError, SyntaxError, ValueError, struct.error, Image.DecompressionBombError)


def open_image(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode an image (load() is what detects truncated files)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        im = Image.open(path)
        im.load()
    except _DECODE_ERRORS as e:
        raise InputError(
            f"{path}: unreadable or truncated image ({type(e).__name__}: {e})".replace("\n", " ")) from None
    return im


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(H, W) from the file header only (cheap; used to find GTA5 size mismatches up front)."""
    try:
        with Image.open(path) as im:
            w, h = im.size
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except _DECODE_ERRORS as e:
        raise InputError(f"{path}: unreadable image header ({type(e).__name__})") from None
    return h, w


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """uint8 [H, W, 3] RGB; grey, palette and alpha images are converted."""
    im = open_image(path)
    if im.mode != "RGB":
        if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            raise InputError(f"{path}: expected an 8-bit colour image, got mode {im.mode}")
        im = im.convert("RGB")
    return np.asarray(im, dtype=np.uint8).copy()


def png_bit_depth(path: str | os.PathLike) -> int:
    """Bit depth from the PNG IHDR chunk (Pillow hides it for 16-bit colour images)."""
    try:
        with open(path, "rb") as f:
            head = f.read(33)
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    if len(head) < 33 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise InputError(f"{path}: not a PNG file")
    return head[24]


_LOW_BYTE_RAWMODE = {"RGB;16B": "RGB;16L", "RGBA;16B": "RGBA;16L"}


def read_png16_channel0(path: str | os.PathLike) -> np.ndarray:
    """First channel of a 16-bit PNG as uint16 [H, W] (SYNTHIA labels), with Pillow only.

    Pillow decodes 16-bit colour PNGs to 8 bits by keeping the HIGH byte of each sample, which
    would turn every SYNTHIA class id (< 256) into 0. The zip decoder does the PNG unfiltering
    in C; decoding a second time with the little-endian raw mode makes the unpacker pick the LOW
    bytes, so high*256+low restores the full 16-bit value without FreeImage or OpenCV.
    """
    path = Path(path)
    depth = png_bit_depth(path)
    if depth != 16:
        raise InputError(f"{path}: SYNTHIA label must be a 16-bit PNG, got {depth}-bit")
    im = open_image(path)
    if im.mode.startswith("I"):  # 16-bit greyscale: Pillow keeps all bits
        return np.array(im).astype(np.uint16)
    hi = np.asarray(im)[..., 0].astype(np.uint16)
    try:
        im2 = Image.open(path)
        tile = im2.tile[0]
        raw = _LOW_BYTE_RAWMODE.get(tile.args if isinstance(tile.args, str) else tile.args[0])
        if raw is None:
            raise InputError(f"{path}: unsupported 16-bit PNG layout (mode {im.mode})")
        args = raw if isinstance(tile.args, str) else (raw,) + tuple(tile.args[1:])
        im2.tile = [tile._replace(args=args)]
        im2.load()
    except _DECODE_ERRORS as e:
        raise InputError(f"{path}: unreadable or truncated image ({type(e).__name__})") from None
    lo = np.asarray(im2)[..., 0].astype(np.uint16)
    return (hi << 8) | lo


def resize_image(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Bilinear resize of uint8 [H, W, 3] to size (H, W)."""
    h, w = int(size[0]), int(size[1])
    if image.shape[:2] == (h, w):
        return image
    return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))


def resize_label(label: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resize of a uint8 label map (no invented classes at boundaries)."""
    h, w = int(size[0]), int(size[1])
    if label.shape[:2] == (h, w):
        return label
    return np.asarray(Image.fromarray(label).resize((w, h), Image.NEAREST))

"""Image/label file readers and the folder-backed segmentation dataset they feed.

Pillow happily returns garbage or raises deep inside training for broken files; every reader here
forces a full decode and turns any failure into a one-line InputError naming the file.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from bismap.data.labels import IGNORE_INDEX
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
        raise InputError(f"{path}: unreadable or truncated image ({type(e).__name__}: {e})".replace("\n", " ")) from None
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


@dataclass(frozen=True)
class Entry:
    """One item: the image file, and its label file (None = unlabelled)."""

    name: str
    file: str
    image: Path
    label: Path | None


class SegmentationFolder(Dataset):
    """Dataset over (image, label file) entries; label files are mapped to trainIds by `label_reader`.

    Items: {"image": uint8 [H,W,3], "label": uint8 [H,W] trainIds/255, "name": str, "file": str}.
    A label whose size differs from its image is resized nearest to the image (GTA5 has such pairs),
    then both go to `size` if given.
    """

    def __init__(self, entries: list[Entry], label_reader: Callable[[Path], np.ndarray] | None,
                 size: Sequence[int] | None = None, root: str | os.PathLike | None = None,
                 kind: str = "folder") -> None:
        entries = sorted(entries, key=lambda e: e.name)
        self.entries = entries
        self.label_reader = label_reader
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.root = None if root is None else Path(root)
        self.kind = kind
        self.names: list[str] = [e.name for e in entries]
        self.files: list[str] = [e.file for e in entries]
        self.has_labels: bool = label_reader is not None

    def __len__(self) -> int:
        return len(self.entries)

    def read_image(self, index: int) -> np.ndarray:
        image = read_rgb(self.entries[index].image)
        return image if self.size is None else resize_image(image, self.size)

    def read_label(self, index: int, image_hw: tuple[int, int]) -> np.ndarray:
        entry = self.entries[index]
        if self.label_reader is None or entry.label is None:
            return np.full(image_hw, IGNORE_INDEX, dtype=np.uint8)
        label = self.label_reader(entry.label)
        return resize_label(label, image_hw)

    def __getitem__(self, index: int) -> dict:
        if index < 0:
            index += len(self)
        entry = self.entries[index]
        image = read_rgb(entry.image)
        label = self.read_label(index, image.shape[:2])
        if self.size is not None:
            image = resize_image(image, self.size)
            label = resize_label(label, self.size)
        return {"image": image, "label": label, "name": entry.name, "file": entry.file}


def list_pngs(folder: Path, what: str) -> list[Path]:
    """Sorted *.png in `folder`; a missing or empty folder is an InputError (names the folder)."""
    if not folder.is_dir():
        raise InputError(f"{folder}: {what} folder not found")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png" and not p.name.startswith("."))
    if not files:
        raise InputError(f"{folder}: no .png files in the {what} folder")
    return files


def missing_message(folder: Path, missing: list[str], what: str) -> str:
    shown = ", ".join(missing[:3])
    return f"{folder}: {len(missing)} {what} missing (first: {shown}{', ...' if len(missing) > 3 else ''})"

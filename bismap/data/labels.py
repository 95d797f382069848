"""Label tables (Cityscapes ids, trainIds, SYNTHIA ids), the colour palette and label PNG I/O.

Everything the user sees uses Cityscapes trainIds 0..18 with 255 = ignore, so every dataset's
own id scheme is converted here, at the boundary, with explicit tables (no silent defaults).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from bismap.io import InputError, atomic_path

NUM_CLASSES = 19
IGNORE_INDEX = 255

CLASS_NAMES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)

# cityscapesScripts helpers/labels.py: (name, id, trainId); trainId 255/-1 = ignored in evaluation.
CITYSCAPES_LABELS: tuple[tuple[str, int, int], ...] = (
    ("unlabeled", 0, 255), ("ego vehicle", 1, 255), ("rectification border", 2, 255),
    ("out of roi", 3, 255), ("static", 4, 255), ("dynamic", 5, 255), ("ground", 6, 255),
    ("road", 7, 0), ("sidewalk", 8, 1), ("parking", 9, 255), ("rail track", 10, 255),
    ("building", 11, 2), ("wall", 12, 3), ("fence", 13, 4), ("guard rail", 14, 255),
    ("bridge", 15, 255), ("tunnel", 16, 255), ("pole", 17, 5), ("polegroup", 18, 255),
    ("traffic light", 19, 6), ("traffic sign", 20, 7), ("vegetation", 21, 8), ("terrain", 22, 9),
    ("sky", 23, 10), ("person", 24, 11), ("rider", 25, 12), ("car", 26, 13), ("truck", 27, 14),
    ("bus", 28, 15), ("caravan", 29, 255), ("trailer", 30, 255), ("train", 31, 16),
    ("motorcycle", 32, 17), ("bicycle", 33, 18), ("license plate", -1, 255),
)
CITYSCAPES_ID_TO_TRAINID: dict[int, int] = {i: t for _, i, t in CITYSCAPES_LABELS}
TRAINID_TO_ID: dict[int, int] = {t: i for _, i, t in CITYSCAPES_LABELS if t != IGNORE_INDEX}
# Prediction export: an ignored prediction becomes 'unlabeled' (a void id, FN for the GT class).
VOID_ID = 0

# SYNTHIA-RAND-CITYSCAPES README ids (DAFormer tools/convert_datasets/synthia.py). 16/18/20
# (terrain, truck, train) are in the table but never occur in SYNTHIA; everything else -> 255.
SYNTHIA_ID_TO_TRAINID: dict[int, int] = {
    3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9, 1: 10,
    10: 11, 17: 12, 8: 13, 18: 14, 19: 15, 20: 16, 12: 17, 11: 18,
}

# Pseudo-label / prediction files already hold trainIds: identity on 0..18 and 255.
TRAINID_IDENTITY: dict[int, int] = {**{c: c for c in range(NUM_CLASSES)}, IGNORE_INDEX: IGNORE_INDEX}

PALETTE: np.ndarray = np.array([
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32),
], dtype=np.uint8)


def _lut(table: dict[int, int], size: int, default: int | None) -> np.ndarray:
    """Lookup table; entries not in `table` hold 256 (unknown) unless a default is given."""
    lut = np.full(size, 256 if default is None else default, dtype=np.uint16)
    for k, v in table.items():
        # -1 (license plate) cannot be stored in an unsigned label file; as uint8 it wraps to 255.
        k = k % size if k < 0 else k
        if k < size:
            lut[k] = v
    return lut


def map_ids(array: np.ndarray, table: dict[int, int], *, default: int | None = None,
            source: str = "<array>") -> np.ndarray:
    """Map an integer label array through `table` to uint8 trainIds.

    default=None makes an unmapped value an error (InputError naming `source` and the values),
    so a wrong label format is caught instead of silently becoming 'ignore'.
    """
    arr = np.asarray(array)
    if arr.dtype.kind not in "ui" and not (arr.dtype.kind == "b"):
        raise InputError(f"{source}: label array has non-integer dtype {arr.dtype}")
    if arr.dtype in (np.uint8, np.uint16):
        lut = _lut(table, 256 if arr.dtype == np.uint8 else 65536, default)
        out = lut[arr]
    else:
        vals, inv = np.unique(arr, return_inverse=True)
        mapped = np.array([table.get(int(v), 256 if default is None else default) for v in vals],
                          dtype=np.uint16)
        out = mapped[inv].reshape(arr.shape)
    if default is None and out.size and out.max() > 255:
        bad = np.unique(arr[out > 255])
        shown = ", ".join(str(int(v)) for v in bad[:8])
        raise InputError(f"{source}: unknown label value(s) {shown}" + (" ..." if len(bad) > 8 else ""))
    return out.astype(np.uint8)


def colorize(trainids: np.ndarray) -> np.ndarray:
    """RGB view of a trainId map (ignore = black), for figures."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[:NUM_CLASSES] = PALETTE
    return lut[np.asarray(trainids, dtype=np.uint8)]


def _palette_bytes(colours: dict[int, tuple[int, int, int]]) -> list[int]:
    flat = [0] * 768
    for idx, (r, g, b) in colours.items():
        flat[3 * idx: 3 * idx + 3] = [int(r), int(g), int(b)]
    return flat


TRAINID_PNG_PALETTE = _palette_bytes({c: tuple(PALETTE[c]) for c in range(NUM_CLASSES)})
ID_PNG_PALETTE = _palette_bytes({i: tuple(PALETTE[t]) for _, i, t in CITYSCAPES_LABELS
                                 if t != IGNORE_INDEX and i >= 0})


def save_label_png(path: str | os.PathLike, trainid_array: np.ndarray, *,
                   palette: list[int] | None = None, compress_level: int = 6) -> None:
    """Write a single-channel palette PNG atomically (indices are the label values, colours only for viewing)."""
    arr = np.asarray(trainid_array)
    if arr.ndim != 2:
        raise InputError(f"{path}: label array must be 2-D, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise InputError(f"{path}: label values outside 0..255")
        arr = arr.astype(np.uint8)
    # Build the P image from the raw indices (convert('P') from 'L' would quantise colours).
    im = Image.frombytes("P", (arr.shape[1], arr.shape[0]), np.ascontiguousarray(arr).tobytes())
    im.putpalette(TRAINID_PNG_PALETTE if palette is None else palette)
    with atomic_path(path) as tmp:
        im.save(tmp, format="PNG", compress_level=compress_level)


def read_label_png(path: str | os.PathLike) -> np.ndarray:
    """Read a single-channel label PNG ('L', 'P' or 'I;16') as its raw values (no mapping)."""
    from bismap.data.image_io import open_image

    im = open_image(path)
    if im.format not in ("PNG", None):  # a JPEG renamed .png: lossy, so class ids change along every edge
        raise InputError(f"{path}: a label must be a (lossless) PNG file, this one is {im.format}")
    if im.mode in ("L", "P"):
        return np.array(im, dtype=np.uint8)
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        return np.array(im)
    raise InputError(f"{path}: expected a single-channel label PNG, got mode {im.mode}")


def read_trainid_png(path: str | os.PathLike) -> np.ndarray:
    """Read a trainId label PNG (pseudo labels, predictions): values must be 0..18 or 255."""
    return map_ids(read_label_png(path), TRAINID_IDENTITY, source=str(Path(path)))

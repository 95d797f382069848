"""Cityscapes layout: root/leftImg8bit/<split>/<city>/*_leftImg8bit.png + \
root/gtFine/<split>/<city>/*_gtFine_labelIds.png."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from bismap.data.labels import CITYSCAPES_ID_TO_TRAINID, map_ids, read_label_png
from bismap.data.readers import Entry, missing_message
from bismap.io import InputError

IMAGE_SUFFIX = "_leftImg8bit.png"
GT_SUFFIX = "_gtFine_labelIds.png"
# <city>_<seq>_<frame>: the key the official evaluation matches predictions by.
PREFIX_RE = re.compile(r"^(.+?_\d{6}_\d{6})")


def frame_prefix(file_name: str) -> str | None:
    """'aachen_000000_000019_leftImg8bit.png' -> 'aachen_000000_000019' (None if not Cityscapes-named)."""
    m = PREFIX_RE.match(Path(file_name).name)
    return m.group(1) if m else None


def read_cityscapes_label(path: Path) -> np.ndarray:
    return map_ids(read_label_png(path), CITYSCAPES_ID_TO_TRAINID, source=str(path))


def cityscapes_images(root: Path, split: str) -> list[Path]:
    folder = root / "leftImg8bit" / split
    if not root.is_dir():
        raise InputError(f"{root}: Cityscapes root folder not found")
    if not folder.is_dir():
        raise InputError(f"{folder}: Cityscapes split '{split}' not found")
    # Any case of the suffix (a copy from a case-insensitive disk may say .PNG); hidden files and folders
    # (macOS `._*` resource forks, `.DS_Store`) are not images.
    images = sorted(p for city in folder.iterdir() if city.is_dir() and not city.name.startswith(".")
                    for p in city.iterdir() if p.name.lower().endswith(IMAGE_SUFFIX.lower())
                    and not p.name.startswith(".") and p.is_file())
    if not images:
        raise InputError(f"{folder}: no */*{IMAGE_SUFFIX} files")
    return images


def gt_path(root: Path, split: str, image: Path) -> Path:
    stem = image.name[: -len(IMAGE_SUFFIX)]
    folder = root / "gtFine" / split / image.parent.name
    exact = folder / f"{stem}{GT_SUFFIX}"
    upper = folder / f"{stem}{GT_SUFFIX[:-4]}{image.name[-4:]}"  # the image's own suffix case
    return upper if not exact.is_file() and upper.is_file() else exact


def cityscapes_entries(root: str | Path, split: str, with_labels: bool = True) -> list[Entry]:
    root = Path(root)
    images = cityscapes_images(root, split)
    if not with_labels:
        return [Entry(p.stem, p.name, p, None) for p in images]
    entries = [Entry(p.stem, p.name, p, gt_path(root, split, p)) for p in images]
    missing = [e.label.name for e in entries if not e.label.is_file()]
    if missing:
        raise InputError(missing_message(root / "gtFine" / split, missing, "gtFine label files"))
    return entries

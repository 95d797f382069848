"""GTA5 layout: root/images/*.png and root/labels/*.png holding Cityscapes label ids.

The real GTA5 release has image/label pairs of different sizes and a few files without a partner;
those are reported once, in a single warning at construction, instead of crashing mid-training.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from bismap.data.image_io import image_size
from bismap.data.labels import CITYSCAPES_ID_TO_TRAINID, map_ids, read_label_png
from bismap.data.readers import Entry, list_pngs
from bismap.io import InputError


def read_gta5_label(path: Path) -> np.ndarray:
    """Cityscapes-id label PNG -> trainIds; an id outside the official table is an InputError."""
    return map_ids(read_label_png(path), CITYSCAPES_ID_TO_TRAINID, source=str(path))


def gta5_entries(root: str | Path, with_labels: bool = True, check_sizes: bool = True) -> list[Entry]:
    """Entries for the pairs present in both folders; mismatches summarised in ONE warning."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: GTA5 root folder not found")
    images = list_pngs(root / "images", "GTA5 images")
    if not with_labels:
        return [Entry(p.stem, p.name, p, None) for p in images]
    labels = {p.name: p for p in list_pngs(root / "labels", "GTA5 labels")}
    image_names = {p.name for p in images}
    no_label = [p.name for p in images if p.name not in labels]
    no_image = sorted(n for n in labels if n not in image_names)
    entries = [Entry(p.stem, p.name, p, labels[p.name]) for p in images if p.name in labels]
    if not entries:
        raise InputError(f"{root}: no GTA5 image has a label file of the same name in labels/")
    mismatched: list[str] = []
    if check_sizes:
        for e in entries:
            hi, wi = image_size(e.image)
            hl, wl = image_size(e.label)
            if (hi, wi) != (hl, wl):
                mismatched.append(f"{e.file} (image {hi}x{wi}, label {hl}x{wl})")
    parts = []
    if mismatched:
        parts.append(f"{len(mismatched)} pairs differ in size, labels resized nearest to the image "
                     f"(first: {', '.join(mismatched[:3])})")
    if no_label:
        parts.append(f"{len(no_label)} images without label skipped (first: {', '.join(no_label[:3])})")
    if no_image:
        parts.append(f"{len(no_image)} labels without image skipped (first: {', '.join(no_image[:3])})")
    if parts:
        warnings.warn(f"{root}: GTA5: " + "; ".join(parts), stacklevel=3)
    return entries

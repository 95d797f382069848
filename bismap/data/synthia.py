"""SYNTHIA-RAND-CITYSCAPES layout: root/RGB/*.png and root/GT/LABELS/*.png (16-bit, class id in channel 0)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from bismap.data.image_io import read_png16_channel0
from bismap.data.labels import IGNORE_INDEX, SYNTHIA_ID_TO_TRAINID, map_ids
from bismap.data.readers import Entry, list_pngs, missing_message
from bismap.io import InputError


def read_synthia_label(path: Path) -> np.ndarray:
    """16-bit SYNTHIA label -> trainIds; ids outside the 19-entry table become 255 (the README's void/extra classes)."""
    return map_ids(read_png16_channel0(path), SYNTHIA_ID_TO_TRAINID, default=IGNORE_INDEX, source=str(path))


def synthia_entries(root: str | Path, with_labels: bool = True) -> list[Entry]:
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: SYNTHIA root folder not found")
    images = list_pngs(root / "RGB", "SYNTHIA RGB")
    if not with_labels:
        return [Entry(p.stem, p.name, p, None) for p in images]
    label_dir = root / "GT" / "LABELS"
    labels = {p.name: p for p in list_pngs(label_dir, "SYNTHIA GT/LABELS")}
    missing = [p.name for p in images if p.name not in labels]
    if missing:
        raise InputError(missing_message(label_dir, missing, "labels for RGB images"))
    return [Entry(p.stem, p.name, p, labels[p.name]) for p in images]

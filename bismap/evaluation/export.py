"""Export predictions as full-resolution labelIds PNGs (what the official evaluation / test server accept)."""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from PIL import Image

from bismap.data.cityscapes import frame_prefix
from bismap.data.labels import ID_PNG_PALETTE, NUM_CLASSES, TRAINID_TO_ID, VOID_ID, save_label_png
from bismap.io import InputError

_TRAINID_TO_ID_LUT = np.full(256, VOID_ID, dtype=np.uint8)
for _t, _i in TRAINID_TO_ID.items():
    _TRAINID_TO_ID_LUT[_t] = _i


def trainids_to_labelids(pred: np.ndarray) -> np.ndarray:
    """trainIds -> Cityscapes labelIds; 255 (no prediction) -> 0 'unlabeled' (a void id)."""
    pred = np.asarray(pred)
    if pred.size and (pred.min() < 0 or pred.max() > 255):
        raise ValueError("trainId predictions must lie in 0..255")
    return _TRAINID_TO_ID_LUT[pred.astype(np.uint8)]


def labelids_file_name(image_file: str) -> str:
    """'<city>_<seq>_<frame>_leftImg8bit.png' -> '<city>_<seq>_<frame>_pred_labelIds.png'."""
    prefix = frame_prefix(image_file)
    if prefix is None:
        raise InputError(f"{image_file}: not a Cityscapes file name (<city>_<seq>_<frame>_...)")
    return f"{prefix}_pred_labelIds.png"


def export_labelids(pred_trainids: np.ndarray, out_path: str | os.PathLike,
                    size: Sequence[int] | None = (1024, 2048)) -> None:
    """Write one prediction as a single-channel labelIds PNG, resized nearest to size (H, W) (None = as is)."""
    pred = np.asarray(pred_trainids)
    if pred.ndim != 2:
        raise ValueError(f"prediction must be 2-D, got shape {pred.shape}")
    if pred.size and pred.max() >= NUM_CLASSES and pred.max() != 255:
        raise ValueError("trainId predictions must be 0..18 or 255")
    if size is not None and tuple(pred.shape) != (int(size[0]), int(size[1])):
        pred = np.asarray(Image.fromarray(pred.astype(np.uint8)).resize((int(size[1]), int(size[0])), Image.NEAREST))
    save_label_png(out_path, trainids_to_labelids(pred), palette=ID_PNG_PALETTE)

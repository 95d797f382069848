"""Evaluate a folder of predictions against Cityscapes-layout GT, like evalPixelLevelSemanticLabeling.

Predictions are matched to GT by the `<city>_<seq>_<frame>` prefix of their file name (anywhere
under the prediction folder), must have the GT's size, and are single-channel PNGs in trainIds
(255 = no prediction) or labelIds (void ids = no prediction, FN for the GT class).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from bismap.data.cityscapes import GT_SUFFIX, frame_prefix
from bismap.data.labels import CITYSCAPES_ID_TO_TRAINID, TRAINID_IDENTITY, map_ids, read_label_png
from bismap.evaluation.confusion import ConfusionMatrix
from bismap.io import InputError

PRED_FORMATS = ("trainIds", "labelIds")


def find_gt(gt_root: str | Path, split: str) -> list[Path]:
    folder = Path(gt_root) / "gtFine" / split
    if not folder.is_dir():
        raise InputError(f"{folder}: Cityscapes gtFine split folder not found")
    files = sorted(folder.glob(f"*/*{GT_SUFFIX}"))
    if not files:
        raise InputError(f"{folder}: no */*{GT_SUFFIX} files")
    return files


def index_predictions(pred_dir: str | Path) -> dict[str, Path]:
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise InputError(f"{pred_dir}: prediction folder not found")
    index: dict[str, Path] = {}
    for p in sorted(pred_dir.rglob("*.png")):
        key = frame_prefix(p.name)
        if key is None:
            continue
        if key in index:
            raise InputError(f"{p}: second prediction for {key} (first: {index[key]})")
        index[key] = p
    return index


def read_prediction(path: Path, pred_format: str) -> np.ndarray:
    raw = read_label_png(path)
    table = TRAINID_IDENTITY if pred_format == "trainIds" else CITYSCAPES_ID_TO_TRAINID
    return map_ids(raw, table, source=str(path))


def evaluate_folder(pred_dir: str | Path, gt_root: str | Path, split: str = "val",
                    pred_format: str = "trainIds") -> ConfusionMatrix:
    """Confusion matrix of all GT files of `split`; every GT file needs a prediction."""
    if pred_format not in PRED_FORMATS:
        raise InputError(f"--pred-format: must be one of {PRED_FORMATS}, got {pred_format!r}")
    gts = find_gt(gt_root, split)
    preds = index_predictions(pred_dir)
    missing = [g for g in gts if frame_prefix(g.name) not in preds]
    if missing:
        raise InputError(f"{pred_dir}: predictions missing for {len(missing)} of {len(gts)} GT files "
                         f"(first: {missing[0].name})")
    conf = ConfusionMatrix()
    for g in gts:
        p = preds[frame_prefix(g.name)]
        gt = map_ids(read_label_png(g), CITYSCAPES_ID_TO_TRAINID, source=str(g))
        pred = read_prediction(p, pred_format)
        if pred.shape != gt.shape:
            raise InputError(f"{p}: prediction size {pred.shape[1]}x{pred.shape[0]} != GT size "
                             f"{gt.shape[1]}x{gt.shape[0]} ({g.name})")
        conf.update(pred, gt)
    return conf

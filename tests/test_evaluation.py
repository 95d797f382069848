"""Metrics on hand-computed confusion matrices, the Cityscapes folder evaluation, export and label quality."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bismap.data.labels import CLASS_NAMES, TRAINID_TO_ID, read_label_png
from bismap.evaluation.cityscapes_eval import evaluate_folder
from bismap.evaluation.confusion import ConfusionMatrix, confusion_matrix
from bismap.evaluation.export import export_labelids, labelids_file_name, trainids_to_labelids
from bismap.evaluation.metrics import compute_metrics, read_confusion_csv, write_metrics
from bismap.evaluation.quality import label_quality
from bismap.io import InputError


def test_confusion_counts_void_predictions_as_fn():
    gt = np.array([0, 0, 1, 1, 255, 2], np.uint8)
    pred = np.array([0, 255, 1, 0, 1, 2], np.uint8)
    m = confusion_matrix(pred, gt)
    assert m.shape == (19, 20) and m.dtype == np.int64
    assert m[0, 0] == 1 and m[0, 19] == 1 and m[1, 1] == 1 and m[1, 0] == 1 and m[2, 2] == 1
    assert m.sum() == 5  # GT 255 ignored
    met = compute_metrics(m)
    iou = met["iou_per_class"]
    # road: tp 1, fn 1 (void) , fp 1 (sidewalk GT predicted road) -> 1/3
    assert iou["road"] == pytest.approx(1 / 3)
    assert iou["sidewalk"] == pytest.approx(1 / 2)
    assert iou["building"] == 1.0
    assert iou["car"] is None
    assert met["miou"] == pytest.approx((1 / 3 + 1 / 2 + 1) / 3)
    assert met["pixel_accuracy"] == pytest.approx(3 / 5)
    assert met["present_classes"] == ["road", "sidewalk", "building"]
    assert met["void_predictions"] == 1


def test_subsets_and_synthia_ignore_protocol():
    m = np.zeros((19, 20), np.int64)
    m[8, 8] = 10          # vegetation right
    m[9, 8] = 10          # terrain GT predicted vegetation
    m[3, 3] = 4           # wall
    m[13, 13] = 6         # car
    m[14, 13] = 6         # truck GT predicted car
    met = compute_metrics(m, protocol="synthia")
    assert met["headline"] == "miou16"
    assert met["iou_per_class"]["vegetation"] == pytest.approx(0.5)
    assert met["iou_per_class"]["terrain"] == 0.0
    assert met["miou"] == pytest.approx((0.5 + 0 + 1 + 0.5 + 0) / 5)
    assert met["miou16"] == pytest.approx((0.5 + 1 + 0.5) / 3)
    assert met["miou13"] == pytest.approx((0.5 + 0.5) / 2)
    assert met["miou16_ignore_missing"] == pytest.approx(1.0)
    assert met["miou13_ignore_missing"] == pytest.approx(1.0)
    assert "terrain" not in met["iou_per_class_ignore_missing"]
    assert met["present_classes"] == ["wall", "vegetation", "terrain", "car", "truck"]
    with pytest.raises(ValueError):
        compute_metrics(m, protocol="nope")


def test_write_metrics_json_and_csv(tmp_path):
    cm = ConfusionMatrix()
    cm.update(np.array([[0, 1]], np.uint8), np.array([[0, 0]], np.uint8))
    met = write_metrics(cm.matrix, tmp_path / "m.json", tmp_path / "c.csv", extra={"images": 1})
    data = json.loads((tmp_path / "m.json").read_text())
    assert data["images"] == 1 and data["miou"] == met["miou"] and "definitions" in data
    assert np.array_equal(read_confusion_csv(tmp_path / "c.csv"), cm.matrix)


def write_gt(root: Path, rng: np.random.Generator, n: int = 3, h: int = 6, w: int = 8) -> list[tuple[str, np.ndarray]]:
    ids = np.array(list(range(34)))
    out = []
    for i in range(n):
        city = ["aachen", "bad_honnef", "zurich"][i % 3]
        prefix = f"{city}_{i:06d}_000019"
        gt = rng.choice(ids, size=(h, w)).astype(np.uint8)
        p = root / "gtFine" / "val" / city / f"{prefix}_gtFine_labelIds.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(gt).save(p)
        Image.fromarray(np.zeros((h, w), np.uint8)).save(str(p).replace("labelIds", "instanceIds"))
        out.append((prefix, gt))
    return out


def test_evaluate_folder_matches_hand_matrix(tmp_path):
    rng = np.random.default_rng(0)
    gts = write_gt(tmp_path / "cs", rng)
    expected = ConfusionMatrix()
    from bismap.data.labels import CITYSCAPES_ID_TO_TRAINID, map_ids
    for prefix, gt in gts:
        pred = rng.choice(np.array([*range(19), 255]), size=gt.shape).astype(np.uint8)
        export_labelids(pred, tmp_path / "pred_ids" / labelids_file_name(prefix + "_leftImg8bit.png"), size=None)
        (tmp_path / "pred_train").mkdir(exist_ok=True)
        Image.fromarray(pred).save(tmp_path / "pred_train" / f"{prefix}_leftImg8bit.png")
        expected.update(pred, map_ids(gt, CITYSCAPES_ID_TO_TRAINID))
    a = evaluate_folder(tmp_path / "pred_train", tmp_path / "cs", "val", "trainIds")
    b = evaluate_folder(tmp_path / "pred_ids", tmp_path / "cs", "val", "labelIds")
    assert np.array_equal(a.matrix, expected.matrix) and np.array_equal(b.matrix, expected.matrix)
    next((tmp_path / "pred_ids").glob("zurich*")).unlink()
    with pytest.raises(InputError, match=r"predictions missing for 1 of 3 GT files \(first: zurich_000002_000019"):
        evaluate_folder(tmp_path / "pred_ids", tmp_path / "cs", "val", "labelIds")


def test_matches_cityscapesscripts(tmp_path):
    ev = pytest.importorskip("cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling")
    rng = np.random.default_rng(3)
    gts = write_gt(tmp_path / "cs", rng, n=3, h=16, w=20)
    preds, gfiles = [], []
    for prefix, gt in gts:
        # labelIds predictions including void ids (0..6, 9, ...) that must count as FN only
        pred = rng.choice(np.array([0, 1, 4, 7, 8, 11, 13, 17, 21, 23, 24, 26, 27, 28, 31, 32, 33]), size=gt.shape)
        p = tmp_path / "pred" / f"{prefix}_pred.png"
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(pred.astype(np.uint8)).save(p)
        preds.append(str(p))
        gfiles.append(str(next((tmp_path / "cs").rglob(f"{prefix}_gtFine_labelIds.png"))))
    args = ev.args
    args.evalInstLevelScore, args.JSONOutput, args.quiet = False, False, True
    ref = ev.evaluateImgLists(preds, gfiles, args)
    ours = compute_metrics(evaluate_folder(tmp_path / "pred", tmp_path / "cs", "val", "labelIds").matrix)
    for name in CLASS_NAMES:
        r = ref["classScores"][name]
        o = ours["iou_per_class"][name]
        assert (o is None and np.isnan(r)) or o == pytest.approx(r, abs=1e-6)
    assert ours["miou"] == pytest.approx(ref["averageScoreClasses"], abs=1e-6)


def test_export_full_resolution_labelids(tmp_path):
    pred = np.array([[0, 13], [255, 18]], np.uint8)
    assert trainids_to_labelids(pred).tolist() == [[7, 26], [0, 33]]
    export_labelids(pred, tmp_path / "x.png", size=(4, 6))
    out = read_label_png(tmp_path / "x.png")
    assert out.shape == (4, 6) and set(np.unique(out)) == {0, 7, 26, 33}
    assert Image.open(tmp_path / "x.png").mode in ("P", "L")
    assert {TRAINID_TO_ID[t] for t in range(19)} == set(trainids_to_labelids(np.arange(19, dtype=np.uint8)).tolist())


def test_label_quality():
    pred = np.array([[0, 0, 255, 1]], np.uint8)
    gt = np.array([[0, 1, 1, 1]], np.uint8)
    q = label_quality([(pred, gt), (np.full((1, 4), 255, np.uint8), None)])
    assert q["images"] == 2 and q["coverage"] == pytest.approx(3 / 8)
    assert q["coverage_per_class"]["road"] == pytest.approx(2 / 8)
    assert q["accuracy"] == pytest.approx(2 / 3)
    assert q["iou_per_class"]["road"] == pytest.approx(1 / 2) and q["iou_per_class"]["sidewalk"] == pytest.approx(1 / 2)
    assert q["miou"] == pytest.approx(0.5)
    q2 = label_quality([(pred, None)])
    assert q2["accuracy"] is None and q2["miou"] is None and q2["iou_per_class"] is None


def test_cli_evaluate_end_to_end(tmp_path, capsys):
    from bismap.cli import evaluate as cli_evaluate

    rng = np.random.default_rng(1)
    gts = write_gt(tmp_path / "cs", rng, n=2)
    (tmp_path / "pred").mkdir()
    for prefix, gt in gts:
        Image.fromarray(gt).save(tmp_path / "pred" / f"{prefix}_leftImg8bit.png")  # perfect labelIds prediction
    parser = argparse.ArgumentParser()
    cli_evaluate.add_parser(parser.add_subparsers())
    args = parser.parse_args(["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "cs"),
                              "--pred-format", "labelIds", "--out", str(tmp_path / "m.json")])
    assert args.func(args) == 0
    met = json.loads((tmp_path / "m.json").read_text())
    assert met["miou"] == 1.0 and met["images"] == 2
    assert (tmp_path / "m.confusion.csv").is_file()
    assert "miou = 100.00" in capsys.readouterr().out

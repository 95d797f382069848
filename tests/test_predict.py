"""`bismap predict`: label PNGs + colour overlays for any folder of images, at each image's size."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from bismap.cli import main
from conftest import constant_checkpoint


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def test_predict_writes_labels_and_overlays(tmp_path) -> None:
    from bismap.data.labels import PALETTE

    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (30, 50, 3), dtype=np.uint8)).save(images / "a.png")
    Image.fromarray(rng.integers(0, 255, (32, 64, 3), dtype=np.uint8)).save(images / "sub" / "b.jpg")
    (images / "notes.txt").write_text("not an image")
    ckpt = constant_checkpoint(tmp_path / "c.pt", 13, {"mean": [0.5] * 3, "std": [0.25] * 3})
    out = tmp_path / "out"
    rc = main(["predict", "--checkpoint", str(ckpt), "--images", str(images), "--out", str(out),
               "--scales", "0.75", "1.0", "--flip", "--device", "cpu", "--threads", "1", "--alpha", "1.0"])
    assert rc == 0
    for rel, (h, w) in {"a.png": (30, 50), "sub/b.png": (32, 64)}.items():
        lab = Image.open(out / "labels" / rel)
        assert lab.mode == "P" and lab.size == (w, h)
        assert np.all(np.array(lab) == 13)
        ov = Image.open(out / "overlays" / rel)
        assert ov.mode == "RGB" and ov.size == (w, h)
        assert np.all(np.array(ov) == np.array(PALETTE[13], dtype=np.uint8))  # alpha 1: pure class colour
    assert sorted(p.name for p in (out / "labels").rglob("*.png")) == ["a.png", "b.png"]


def test_predict_overlay_blend_and_errors(tmp_path, capsys) -> None:
    from bismap.cli.predict import overlay

    img = np.full((2, 2, 3), 100, np.uint8)
    lab = np.array([[0, 255], [0, 0]], np.uint8)
    ov = overlay(img, lab, 0.5)
    assert tuple(ov[0, 1]) == (100, 100, 100)  # ignore keeps the image
    assert ov[0, 0, 0] == round(0.5 * 100 + 0.5 * 128)  # road colour (128, 64, 128)
    empty = tmp_path / "empty"
    empty.mkdir()
    ckpt = constant_checkpoint(tmp_path / "c.pt", 0, None)
    assert main(["predict", "--checkpoint", str(ckpt), "--images", str(empty), "--out", str(tmp_path / "o")]) == 2
    assert "no .png/.jpg/.jpeg images" in capsys.readouterr().err
    (empty / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    assert main(["predict", "--checkpoint", str(tmp_path / "missing.pt"), "--images", str(empty),
                 "--out", str(tmp_path / "o")]) == 2
    assert "missing.pt" in capsys.readouterr().err


def test_predict_exports_cityscapes_labelids(tmp_path) -> None:
    """--labelids writes what cityscapesScripts reads: labelIds (car = id 26) at the image's size."""
    images = tmp_path / "leftImg8bit" / "val" / "aachen"
    images.mkdir(parents=True)
    Image.fromarray(np.zeros((16, 32, 3), np.uint8)).save(images / "aachen_000001_000019_leftImg8bit.png")
    ckpt = constant_checkpoint(tmp_path / "c.pt", 13, None)
    rc = main(["predict", "--checkpoint", str(ckpt), "--images", str(images), "--out", str(tmp_path / "o"),
               "--labelids", "--device", "cpu", "--threads", "1"])
    assert rc == 0
    ids = np.array(Image.open(tmp_path / "o" / "labelIds" / "aachen_000001_000019_pred_labelIds.png"))
    assert ids.shape == (16, 32) and np.all(ids == 26)


def test_predict_labelids_needs_cityscapes_names(tmp_path, capsys) -> None:
    images = tmp_path / "imgs"
    images.mkdir()
    Image.fromarray(np.zeros((16, 32, 3), np.uint8)).save(images / "photo.png")
    ckpt = constant_checkpoint(tmp_path / "c.pt", 13, None)
    rc = main(["predict", "--checkpoint", str(ckpt), "--images", str(images), "--out", str(tmp_path / "o"),
               "--labelids", "--device", "cpu"])
    assert rc == 2 and "photo.png" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()

"""Dataset readers: label tables, the three on-disk layouts, overrides and bad input (tiny files in tmp_path)."""
from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bismap.data import open_dataset
from bismap.data.image_io import read_png16_channel0, read_rgb
from bismap.data.labels import (
    CITYSCAPES_ID_TO_TRAINID,
    CLASS_NAMES,
    PALETTE,
    SYNTHIA_ID_TO_TRAINID,
    TRAINID_TO_ID,
    map_ids,
    read_label_png,
    save_label_png,
)
from bismap.io import InputError

EXPECTED_ID_TO_TRAINID = {
    -1: 255, 0: 255, 1: 255, 2: 255, 3: 255, 4: 255, 5: 255, 6: 255, 7: 0, 8: 1, 9: 255, 10: 255, 11: 2,
    12: 3, 13: 4, 14: 255, 15: 255, 16: 255, 17: 5, 18: 255, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
    25: 12, 26: 13, 27: 14, 28: 15, 29: 255, 30: 255, 31: 16, 32: 17, 33: 18,
}


def write_png16(path: Path, arr: np.ndarray) -> None:
    """16-bit PNG written by hand (Pillow cannot), cycling all five PNG row filters."""
    arr = np.asarray(arr, dtype=">u2")
    h, w = arr.shape[:2]
    c = 1 if arr.ndim == 2 else arr.shape[2]
    bpp = 2 * c
    rows = [np.frombuffer(arr[y].tobytes(), np.uint8).astype(np.int32) for y in range(h)]
    prev = np.zeros_like(rows[0])
    raw = b""
    for y, row in enumerate(rows):
        f = y % 5
        left = np.concatenate([np.zeros(bpp, np.int32), row[:-bpp]])
        ul = np.concatenate([np.zeros(bpp, np.int32), prev[:-bpp]])
        if f == 0:
            out = row
        elif f == 1:
            out = row - left
        elif f == 2:
            out = row - prev
        elif f == 3:
            out = row - (left + prev) // 2
        else:
            p = left + prev - ul
            pa, pb, pc = abs(p - left), abs(p - prev), abs(p - ul)
            out = row - np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, ul))
        raw += bytes([f]) + (out % 256).astype(np.uint8).tobytes()
        prev = row

    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    ct = {1: 0, 3: 2, 4: 6}[c]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, ct, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def rgb(path: Path, h: int = 4, w: int = 6, value: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(path)


def ids(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(arr, np.uint8)).save(path)


def test_cityscapes_table_covers_all_35_ids():
    assert CITYSCAPES_ID_TO_TRAINID == EXPECTED_ID_TO_TRAINID
    assert len(CITYSCAPES_ID_TO_TRAINID) == 35
    arr = np.arange(34, dtype=np.uint8).reshape(2, 17)
    out = map_ids(arr, CITYSCAPES_ID_TO_TRAINID)
    assert [int(v) for v in out.ravel()] == [EXPECTED_ID_TO_TRAINID[i] for i in range(34)]
    assert map_ids(np.array([[255]], np.uint8), CITYSCAPES_ID_TO_TRAINID)[0, 0] == 255  # -1 as uint8
    assert map_ids(np.array([-1, 26]), CITYSCAPES_ID_TO_TRAINID).tolist() == [255, 13]
    assert {TRAINID_TO_ID[t] for t in range(19)} == {7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28,
                                                     31, 32, 33}
    with pytest.raises(InputError, match="x.png: unknown label value.* 40"):
        map_ids(np.array([[7, 40]], np.uint8), CITYSCAPES_ID_TO_TRAINID, source="x.png")


def test_synthia_table():
    expected = {3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9, 1: 10, 10: 11, 17: 12, 8: 13,
                18: 14, 19: 15, 20: 16, 12: 17, 11: 18}
    assert SYNTHIA_ID_TO_TRAINID == expected
    arr = np.arange(0, 30, dtype=np.uint16)
    out = map_ids(arr, SYNTHIA_ID_TO_TRAINID, default=255)
    assert [int(v) for v in out] == [expected.get(i, 255) for i in range(30)]


def test_tables_match_cityscapesscripts():
    labels = pytest.importorskip("cityscapesscripts.helpers.labels")
    for lab in labels.labels:
        assert CITYSCAPES_ID_TO_TRAINID[lab.id] == (255 if lab.trainId in (255, -1) else lab.trainId)
        if lab.trainId not in (255, -1):
            assert CLASS_NAMES[lab.trainId] == lab.name
            assert tuple(PALETTE[lab.trainId]) == lab.color


def test_label_png_roundtrip(tmp_path):
    arr = np.array([[0, 18, 255], [3, 4, 5]], np.uint8)
    save_label_png(tmp_path / "a.png", arr)
    im = Image.open(tmp_path / "a.png")
    assert im.mode == "P"
    assert np.array_equal(read_label_png(tmp_path / "a.png"), arr)
    assert not list(tmp_path.glob(".*"))  # no temporary left behind


def test_truncated_and_missing_png(tmp_path):
    rgb(tmp_path / "ok.png", 32, 32)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "big.png")
    data = (tmp_path / "big.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.png").write_bytes(b"not a png")
    assert read_rgb(tmp_path / "ok.png").shape == (32, 32, 3)
    for name in ("trunc.png", "junk.png", "nothere.png"):
        with pytest.raises(InputError, match=name):
            read_rgb(tmp_path / name)


@pytest.mark.parametrize("channels", [3, 4])
def test_png16_reader_keeps_all_bits(tmp_path, channels):
    a = np.random.default_rng(1).integers(0, 65535, size=(9, 11, channels))
    write_png16(tmp_path / "l.png", a)
    assert np.array_equal(read_png16_channel0(tmp_path / "l.png"), a[..., 0])


def make_gta5(root: Path) -> None:
    for i, (h, w) in enumerate([(4, 6), (4, 6), (8, 12)]):
        rgb(root / "images" / f"{i + 1:05d}.png", h, w, 10 * i)
    ids(root / "labels" / "00001.png", np.arange(24).reshape(4, 6) % 34)
    ids(root / "labels" / "00002.png", np.full((4, 6), 26))
    ids(root / "labels" / "00003.png", np.full((4, 6), 7))   # label smaller than its image
    ids(root / "labels" / "00009.png", np.full((4, 6), 7))   # label without image
    rgb(root / "images" / "00004.png")                       # image without label


def test_gta5_layout_mismatch_and_single_warning(tmp_path):
    make_gta5(tmp_path)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        ds = open_dataset({"dataset": "gta5", "root": str(tmp_path)})
    assert len(w) == 1
    msg = str(w[0].message)
    assert "1 pairs differ in size" in msg and "00003.png" in msg and "00004.png" in msg and "00009.png" in msg
    assert ds.names == ["00001", "00002", "00003"] and ds.has_labels
    item = ds[0]
    assert item["image"].dtype == np.uint8 and item["image"].shape == (4, 6, 3)
    assert item["label"].tolist()[1][1] == EXPECTED_ID_TO_TRAINID[7]
    assert item["name"] == "00001" and item["file"] == "00001.png"
    assert ds[1]["label"].max() == 13
    big = ds[2]
    assert big["image"].shape == (8, 12, 3) and big["label"].shape == (8, 12) and (big["label"] == 0).all()
    with pytest.warns(UserWarning, match="GTA5"):
        small = open_dataset({"dataset": "gta5", "root": str(tmp_path), "size": [2, 3]})[2]
    assert small["image"].shape == (2, 3, 3) and small["label"].shape == (2, 3)


def test_gta5_unknown_id_names_file(tmp_path):
    rgb(tmp_path / "images" / "00001.png")
    ids(tmp_path / "labels" / "00001.png", np.full((4, 6), 77))
    ds = open_dataset({"dataset": "gta5", "root": str(tmp_path)})
    with pytest.raises(InputError, match=r"00001.png: unknown label value\(s\) 77"):
        ds[0]


def test_synthia_layout(tmp_path):
    rgb(tmp_path / "RGB" / "0000001.png")
    lab = np.zeros((4, 6, 3), np.int64)
    lab[..., 0] = np.array([[3, 4, 2, 21, 5, 7], [15, 9, 6, 1, 10, 17], [8, 19, 12, 11, 0, 13],
                            [16, 18, 20, 22, 300, 3]])
    lab[..., 1] = 999  # instance channel must not leak into the class
    write_png16(tmp_path / "GT" / "LABELS" / "0000001.png", lab)
    ds = open_dataset({"dataset": "synthia", "root": str(tmp_path)})
    out = ds[0]["label"]
    assert out.tolist() == [[0, 1, 2, 3, 4, 5], [6, 7, 8, 10, 11, 12], [13, 15, 17, 18, 255, 255],
                            [9, 14, 16, 255, 255, 0]]
    ids(tmp_path / "GT" / "LABELS" / "0000001.png", np.zeros((4, 6)))  # 8-bit label
    with pytest.raises(InputError, match="0000001.png: SYNTHIA label must be a 16-bit PNG"):
        open_dataset({"dataset": "synthia", "root": str(tmp_path)})[0]


def make_cityscapes(root: Path, split: str = "val") -> list[str]:
    names = []
    for city, seq in (("aachen", 0), ("bonn", 3)):
        p = f"{city}_{seq:06d}_000019"
        rgb(root / "leftImg8bit" / split / city / f"{p}_leftImg8bit.png")
        ids(root / "gtFine" / split / city / f"{p}_gtFine_labelIds.png", np.full((4, 6), 26 if seq else 7))
        names.append(f"{p}_leftImg8bit")
    return names


def test_cityscapes_layout_pseudo_and_none(tmp_path):
    names = make_cityscapes(tmp_path)
    ds = open_dataset({"dataset": "cityscapes", "root": str(tmp_path), "split": "val"})
    assert ds.names == names and ds[0]["label"].max() == 0 and ds[1]["label"].min() == 13
    none = open_dataset({"dataset": "cityscapes", "root": str(tmp_path), "split": "val", "labels": "none"})
    assert not none.has_labels and (none[0]["label"] == 255).all()
    pseudo = tmp_path / "pseudo"
    save_label_png(pseudo / f"{names[0]}.png", np.full((4, 6), 5, np.uint8))
    with pytest.raises(InputError, match=r"1 label files for images missing \(first: bonn"):
        open_dataset({"dataset": "cityscapes", "root": str(tmp_path), "split": "val", "labels": str(pseudo)})
    save_label_png(pseudo / f"{names[1]}.png", np.full((4, 6), 255, np.uint8))
    ds = open_dataset({"dataset": "cityscapes", "root": str(tmp_path), "split": "val", "labels": str(pseudo)})
    assert (ds[0]["label"] == 5).all() and (ds[1]["label"] == 255).all()
    save_label_png(pseudo / f"{names[1]}.png", np.full((4, 6), 19, np.uint8))
    with pytest.raises(InputError, match="unknown label value"):
        ds[1]


def test_stylized_override(tmp_path):
    make_gta5(tmp_path / "g")
    sty = tmp_path / "sty"
    rgb(sty / "00001.png", value=7)
    rgb(sty / "00002.png", value=7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(InputError, match=r"1 stylized images .* missing \(first: 00003.png"):
            open_dataset({"dataset": "gta5", "root": str(tmp_path / "g"), "images": str(sty)})
        rgb(sty / "00003.png", value=7)
        ds = open_dataset({"dataset": "gta5", "root": str(tmp_path / "g"), "images": str(sty)})
    assert (ds[0]["image"] == 7).all() and ds[1]["label"].max() == 13


@pytest.mark.parametrize("spec, match", [
    ({"dataset": "gta5", "root": "MISSING"}, "MISSING: GTA5 root folder not found"),
    ({"dataset": "cityscapes", "root": "ROOT", "split": "nosplit"}, "split 'nosplit' not found"),
    ({"dataset": "cityscapes", "root": "ROOT"}, "'split' is required"),
    ({"dataset": "kitti", "root": "ROOT"}, "'dataset' must be one of"),
    ({"dataset": "gta5", "root": "ROOT", "lables": "x"}, "unknown key"),
    ({"dataset": "synthia", "root": "ROOT"}, "RGB folder not found"),
])
def test_bad_specs(tmp_path, spec, match):
    make_cityscapes(tmp_path / "ROOT")
    spec = {**spec, "root": str(tmp_path / spec["root"])}
    with pytest.raises(InputError, match=match):
        open_dataset(spec)


def test_cityscapes_missing_gt_and_empty(tmp_path):
    make_cityscapes(tmp_path)
    next((tmp_path / "gtFine" / "val" / "bonn").glob("*.png")).unlink()
    with pytest.raises(InputError,
                       match=r"1 gtFine label files missing \(first: bonn_000003_000019_gtFine_labelIds.png"):
        open_dataset({"dataset": "cityscapes", "root": str(tmp_path), "split": "val"})
    (tmp_path / "leftImg8bit" / "empty").mkdir()
    with pytest.raises(InputError, match="no \\*/\\*_leftImg8bit.png"):
        open_dataset({"dataset": "cityscapes", "root": str(tmp_path), "split": "empty"})

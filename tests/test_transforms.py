"""Augmentation: label / weight / image / strong view stay pixel-aligned; determinism; padding; cut-out."""
from __future__ import annotations

import pickle

import h5py
import numpy as np
import pytest
import torch

from bismap.data.training_view import TrainingView
from bismap.data.transforms import (
    Geometry,
    apply_geometry,
    augment_config,
    color_jitter,
    cutout_keep_mask,
    normalize,
    rand_augment,
    sample_geometry,
)
from bismap.io import InputError

MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


def _scene(seed: int, h: int = 48, w: int = 64) -> np.ndarray:
    """Blocks of 8x8 pixels with random class ids (some 255)."""
    r = np.random.default_rng(seed)
    blocks = r.integers(0, 19, size=(h // 8, w // 8)).astype(np.uint8)
    blocks[0, 0] = 255
    return np.kron(blocks, np.ones((8, 8), dtype=np.uint8))


class FakeDataset:
    """open_dataset-like items whose image and weight values encode the label: v = 10 * label (255 -> 250)."""

    def __init__(self, n: int = 3) -> None:
        self.labels = [_scene(i) for i in range(n)]
        self.names = [f"{i:05d}" for i in range(n)]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        label = self.labels[i]
        code = np.where(label == 255, 250, label.astype(np.int32) * 10).astype(np.uint8)
        return {"image": np.repeat(code[..., None], 3, axis=2), "label": label, "name": self.names[i],
                "file": self.names[i] + ".png"}


@pytest.fixture
def maps(tmp_path):
    ds = FakeDataset()
    path = tmp_path / "stm.h5"
    with h5py.File(path, "w") as f:
        for name, label in zip(ds.names, ds.labels):
            code = np.where(label == 255, 250, label.astype(np.int32) * 10).astype(np.uint8)
            f.create_dataset(f"maps/{name}", data=code)
    return ds, path


NO_JITTER = {"brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.0}
AUG = {"scale": [0.6, 1.6], "crop": [32, 40], "flip": True, "jitter": NO_JITTER, "crop_retries": 10}


def _pixels(t: torch.Tensor) -> np.ndarray:
    return (t * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1)).mul(255).numpy()


def test_label_weight_image_strong_aligned(maps) -> None:
    ds, path = maps
    view = TrainingView(ds, AUG, MEAN, STD, weight_maps=path, strong={"ops": 0, "magnitude": 10, "cutout": 0.25},
                        seed=3)
    flips, sizes = set(), set()
    for epoch in range(4):
        view.set_epoch(epoch)
        for i in range(len(view)):
            out = view[i]
            label = out["label"].numpy()
            assert out["image"].shape == (3, 32, 40) and out["label"].dtype == torch.long
            assert out["weight"].dtype == torch.float32 and out["keep"].dtype == torch.bool
            valid = label != 255
            code = label * 10
            # nearest-resized weight map follows the label exactly (pad: label 255, weight 0)
            w = np.rint(out["weight"].numpy() * 255)
            assert np.all(w[valid] == code[valid])
            # bilinear image: equal to the code away from label edges
            img = _pixels(out["image"])
            inner = valid.copy()
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    inner &= np.roll(np.roll(label, dy, 0), dx, 1) == label
            inner[[0, -1], :] = inner[:, [0, -1]] = False
            assert inner.sum() > 20
            assert np.abs(img[0][inner] - code[inner]).max() <= 1.0
            # strong view without ops: the weak geometry, zero (black) in the cut-out only
            strong, keep = _pixels(out["strong"]), out["keep"].numpy()
            np.testing.assert_allclose(strong[:, keep], img[:, keep], atol=1e-3)
            assert np.abs(strong[:, ~keep]).max() < 1e-3
            assert 0 < (~keep).sum() <= 10 * 10
            geom = sample_geometry(view.rng(i), ds.labels[i], view.augment)  # the draw the view made
            flips.add(geom.flip)
            sizes.add(geom.size)
    assert flips == {True, False} and len(sizes) > 3  # both flips and several scales were exercised


def test_geometry_flip_and_padding() -> None:
    label = np.arange(12, dtype=np.uint8).reshape(3, 4)
    geom = Geometry(size=(3, 4), top=0, left=0, crop=(5, 6), flip=True)
    out = apply_geometry(label, geom, "label")
    assert out.shape == (5, 6)
    assert np.array_equal(out[:3, 2:], label[:, ::-1]) and np.all(out[3:] == 255) and np.all(out[:, :2] == 255)
    w = apply_geometry(np.full((3, 4), 9, np.uint8), geom, "weight")
    assert np.all(w[3:] == 0) and np.all(w[:3, 2:] == 9)
    img = apply_geometry(np.full((3, 4, 3), 9, np.uint8), geom, "image")
    assert img.shape == (5, 6, 3) and np.all(img[3:] == 0)


def test_crop_retry_avoids_single_value_crops() -> None:
    label = np.zeros((40, 40), np.uint8)
    label[:, 30:] = 1  # most 20x20 crops hold only class 0
    aug = augment_config({**AUG, "scale": [1, 1], "crop": [20, 20], "flip": False})
    mixed = sum(np.unique(apply_geometry(label, sample_geometry(np.random.default_rng(s), label, aug),
                                         "label")).size > 1
                for s in range(40))
    aug1 = {**aug, "crop_retries": 1}
    mixed1 = sum(np.unique(apply_geometry(label, sample_geometry(np.random.default_rng(s), label, aug1),
                                          "label")).size > 1
                 for s in range(40))
    assert mixed >= 36 and mixed1 < mixed


def test_determinism_and_epochs(maps) -> None:
    ds, path = maps
    kw = dict(augment={**AUG, "jitter": {"brightness": 0.5, "contrast": 0.5, "saturation": 0.5, "hue": 0.1}},
              mean=MEAN, std=STD, weight_maps=path, strong={"ops": 2, "magnitude": 10, "cutout": 0.2}, seed=7)
    a, b = TrainingView(ds, **kw), TrainingView(ds, **kw)
    for key in ("image", "label", "weight", "strong", "keep"):
        assert torch.equal(a[1][key], b[1][key])
    first = a[1]["image"]
    a.set_epoch(1)
    assert not torch.equal(a[1]["image"], first)
    a.set_epoch(0)
    assert torch.equal(a[1]["image"], first)  # resume: epoch + index fully determine the view
    c = TrainingView(ds, **{**kw, "seed": 8})
    assert not torch.equal(c[1]["image"], first)


def test_h5_opened_lazily_and_worker_safe(maps) -> None:
    ds, path = maps
    view = TrainingView(ds, AUG, MEAN, STD, weight_maps=path, seed=0)
    assert view._h5 is None
    ref = view[0]["weight"]  # opens in this process
    clone = pickle.loads(pickle.dumps(view))
    assert clone._h5 is None and torch.equal(clone[0]["weight"], ref)
    loader = torch.utils.data.DataLoader(view, batch_size=3, num_workers=1)
    batch = next(iter(loader))
    assert torch.equal(batch["weight"][0], ref) and batch["name"] == ds.names


def test_no_maps_gives_ones_and_missing_map_is_input_error(maps, tmp_path) -> None:
    ds, path = maps
    out = TrainingView(ds, AUG, MEAN, STD, seed=0)[0]
    assert torch.all(out["weight"] == 1) and "strong" not in out
    with h5py.File(tmp_path / "partial.h5", "w") as f:
        f.create_dataset("maps/other", data=np.zeros((4, 4), np.uint8))
    with pytest.raises(InputError, match="partial.h5.*maps/00000"):
        TrainingView(ds, AUG, MEAN, STD, weight_maps=tmp_path / "partial.h5", seed=0)[0]
    with pytest.raises(InputError, match="not found"):
        TrainingView(ds, AUG, MEAN, STD, weight_maps=tmp_path / "nope.h5", seed=0)
    with pytest.raises(InputError, match="unknown key"):
        TrainingView(ds, {"scales": [1, 1]}, MEAN, STD)


def test_photometric_ops() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    jit = color_jitter(img, np.random.default_rng(1),
                       {"brightness": 0.5, "contrast": 0.5, "saturation": 0.5, "hue": 0.2})
    assert jit.shape == img.shape and jit.dtype == np.uint8 and not np.array_equal(jit, img)
    assert np.array_equal(color_jitter(img, np.random.default_rng(1), NO_JITTER), img)
    outs = [rand_augment(img, np.random.default_rng(s), 2, 10) for s in range(20)]
    assert all(o.shape == img.shape and o.dtype == np.uint8 for o in outs)
    assert any(not np.array_equal(o, img) for o in outs)
    assert np.array_equal(rand_augment(img, np.random.default_rng(5), 2, 10), outs[5])
    keep = cutout_keep_mask(np.random.default_rng(0), (30, 40), 8)
    assert 0 < (~keep).sum() <= 64
    x = normalize(np.full((2, 2, 3), 255, np.uint8), MEAN, STD)
    assert x.shape == (3, 2, 2) and torch.allclose(x, torch.full((3, 2, 2), 2.0))

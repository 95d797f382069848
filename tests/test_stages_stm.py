"""class_entropy and the three STM stages: the weight formula, the class bonus, order independence, end to end."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bismap.io import InputError
from conftest import RUNTIME, schema_defaults, write_cityscapes, write_gta

torch.set_num_threads(1)

H, W = 32, 64
DATA = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}


def make_gta(root: Path, n: int, seed: int = 0) -> dict:
    """Left half road (trainId 0), right half car (13) except a void stripe; random colours."""
    rng = np.random.default_rng(seed)

    def scene():
        ids = np.full((H, W), 7, np.uint8)  # Cityscapes id 7 = road
        ids[:, W // 2:] = 26  # car
        ids[:4] = 0  # void
        return rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8), ids

    return write_gta(root, (scene() for _ in range(n)))


def make_cityscapes(root: Path, n: int, seed: int = 1) -> dict:
    rng = np.random.default_rng(seed)
    scenes = ((rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8), None) for _ in range(n))
    return {**write_cityscapes(root, scenes, city="c"), "labels": "none"}


class FixedLogits(nn.Module):
    """Logits at stride 4: road pixels uniform over 19 classes (max entropy), car pixels near one-hot."""

    feature_dim = 4

    def backbone(self, x):
        return F.avg_pool2d(x, 4), torch.cat([F.avg_pool2d(x, 16), F.avg_pool2d(x, 16) ** 2], 1)

    def forward(self, x):
        b, _, h, w = x.shape
        logits = torch.zeros(b, 19, h // 4, w // 4)
        logits[:, 13, :, (w // 8):] = 50.0
        return torch.zeros(b, 4, h // 4, w // 4), logits


@pytest.fixture
def fixed_model(monkeypatch):
    import bismap.engine.checkpoint as ck

    monkeypatch.setattr(ck, "load_model", lambda path, device="cpu", which="model": FixedLogits().eval())


# ----------------------------------------------------------------------------- class entropy
def test_class_entropy_from_data(tmp_path, fixed_model) -> None:
    from bismap.stages import class_entropy

    ckpt = tmp_path / "w.pt"
    ckpt.write_bytes(b"x")
    src = make_gta(tmp_path / "gta", 3)
    out = tmp_path / "e.json"
    class_entropy.run(checkpoint=ckpt, source=src, out_json=out, cfg=schema_defaults("class_entropy", batch_size=2),
                      data=DATA, runtime=RUNTIME)
    e = json.loads(out.read_text())
    assert e["mode"] == "data"
    # road columns away from the border: uniform softmax -> ln 19; bilinear blending only near the edge
    assert e["entropy"]["road"] == pytest.approx(np.log(19), rel=0.1)
    assert e["entropy"]["car"] < 0.1
    assert e["normalised"]["road"] == 1.0 and e["normalised"]["car"] == 0.0
    assert e["pixels"]["road"] == 3 * (H - 4) * W // 2 and e["pixels"]["sky"] == 0
    assert "sky" in e["absent"] and e["normalised"]["sky"] == 0.0 and e["entropy"]["sky"] is None


@pytest.mark.parametrize("mode,cls,value", [("official_gta5", "road", 0.131), ("official_gta5", "bicycle", 1.0),
                                            ("official_gta5", "sky", 0.0), ("official_synthia", "road", 0.203),
                                            ("official_synthia", "motorcycle", 1.0),
                                            ("official_synthia", "fence", 0.908)])
def test_class_entropy_official_tables(tmp_path, mode, cls, value) -> None:
    from bismap.stages import class_entropy, stm_maps

    out = tmp_path / "e.json"
    class_entropy.run(checkpoint=tmp_path / "unused.pt", source={}, out_json=out,
                      cfg=schema_defaults("class_entropy", mode=mode), data=DATA, runtime=RUNTIME)
    e = json.loads(out.read_text())
    assert e["normalised"][cls] == pytest.approx(value, abs=1e-3)
    assert stm_maps.read_normalised(out)[0] == pytest.approx(e["normalised"]["road"])


# ----------------------------------------------------------------------------- STM math
def test_weight_is_half_at_distance_m() -> None:
    from bismap.stages.stm_maps import compose_map, running_weights, transferability

    assert transferability(torch.tensor([0.0, 2.0, 4.0]), 2.0).tolist() == pytest.approx([1.0, 0.5, 2 ** -4])
    # first image: m = mean(d) = 2; the cell at d = 2 gets 0.5 -> uint8 128 (127.5 rounds to even 128)
    d = torch.tensor([2.0, 1.0, 3.0, 2.0])
    (w, m), = list(running_weights([d], 0.99))
    assert m == 2.0 and w[0] == pytest.approx(0.5)
    arr = compose_map(w.reshape(2, 2), np.full((4, 6), 255, np.uint8), None)
    assert arr[0, 0] in (127, 128) and arr.shape == (4, 6)
    assert (arr[:2, :3] == arr[0, 0]).all()  # nearest upsampling: blocky


def test_running_scale_update_before_use() -> None:
    from bismap.stages.stm_maps import running_weights

    ds = [torch.tensor([1.0, 1.0]), torch.tensor([3.0, 3.0])]
    (_, m0), (w1, m1) = list(running_weights(ds, 0.5))
    assert m0 == 1.0 and m1 == pytest.approx(0.5 * 1.0 + 0.5 * 3.0)
    assert w1[0] == pytest.approx(2 ** -((3 / 2) ** 2))  # image 2 uses the already updated scale


def test_class_bonus_and_clip() -> None:
    from bismap.stages.stm_maps import compose_map

    bonus = np.zeros(19)
    bonus[18] = 0.3
    bonus[0] = 1.0
    label = np.array([[18, 255], [0, 5]], np.uint8)
    arr = compose_map(torch.full((1, 1), 0.5), label, bonus)
    assert arr.tolist() == [[round(0.8 * 255), 128], [255, 128]]


# ----------------------------------------------------------------------------- end to end
def _stm_cfg(**kw) -> dict[str, dict]:
    """The three `stm` sub-sections (one per stage) at test sizes, each key of `kw` set where it lives."""
    parts = {part: schema_defaults(f"stm/{part}") for part in ("features", "prototypes", "maps")}
    for key, value in {"image_size": [32, 64], "grid": [2, 2], "k": 3, "batch_size": 2, **kw}.items():
        next(p for p in parts.values() if key in p)[key] = value
    return parts


def _pipeline(tmp_path: Path, src: dict, tgt: dict, ckpt: Path, tag: str, **cfg) -> Path:
    from bismap.stages import class_entropy, stm_features, stm_maps, stm_prototypes

    feats, protos, ent, maps = (tmp_path / f"{tag}{s}" for s in ("f.h5", "k.pt", "e.json", "m.h5"))
    c = _stm_cfg(**cfg)
    stm_features.run(source=src, target=tgt, out_h5=feats, cfg=c["features"], checkpoint=ckpt, data=DATA,
                     runtime=RUNTIME)
    stm_prototypes.run(features_h5=feats, out_path=protos, cfg=c["prototypes"], runtime=RUNTIME)
    class_entropy.run(checkpoint=ckpt, source=src, out_json=ent,
                      cfg=schema_defaults("class_entropy", mode="official_gta5"),
                      data=DATA, runtime=RUNTIME)
    stm_maps.run(features_h5=feats, prototypes=protos, class_entropy_json=ent, source=src, out_h5=maps, cfg=c["maps"])
    return maps


def test_stm_end_to_end(tmp_path, fixed_model) -> None:
    ckpt = tmp_path / "w.pt"
    ckpt.write_bytes(b"x")
    src, tgt = make_gta(tmp_path / "gta", 4), make_cityscapes(tmp_path / "cs", 3)
    maps = _pipeline(tmp_path, src, tgt, ckpt, "a")
    with h5py.File(tmp_path / "af.h5", "r") as f:
        assert f["source"].shape == (4, 4, 6) and f["target"].shape == (3, 4, 6)
        assert [n.decode() for n in f["source_names"][()]] == [f"{k:05d}" for k in range(4)]
        assert list(f.attrs["grid"]) == [2, 2]
    assert torch.load(tmp_path / "ak.pt", weights_only=True)["centroids"].shape == (3, 6)
    with h5py.File(maps, "r") as f:
        assert sorted(f["maps"]) == [f"{k:05d}" for k in range(4)]
        a = f["maps/00000"][()]
        assert a.dtype == np.uint8 and a.shape == (H, W)
        assert f.attrs["momentum"] == 0.99 and f.attrs["k"] == 3
        assert f["maps/00000"].compression == "gzip"
    # bonus off: road pixels (bonus 0.131) lose exactly that much
    maps_nb = _pipeline(tmp_path, src, tgt, ckpt, "b", entropy_bonus=False)
    with h5py.File(maps, "r") as f, h5py.File(maps_nb, "r") as g:
        a, b = f["maps/00001"][()].astype(int), g["maps/00001"][()].astype(int)
    road = (slice(4, H), slice(0, W // 2))
    diff = a[road] - b[road]
    assert (diff[b[road] < 200] >= 32).all() and (diff <= 34).all()
    assert (a[:4] == b[:4]).all()  # void rows: no bonus


def test_stm_maps_order_independent(tmp_path) -> None:
    """Features stored in any order give the same maps: the running scale follows sorted names."""
    from bismap.io import save_torch
    from bismap.stages import stm_maps

    src = make_gta(tmp_path / "gta", 5)
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(5, 4, 3)).astype(np.float32) * np.arange(1, 6)[:, None, None]
    names = [f"{k:05d}" for k in range(5)]
    save_torch(tmp_path / "k.pt", {"format": "bismap-kmeans/1", "centroids": torch.zeros(2, 3, dtype=torch.float64)})
    outs = []
    for tag, perm in (("s", [0, 1, 2, 3, 4]), ("p", [3, 0, 4, 2, 1])):
        fh = tmp_path / f"{tag}.h5"
        with h5py.File(fh, "w") as f:
            f["source"] = feats[perm]
            f["source_names"] = np.array([names[i] for i in perm], dtype=object)
            f.attrs["grid"] = [2, 2]
        out = tmp_path / f"{tag}m.h5"
        stm_maps.run(features_h5=fh, prototypes=tmp_path / "k.pt", class_entropy_json=None, source=src, out_h5=out,
                     cfg=schema_defaults("stm/maps", momentum=0.5, entropy_bonus=False))
        with h5py.File(out, "r") as f:
            outs.append({n: f[f"maps/{n}"][()] for n in names})
    for n in names:
        assert np.array_equal(outs[0][n], outs[1][n])
    with pytest.raises(InputError, match="k.pt"):
        (tmp_path / "k.pt").write_bytes(b"junk")
        stm_maps.run(features_h5=tmp_path / "s.h5", prototypes=tmp_path / "k.pt", class_entropy_json=None,
                     source=src, out_h5=tmp_path / "x.h5", cfg=schema_defaults("stm/maps", entropy_bonus=False))


def test_simclr_extractor_path(tmp_path) -> None:
    """stm.features.extractor simclr: SimCLRResNet + load_pretrained(key 'resnet'), [0,1] input."""
    from bismap.models.simclr import SimCLRResNet
    from bismap.stages import stm_features

    net = SimCLRResNet(50, 1, 0.0)
    torch.save({"resnet": net.state_dict()}, tmp_path / "r50.pth")
    src, tgt = make_gta(tmp_path / "gta", 1), make_cityscapes(tmp_path / "cs", 1)
    out = tmp_path / "f.h5"
    cfg = schema_defaults("stm/features", extractor="simclr", weights=str(tmp_path / "r50.pth"), depth=50, sk_ratio=0.0,
                          image_size=[32, 64], grid=[1, 2])
    stm_features.run(source=src, target=tgt, out_h5=out, cfg=cfg, data=DATA, runtime=RUNTIME)
    with h5py.File(out, "r") as f:
        assert f["source"].shape == (1, 2, 2048)
    with pytest.raises(InputError, match="stm.features.weights"):
        stm_features.run(source=src, target=tgt, out_h5=out, cfg=schema_defaults("stm/features", extractor="simclr"),
                         data=DATA,
                         runtime=RUNTIME)

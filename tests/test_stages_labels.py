"""source_features -> fit_prototypes -> pseudo_labels, and naive_labels, on tiny on-disk data.

A "colour model" whose feature is the local colour and whose logits prefer the nearest class
colour stands in for a trained warm-up network, so the tests can check what is computed
(correct pixels only, per-class shares, label accuracy), not only that it runs. One smoke
test uses a real (untrained) DeepLabV3+ checkpoint through the engine's load_model.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from bismap.io import InputError
from bismap.method.prototypes import load_prototypes
from conftest import RUNTIME, schema_defaults, to_label_ids, write_cityscapes, write_gta

torch.set_num_threads(1)

CLASSES = [0, 2, 8, 10, 13]  # road, building, vegetation, sky, car
COLOURS = {0: (128, 64, 128), 2: (70, 70, 70), 8: (107, 142, 35), 10: (70, 130, 180), 13: (0, 0, 142)}
H, W = 32, 64
DATA = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
ALL_PIXELS = [1.0] * 19  # source_features.class_fractions keeping every correct pixel
NO_ADABN = {"enabled": False}


def _scene(rng: np.random.Generator, shift: int = 0) -> tuple[np.ndarray, np.ndarray]:
    lab = np.zeros((H, W), np.uint8)
    cuts = np.sort(rng.choice(np.arange(4, H - 4, 4), size=3, replace=False))
    bands = [10, 2, 8, 0]
    edges = [0, *cuts, H]
    for b, (a, z) in enumerate(zip(edges[:-1], edges[1:])):
        lab[a:z] = bands[b]
    x0 = int(rng.integers(0, W - 16)) // 4 * 4
    lab[cuts[-1]:, x0:x0 + 16] = 13
    img = np.stack([np.array(COLOURS[c]) for c in lab.reshape(-1)]).reshape(H, W, 3).astype(np.float64)
    img = img + shift + rng.normal(0, 6, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), lab


def _scenes(rng: np.random.Generator, n: int, shift: int = 0):
    for _ in range(n):
        img, lab = _scene(rng, shift)
        yield img, to_label_ids(lab)


def make_gta(root: Path, n: int, seed: int = 0) -> dict:
    return write_gta(root, _scenes(np.random.default_rng(seed), n))


def make_cityscapes(root: Path, n: int, seed: int = 1, shift: int = 12) -> tuple[dict, dict]:
    spec = write_cityscapes(root, _scenes(np.random.default_rng(seed), n, shift), city="city")
    return {**spec, "labels": "none"}, spec


class ColourModel(nn.Module):
    """feature = pooled normalised colour (+2 constant-ish dims), logits = -distance to class colours."""

    feature_dim = 5

    def __init__(self) -> None:
        super().__init__()
        cols = torch.full((19, 3), 1e3)
        for c, rgb in COLOURS.items():
            cols[c] = (torch.tensor(rgb, dtype=torch.float32) / 255 - 0.5) / 0.25
        self.register_buffer("cols", cols)
        self.bn = nn.BatchNorm2d(3)  # gives AdaBN something to adapt
        self.bn.eval()

    def backbone(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return F.avg_pool2d(x, 4), F.avg_pool2d(x, 16)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = F.avg_pool2d(x, 4)
        _ = self.bn(p)
        d = ((p[:, None] - self.cols[None, :, :, None, None]) ** 2).sum(2)
        feat = torch.cat([p, p[:, :2] * 0.5 + 0.01 * torch.sin(p[:, 2:3] * 50)], 1)
        return feat, -d


@pytest.fixture
def colour_model(monkeypatch):
    import bismap.engine.checkpoint as ck

    monkeypatch.setattr(ck, "load_model", lambda path, device="cpu", which="model": ColourModel().eval())


@pytest.fixture
def tiny(tmp_path):
    ckpt = tmp_path / "warmup.pt"
    ckpt.write_bytes(b"placeholder")  # the colour model is patched in; the stage only checks it exists
    src = make_gta(tmp_path / "gta", 6)
    tgt, tgt_gt = make_cityscapes(tmp_path / "cs", 4)
    return tmp_path, ckpt, src, tgt, tgt_gt


def _features(tmp_path, ckpt, src, **cfg) -> Path:
    from bismap.stages import source_features

    out = tmp_path / "feats.h5"
    cfg = schema_defaults("source_features", **{"seed": 3, "batch_size": 4, "class_fractions": ALL_PIXELS, **cfg})
    source_features.run(checkpoint=ckpt, source=src, out_h5=out, cfg=cfg, data=DATA, runtime=RUNTIME)
    return out


def test_source_features_keeps_correct_pixels_only(tiny, colour_model) -> None:
    tmp_path, ckpt, src, _, _ = tiny
    out = _features(tmp_path, ckpt, src)
    with h5py.File(out, "r") as f:
        for c in range(19):
            rows = f[f"class_{c}"][()]
            assert rows.shape[1] == 5 and rows.dtype == np.float32
            if c in CLASSES:
                assert rows.shape[0] > 0
                want = (np.array(COLOURS[c]) / 255 - 0.5) / 0.25  # the class colour, not another one
                assert np.abs(rows[:, :3].mean(0) - want).max() < 0.15
            else:
                assert rows.shape[0] == 0
        n_road = f["class_0"].shape[0]
    out2 = _features(tmp_path, ckpt, src, class_fractions=[0.5] + [1.0] * 18, max_per_class=10)
    with h5py.File(out2, "r") as f:
        assert all(f[f"class_{c}"].shape[0] <= 10 for c in range(19))
        assert f["class_0"].attrs["seen"] == pytest.approx(n_road / 2, rel=0.35)
        first = f["class_2"][()]
    out3 = _features(tmp_path, ckpt, src, class_fractions=[0.5] + [1.0] * 18, max_per_class=10)
    with h5py.File(out3, "r") as f:
        assert np.array_equal(first, f["class_2"][()])  # seeded


def test_min_per_class_keeps_a_starved_class_unthinned(tiny, colour_model) -> None:
    tmp_path, ckpt, src, _, _ = tiny
    with h5py.File(_features(tmp_path, ckpt, src), "r") as f:
        n_road, car = f["class_0"].shape[0], f["class_13"][()]
    thinned = [0.1] + [1.0] * 18
    with h5py.File(_features(tmp_path, ckpt, src, class_fractions=thinned, min_per_class=0), "r") as f:
        assert f["class_0"].shape[0] == pytest.approx(n_road / 10, rel=0.5) and not f["class_0"].attrs["unthinned"]
        assert np.array_equal(f["class_13"][()], car)
    with h5py.File(_features(tmp_path, ckpt, src, class_fractions=thinned, min_per_class=n_road), "r") as f:
        assert f["class_0"].shape[0] == n_road and f["class_0"].attrs["unthinned"]  # every correct road pixel
        assert np.array_equal(f["class_13"][()], car) and not f["class_13"].attrs["unthinned"]
        assert f.attrs["min_per_class"] == n_road


def test_reservoir_is_uniform_and_capped() -> None:
    from bismap.method.feature_banks import ClassReservoir

    counts = np.zeros(100)
    for s in range(300):
        r = ClassReservoir(1, 1, cap=10, seed=s)
        for chunk in torch.arange(100.0).reshape(-1, 1).split(7):
            r.add(0, chunk)
        assert r.rows[0].shape == (10, 1) and r.seen[0] == 100
        assert len(set(r.rows[0][:, 0].tolist())) == 10
        counts[r.rows[0][:, 0].long().numpy()] += 1
    # each of the 100 values should be kept with probability 0.1 -> 30 of 300 runs
    assert counts.min() > 10 and counts.max() < 55
    assert abs(counts[:50].sum() - counts[50:].sum()) < 0.2 * counts.sum()


def proto_cfg(**over) -> dict:
    """The schema's `prototypes` defaults (what the workflow passes) on the CPU, with overrides."""
    return schema_defaults("prototypes", **{"device": "cpu", **over})


def test_fit_prototypes_reduces_and_skips(tmp_path) -> None:
    from bismap.stages import fit_prototypes

    rng = np.random.default_rng(0)
    bank = tmp_path / "bank.h5"
    with h5py.File(bank, "w") as f:
        for c in range(19):
            n = {0: 200, 1: 5}.get(c, 0)
            f.create_dataset(f"class_{c}", data=rng.normal(c, 1, size=(n, 4)).astype(np.float32))
    out = tmp_path / "gmm.pt"
    fit_prototypes.run(features_h5=bank, out_path=out, cfg=proto_cfg(components=4, max_samples=150, seed=0,
                                                                    kmeans_n_init=2))
    obj = torch.load(out, weights_only=True)
    assert obj["format"] == "bismap-gmm/1" and obj["feature_dim"] == 4
    assert set(obj["classes"]) == {0, 1} and obj["components"] == {0: 4, 1: 2}
    assert obj["skipped"] == [c for c in range(19) if c not in (0, 1)]
    gmms, _ = load_prototypes(out)
    assert gmms[0].means_.mean().item() == pytest.approx(0, abs=0.3)
    with pytest.raises(InputError, match="bank.h5"):
        with h5py.File(bank, "a") as f:
            del f["class_18"]
        fit_prototypes.run(features_h5=bank, out_path=out, cfg=proto_cfg())


def test_upsampling_matches_bilinear_align_corners() -> None:
    from bismap.stages.pseudo_labels import upsampled_rows

    feat = torch.randn(3, 5, 7)
    ref = F.interpolate(feat[None], size=(19, 29), mode="bilinear", align_corners=True)[0]
    got = torch.cat([c for _, c in upsampled_rows(feat, (19, 29), rows_per_chunk=4)]).reshape(19, 29, 3)
    assert torch.allclose(got.permute(2, 0, 1), ref, atol=1e-5)


def test_percentile_selection_leaves_requested_share() -> None:
    from bismap.method.labelling import apply_selection, percentile_thresholds, sample_scores

    rng = np.random.default_rng(0)
    labels = [rng.choice([1, 4, 7], size=(20, 30), p=[0.6, 0.3, 0.1]).astype(np.uint8) for _ in range(5)]
    scores = [rng.normal(lab * 10.0, 3.0) for lab in labels]  # classes on different scales
    pools: dict = {}
    for lab, sc in zip(labels, scores):
        sample_scores(lab, sc, None, rng, pools)
    thr = percentile_thresholds(pools, 70.0)
    kept = {c: 0 for c in (1, 4, 7)}
    total = {c: 0 for c in (1, 4, 7)}
    for lab, sc in zip(labels, scores):
        out = apply_selection(lab, sc, "percentile", 0.0, thr)
        for c in kept:
            kept[c] += int((out == c).sum())
            total[c] += int((lab == c).sum())
        assert set(np.unique(out)) <= {1, 4, 7, 255}
    for c in kept:
        assert kept[c] / total[c] == pytest.approx(0.30, abs=0.01)


def test_balanced_selection_keeps_every_confident_pixel_and_the_top_of_unsure_classes() -> None:
    from bismap.method.labelling import apply_selection, balanced_thresholds, percentile_thresholds, sample_scores

    rng = np.random.default_rng(1)
    # class 2: the network is sure (scores near 0.97); class 5: never above 0.8; class 9: unseen in the pools
    lab = rng.choice([2, 5], size=(40, 50), p=[0.8, 0.2]).astype(np.uint8)
    sc = np.where(lab == 2, rng.uniform(0.85, 1.0, lab.shape), rng.uniform(0.3, 0.8, lab.shape))
    pools: dict = {}
    sample_scores(lab, sc, None, rng, pools)
    thr = balanced_thresholds(percentile_thresholds(pools, 50.0), 0.9)
    assert thr[2] == 0.9 and thr[5] == pytest.approx(np.median(sc[lab == 5]), abs=1e-9)
    out = apply_selection(lab, sc, "balanced", 0.9, thr)
    confident = apply_selection(lab, sc, "confidence", 0.9, None)
    assert np.all(out[confident != 255] == confident[confident != 255])  # a superset of the global threshold
    assert (out == 5).sum() == pytest.approx(0.5 * (lab == 5).sum(), abs=1)  # half of the unsure class
    assert (confident == 5).sum() == 0
    lab[0, 0], sc[0, 0], lab[0, 1], sc[0, 1] = 9, 0.95, 9, 0.5  # no class threshold: the global one applies
    out = apply_selection(lab, sc, "balanced", 0.9, thr)
    assert out[0, 0] == 9 and out[0, 1] == 255


def test_replayable_pass_replays_within_its_budget_and_recomputes_past_it() -> None:
    from bismap.method.labelling import replayable

    calls = []

    def produce():
        calls.append(1)
        for i in range(4):
            yield i, np.full(256, i, np.uint8)   # 256 bytes per result

    passes = replayable(produce, budget_mb=2048 / 2 ** 20)   # 2 KiB: all four fit
    first, second = list(passes()), list(passes())
    assert len(calls) == 1 and all(a[1] is b[1] for a, b in zip(first, second))
    calls.clear()
    passes = replayable(produce, budget_mb=512 / 2 ** 20)    # two of four fit: every pass recomputes
    assert [i for i, _ in passes()] == [i for i, _ in passes()] == [0, 1, 2, 3] and len(calls) == 2
    calls.clear()
    passes = replayable(produce, budget_mb=1.0)
    next(iter(passes()))                                     # an abandoned pass keeps nothing
    assert [i for i, _ in passes()] == [0, 1, 2, 3] and len(calls) == 2
    calls.clear()
    passes = replayable(produce, budget_mb=0)
    list(passes()), list(passes())
    assert len(calls) == 2


def test_label_stages_write_the_same_labels_with_and_without_the_replay(tiny, colour_model, monkeypatch) -> None:
    """The class-balanced (and prior-aligned) label stages read the target once when their passes fit in
    runtime.label_cache_mb, and write exactly the labels they write when every pass recomputes."""
    import bismap.stages.pseudo_labels as pseudo_labels
    import bismap.stages.teacher_labels as teacher_labels
    from bismap.stages import fit_prototypes, naive_labels

    tmp_path, ckpt, src, tgt, tgt_gt = tiny
    gmm = tmp_path / "gmm.pt"
    fit_prototypes.run(features_h5=_features(tmp_path, ckpt, src), out_path=gmm,
                       cfg=proto_cfg(components=2, seed=0, kmeans_n_init=2))
    forwards = []
    real, real_forward = teacher_labels.item_logits, pseudo_labels.forward
    monkeypatch.setattr(teacher_labels, "item_logits", lambda *a, **k: (forwards.append(1), real(*a, **k))[1])
    monkeypatch.setattr(pseudo_labels, "forward", lambda *a, **k: (forwards.append(1), real_forward(*a, **k))[1])
    prior = tmp_path / "prior.json"
    prior.write_text(json.dumps({"format": "bismap-class-prior/1", "pixels": [1000 - 40 * c for c in range(19)]}))
    balanced = {"scales": [1.0], "flip": True, "adabn": NO_ADABN, "selection": "balanced", "threshold": 0.9,
                "percentile": 50.0, "sample_pixels": None, "seed": 0, "align_prior": False}
    settings = schema_defaults("prior_alignment", strength=1.0, iterations=3, sample_pixels=500, seed=0)
    aligned = {**balanced, "align_prior": True}
    naive_cfg = schema_defaults("naive", selection="balanced", percentile=50.0, sample_pixels=None, adabn=NO_ADABN)
    written: dict = {}
    for cache_mb in (0, 64):
        runtime = {**RUNTIME, "label_cache_mb": cache_mb}
        for name, cfg, passes in (("balanced", balanced, 2), ("aligned", aligned, 3)):
            forwards.clear()
            teacher_labels.run(checkpoint=ckpt, target=tgt, target_gt=tgt_gt, out_dir=tmp_path / f"{name}{cache_mb}",
                               out_quality=tmp_path / f"{name}{cache_mb}.json", cfg=cfg, data=DATA, runtime=runtime,
                               prior=prior, alignment=settings)
            assert len(forwards) == (passes if cache_mb == 0 else 1)
        naive_labels.run(checkpoint=ckpt, target=tgt, target_gt=tgt_gt, out_dir=tmp_path / f"naive{cache_mb}",
                         out_quality=tmp_path / f"naive{cache_mb}.json", cfg=naive_cfg, data=DATA, runtime=runtime)
        forwards.clear()
        pseudo_labels.run(checkpoint=ckpt, prototypes=gmm, target=tgt, target_gt=tgt_gt,
                          out_dir=tmp_path / f"pseudo{cache_mb}", out_quality=tmp_path / f"pseudo{cache_mb}.json",
                          data=DATA, runtime=runtime, prior=prior, alignment=settings,
                          cfg=schema_defaults("pseudo_labels", rule="agree", selection="balanced", percentile=50.0,
                                              adabn=NO_ADABN, align_prior=True))
        assert len(forwards) == 4 * (3 if cache_mb == 0 else 1)   # alignment, thresholds, labels: 4 images each
        names = ("balanced", "aligned", "naive", "pseudo")
        written[cache_mb] = {f"{name}/{p.name}": p.read_bytes() for name in names
                             for p in sorted((tmp_path / f"{name}{cache_mb}").iterdir())}
        written[cache_mb].update({name: json.loads((tmp_path / f"{name}{cache_mb}.json").read_text())
                                  for name in names})
    assert written[0] == written[64] and len(written[0]) == 4 * 4 + 4
    assert "prior_offset" in written[0]["aligned"] and written[0]["aligned"] != written[0]["balanced"]
    # the aligned stages report what they aimed at and, with target-train labels, how far it was from the truth
    for name in ("aligned", "pseudo"):
        report = written[0][name]["prior_alignment"]
        assert report["target"] == "source" and report["em_iterations"] is None
        assert report["true_target_frequency"] == written[0][name]["gt_class_frequency"]
        assert set(report["total_variation_to_truth"]) == {"aimed_prior", "source_prior", "mean_prediction_before",
                                                           "mean_prediction_after"}
        assert report["aimed_prior"] == report["source_prior"]
    assert "prior_alignment" not in written[0]["balanced"] and "prior_alignment" not in written[0]["naive"]


def test_pseudo_labels_end_to_end(tiny, colour_model) -> None:
    from bismap.stages import fit_prototypes, pseudo_labels

    tmp_path, ckpt, src, tgt, tgt_gt = tiny
    feats = _features(tmp_path, ckpt, src)
    gmm = tmp_path / "gmm.pt"
    fit_prototypes.run(features_h5=feats, out_path=gmm, cfg=proto_cfg(components=2, seed=0, kmeans_n_init=2))
    out_dir, q = tmp_path / "pl", tmp_path / "q.json"
    cfg = schema_defaults("pseudo_labels", rule="gmm", selection="percentile", percentile=25.0, sample_pixels=None,
                          chunk_pixels=500, adabn={"enabled": True, "max_images": 2, "batch_size": 2})
    pseudo_labels.run(checkpoint=ckpt, prototypes=gmm, target=tgt, target_gt=tgt_gt, out_dir=out_dir,
                      out_quality=q, cfg=cfg, data=DATA, runtime=RUNTIME)
    files = sorted(p.name for p in out_dir.iterdir())
    assert files == [f"city_000000_{k:06d}_leftImg8bit.png" for k in range(4)]
    quality = json.loads(q.read_text())
    assert quality["images"] == 4
    assert quality["coverage"] == pytest.approx(0.75, abs=0.02)  # 25th percentile dropped per class
    assert quality["accuracy"] > 0.95
    lab = np.array(Image.open(out_dir / files[0]))
    assert lab.shape == (H, W) and set(np.unique(lab)) <= set(CLASSES) | {255}
    # the original's global log-likelihood threshold: -inf keeps everything, +inf nothing
    def loglik(thr, runtime):
        pseudo_labels.run(checkpoint=ckpt, prototypes=gmm, target=tgt, target_gt=None, out_dir=out_dir,
                          out_quality=q, data=DATA, runtime=runtime,
                          cfg=schema_defaults("pseudo_labels", rule="gmm", selection="loglik", threshold=thr,
                                              adabn=NO_ADABN))

    loglik(-1e9, RUNTIME)
    quality = json.loads(q.read_text())
    assert quality["coverage"] == pytest.approx(1.0) and quality["accuracy"] is None
    # an empty label set stops the stage (runtime.min_label_coverage), the earlier labels stay as they were
    before = {f.name: f.read_bytes() for f in out_dir.iterdir()}, q.read_bytes()
    with pytest.raises(InputError, match=r"pl: pseudo_labels gave labels to 0\.00% of the target pixels, under "
                                         r"runtime\.min_label_coverage \(1\.00%\); nothing was written"):
        loglik(1e9, RUNTIME)
    assert ({f.name: f.read_bytes() for f in out_dir.iterdir()}, q.read_bytes()) == before
    loglik(1e9, {**RUNTIME, "min_label_coverage": 0})                # 0: accepted
    quality = json.loads(q.read_text())
    assert quality["coverage"] == 0.0 and quality["accuracy"] is None
    # balanced: confidence thresholds per class, none above the global one (null = 0.9)
    pseudo_labels.run(checkpoint=ckpt, prototypes=gmm, target=tgt, target_gt=tgt_gt, out_dir=out_dir,
                      out_quality=q, data=DATA, runtime=RUNTIME,
                      cfg=schema_defaults("pseudo_labels", rule="agree", selection="balanced", percentile=50.0,
                                          adabn=NO_ADABN))
    quality = json.loads(q.read_text())
    thresholds = quality["class_thresholds"]
    assert set(thresholds) and all(0.0 < t <= 0.9 for t in thresholds.values())
    assert quality["coverage"] >= 0.5 - 0.02


def test_naive_labels_confidence_and_percentile(tiny, colour_model) -> None:
    from bismap.stages import naive_labels

    tmp_path, ckpt, _, tgt, tgt_gt = tiny
    out_dir, q = tmp_path / "naive", tmp_path / "nq.json"
    naive_labels.run(checkpoint=ckpt, target=tgt, target_gt=tgt_gt, out_dir=out_dir, out_quality=q,
                     cfg=schema_defaults("naive", threshold=0.0, adabn=NO_ADABN), data=DATA, runtime=RUNTIME)
    quality = json.loads(q.read_text())
    assert quality["coverage"] == 1.0 and quality["accuracy"] > 0.9
    naive_labels.run(checkpoint=ckpt, target=tgt, target_gt=tgt_gt, out_dir=out_dir, out_quality=q,
                     cfg=schema_defaults("naive", selection="percentile", percentile=50.0, sample_pixels=None,
                                         adabn=NO_ADABN), data=DATA, runtime=RUNTIME)
    assert json.loads(q.read_text())["coverage"] == pytest.approx(0.5, abs=0.05)


def test_real_checkpoint_smoke(tmp_path) -> None:
    """The real path: engine load_model on a tiny untrained DeepLabV3+ checkpoint."""
    from bismap.models import build_model
    from bismap.stages import naive_labels, source_features

    cfg = schema_defaults("model", backbone="resnet18", aspp_channels=8, decoder_channels=8, low_level_channels=4)
    torch.manual_seed(0)
    model = build_model(cfg)
    ckpt = tmp_path / "w.pt"
    torch.save({"format": "bismap-checkpoint/1", "model_config": cfg, "model": model.state_dict(), "ema": None}, ckpt)
    src = make_gta(tmp_path / "gta", 2)
    tgt, _ = make_cityscapes(tmp_path / "cs", 2)
    out = tmp_path / "f.h5"
    source_features.run(checkpoint=ckpt, source=src, out_h5=out, data=DATA, runtime=RUNTIME,
                        cfg=schema_defaults("source_features", class_fractions=ALL_PIXELS))
    with h5py.File(out, "r") as f:
        assert f["class_0"].shape[1] == 8
        assert sum(f[f"class_{c}"].shape[0] for c in range(19)) >= 0
    naive_labels.run(checkpoint=ckpt, target=tgt, target_gt=None, out_dir=tmp_path / "n",
                     out_quality=tmp_path / "q.json", cfg=schema_defaults("naive", threshold=0.0, adabn=NO_ADABN),
                     data=DATA, runtime=RUNTIME)
    assert len(list((tmp_path / "n").iterdir())) == 2


def test_missing_inputs_name_the_file(tmp_path) -> None:
    from bismap.stages import fit_prototypes, pseudo_labels

    with pytest.raises(InputError, match="nope.h5"):
        fit_prototypes.run(features_h5=tmp_path / "nope.h5", out_path=tmp_path / "x.pt", cfg=proto_cfg())
    (tmp_path / "bad.pt").write_bytes(b"not torch")
    with pytest.raises(InputError, match="bad.pt"):
        load_prototypes(tmp_path / "bad.pt")
    with pytest.raises(InputError, match="nope.pt"):
        pseudo_labels.run(checkpoint=tmp_path / "c.pt", prototypes=tmp_path / "nope.pt", target={}, target_gt=None,
                          out_dir=tmp_path / "o", out_quality=tmp_path / "q.json", cfg=schema_defaults("pseudo_labels"),
                          data=DATA, runtime=RUNTIME)


def test_normalized_prototypes_score_unit_length_features(tmp_path) -> None:
    """prototypes.normalize: the fit sees unit rows and records it; the scorer scales each pixel
    feature to unit length first (here the output size equals the feature size, so upsampling is
    the identity and the result must equal scoring pre-normalised features the plain way)."""
    from bismap.method.prototypes import unit_rows
    from bismap.stages import fit_prototypes
    from bismap.stages.pseudo_labels import gmm_predictor

    rng = np.random.default_rng(0)
    bank = tmp_path / "bank.h5"
    with h5py.File(bank, "w") as f:
        for c in range(19):
            n = 300 if c in (0, 1) else 0
            direction = np.eye(3, dtype=np.float32)[c % 3]
            rows = direction * rng.uniform(1, 20, size=(n, 1)) + rng.normal(0, 0.05, size=(n, 3))
            f.create_dataset(f"class_{c}", data=rows.astype(np.float32))
    out = tmp_path / "gmm.pt"
    fit_prototypes.run(features_h5=bank, out_path=out, cfg=proto_cfg(components=2, normalize=True, seed=0,
                                                                    kmeans_n_init=2))
    gmms, meta = load_prototypes(out)
    assert meta["normalize"] is True
    assert torch.allclose(gmms[0].means_.norm(dim=1), torch.ones(2, dtype=gmms[0].means_.dtype), atol=0.05)

    feat = torch.tensor(rng.normal(0, 1, size=(1, 3, 4, 5)) * 10, dtype=torch.float32)
    feat[0, :, 0, 0] = torch.tensor([0.0, 30.0, 0.1])  # a long class-1 direction
    logits = torch.zeros(1, 19, 4, 5)

    class Stub(nn.Module):
        def __init__(self, f):
            super().__init__()
            self.f = f

        def forward(self, x):
            return self.f, logits

    item = {"image": np.zeros((4, 5, 3), np.uint8)}
    common = dict(mean=[0, 0, 0], std=[1, 1, 1], device=torch.device("cpu"), flip=False, chunk_pixels=7,
                  classes=None)
    got_label, got_score = gmm_predictor(Stub(feat), gmms, normalize=True, **common)(item)
    ref_label, ref_score = gmm_predictor(Stub(unit_rows(feat)), gmms, **common)(item)
    assert np.array_equal(got_label, ref_label) and np.allclose(got_score, ref_score, rtol=1e-4, atol=1e-3)
    assert got_label[0, 0] == 1


def test_agree_rule_vetoes_pixels_where_network_and_gmms_differ() -> None:
    """rule agree: the GMMs' class survives only where the network's argmax is the same class."""
    from bismap.method.prototypes import DiagonalGMM
    from bismap.stages.pseudo_labels import gmm_predictor

    gen = torch.Generator().manual_seed(0)
    gmms = {c: DiagonalGMM(n_components=1, seed=0).fit(torch.randn(200, 2, generator=gen) * 0.3 + 5.0 * c)
            for c in (0, 1)}
    feat = torch.tensor([[0.0, 0.0], [0.0, 0.0], [5.0, 5.0], [5.0, 5.0]]).T.reshape(1, 2, 2, 2)
    logits = torch.full((1, 19, 2, 2), -5.0)
    net = [0, 1, 1, 0]  # the network agrees with the GMMs (0, 0, 1, 1) on pixels 0 and 2 only
    for i, c in enumerate(net):
        logits[0, c, i // 2, i % 2] = 5.0 if i < 2 else 1.0

    class Stub(nn.Module):
        def forward(self, x):
            return feat, logits

    item = {"image": np.zeros((2, 2, 3), np.uint8)}
    common = dict(mean=[0, 0, 0], std=[1, 1, 1], device=torch.device("cpu"), flip=False, chunk_pixels=100,
                  classes=None)
    label, score = gmm_predictor(Stub(), gmms, **common)(item)
    assert label.tolist() == [[0, 0], [1, 1]] and np.all(score > -10)  # log-likelihoods near the means
    label, score = gmm_predictor(Stub(), gmms, rule="agree", score="confidence", **common)(item)
    assert label.tolist() == [[0, 255], [1, 255]]
    label, _ = gmm_predictor(Stub(), gmms, rule="network", **common)(item)
    assert label.tolist() == [[0, 1], [1, 0]]
    p_hi = 1 / (1 + 18 * math.exp(-10.0))  # softmax of +5 against eighteen -5
    p_lo = 1 / (1 + 18 * math.exp(-6.0))
    assert score[0, 0] == pytest.approx(p_hi) and score[1, 0] == pytest.approx(p_lo)


def test_write_labels_keeps_every_pixel_without_selection_and_names_the_missing_truth(tmp_path) -> None:
    """mode "none" (the teacher's argmax) writes the labels unchanged; an image without ground truth
    stops the pass with its ground-truth root and file name, and leaves no label folder behind."""
    from bismap.data.labels import read_trainid_png
    from bismap.method.labelling import write_labels

    label = np.array([[0, 2], [8, 13]], np.uint8)
    score = np.array([[0.1, 0.9], [0.2, 0.95]], np.float32)

    class Truth:
        root = tmp_path / "gt_root"
        names = ["a"]

        def __getitem__(self, i):
            return {"label": label}

    counts = write_labels([("a", "a.png", label, score)], 1, Truth(), mode="none", threshold=None, class_thr=None,
                          out_dir=tmp_path / "none", stage="test", min_coverage=None)
    assert np.array_equal(read_trainid_png(tmp_path / "none" / "a.png"), label)
    assert counts.summary()["coverage"] == 1.0
    confident = write_labels([("a", "a.png", label, score)], 1, None, mode="confidence", threshold=0.5,
                             class_thr=None, out_dir=tmp_path / "conf", stage="test", min_coverage=None)
    assert np.array_equal(read_trainid_png(tmp_path / "conf" / "a.png"), np.array([[255, 2], [255, 13]]))
    assert confident.summary()["coverage"] == 0.5
    with pytest.raises(InputError, match=r"gt_root: no ground truth for target image b\.png"):
        write_labels([("b", "b.png", label, score)], 1, Truth(), mode="none", threshold=None, class_thr=None,
                     out_dir=tmp_path / "missing", stage="test", min_coverage=None)
    assert not (tmp_path / "missing").exists()


def test_target_features_keep_confident_target_pixels_of_the_predicted_class(tiny, colour_model) -> None:
    """Without labels, a target pixel joins the bank of the network's class where its softmax passes the
    threshold: the rows are the class colour, and a higher threshold keeps a subset."""
    from bismap.method.feature_banks import confident_pixels
    from bismap.stages import target_features

    tmp_path, ckpt, _, tgt, _ = tiny
    counts = {}
    for thr in (0.5, 0.9):
        out = tmp_path / f"target_{thr}.h5"
        cfg = schema_defaults("target_features", threshold=thr, seed=3)
        target_features.run(checkpoint=ckpt, target=tgt, out_h5=out, cfg=cfg, adabn=NO_ADABN, data=DATA,
                            runtime=RUNTIME)
        with h5py.File(out, "r") as f:
            counts[thr] = [f[f"class_{c}"].shape[0] for c in range(19)]
            for c in CLASSES:
                rows = f[f"class_{c}"][()]
                want = (np.array(COLOURS[c]) / 255 - 0.5) / 0.25 + 12 / 255 / 0.25  # the target's colour shift
                assert rows.shape[1] == 5 and (len(rows) > 0 or thr > 0.5)
                assert len(rows) == 0 or np.abs(rows[:, :3].mean(0) - want).max() < 0.15
    assert all(counts[0.5][c] == 0 for c in range(19) if c not in CLASSES)
    assert sum(counts[0.9]) > 0 and all(a >= b for a, b in zip(counts[0.5], counts[0.9]))
    assert sum(counts[0.5]) > sum(counts[0.9])
    with pytest.raises(InputError, match="target_features.threshold"):
        target_features.run(checkpoint=ckpt, target=tgt, out_h5=tmp_path / "none.h5", cfg={**cfg, "threshold": 0.99},
                            adabn=NO_ADABN, data=DATA, runtime=RUNTIME)
    assert not (tmp_path / "none.h5").exists()
    feat = torch.arange(8, dtype=torch.float32).reshape(1, 2, 2, 2)
    logits = torch.tensor([[[[5.0, 0.0], [0.0, 0.0]], [[0.0, 5.0], [0.0, 0.1]]]])  # [1, 2 classes, 2, 2]
    logits = torch.cat([logits, torch.full((1, 17, 2, 2), -30.0)], 1)
    kept = confident_pixels(feat, logits, 0.9)
    assert sorted(kept) == [0, 1] and kept[0].tolist() == [[0.0, 4.0]] and kept[1].tolist() == [[1.0, 5.0]]


def test_fit_on_picks_each_class_s_bank(tmp_path) -> None:
    """both: a class on its source and target rows; target: on its target rows, or on its source rows
    when it has fewer target rows than target_min_rows; a bank fit_on needs must be given."""
    from bismap.stages import fit_prototypes

    rng = np.random.default_rng(0)
    banks = {}
    for name, (n0, n1), dim in (("source", (40, 30), 4), ("target", (30, 6), 4), ("wide", (10, 0), 5)):
        banks[name] = tmp_path / f"{name}.h5"
        with h5py.File(banks[name], "w") as f:
            for c in range(19):
                n = {0: n0, 1: n1}.get(c, 0)
                f.create_dataset(f"class_{c}", data=rng.normal(c, 1, size=(n, dim)).astype(np.float32))

    def fit(source, target, **cfg):
        out = tmp_path / "gmm.pt"
        paths = [p for p in (source, target) if p is not None]
        fit_prototypes.run(features_h5=paths[0] if len(paths) == 1 else paths, out_path=out,
                           cfg=proto_cfg(components=16, seed=0, kmeans_n_init=2, **cfg))
        return torch.load(out, weights_only=True)["components"]  # K = rows // 2 below 32 rows

    assert fit(banks["source"], None) == {0: 16, 1: 15}
    assert fit(banks["source"], banks["target"], fit_on="both") == {0: 16, 1: 16}  # 70 and 36 rows
    assert fit(None, banks["target"], fit_on="target") == {0: 15, 1: 3}
    assert fit(banks["source"], banks["target"], fit_on="target", target_min_rows=10) == {0: 15, 1: 15}
    with pytest.raises(InputError, match="fit_on: both reads the source and target feature banks, got 1"):
        fit(banks["source"], None, fit_on="both")
    with pytest.raises(InputError, match="different dimensions"):
        fit(banks["source"], banks["wide"], fit_on="both")

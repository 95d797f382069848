"""Training and inference stages (warmup, self-training, teacher labels, distillation, evaluate) end to
end on tiny on-disk datasets in the real GTA5 / Cityscapes layouts (32x64 images, resnet18 with
16-channel heads, a few iterations, one thread)."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from bismap.io import InputError
from conftest import RUNTIME, TINY_MODEL, schema_defaults, write_cityscapes, write_gta
from conftest import constant_checkpoint as tiny_constant_checkpoint

H, W = 32, 64
ROAD_ID, SKY_ID, POLE_ID = 7, 23, 17          # Cityscapes label ids
ROAD, SKY, POLE = 0, 10, 5                   # trainIds
ROAD_RGB, SKY_RGB = (200, 40, 40), (40, 40, 200)

MODEL = TINY_MODEL
AUGMENT = {"scale": [1.0, 1.0], "crop": [H, W], "flip": True,
           "jitter": {"brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.0}, "crop_retries": 10}
DATA = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
RUNTIME_T = {**RUNTIME, "log_every": 1, "checkpoint_every": 1000}  # every iteration logged, no resume files
SCE = {"alpha": 0.1, "beta": 1.0}
STRONG = {"ops": 2, "magnitude": 10, "cutout": 0.2}


def train_cfg(iterations: int, **kw) -> dict:
    return schema_defaults("train", **{"iterations": iterations, "batch_size": 2, "lr": 0.01, "weight_decay": 0.0,
                                       "warmup_iters": 0, "min_lr": 0.0, "amp": "off", "seed": 3, **kw})


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------------
# tiny datasets in the real layouts


def _scene(rng: np.random.Generator, pole: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Red road / blue sky split at a random column (class is a function of colour, not position)."""
    cut = int(rng.integers(16, 48))
    left_road = bool(rng.integers(0, 2))
    ids = np.full((H, W), SKY_ID, np.uint8)
    ids[:, :cut] = ROAD_ID if left_road else SKY_ID
    ids[:, cut:] = SKY_ID if left_road else ROAD_ID
    if pole:
        ids[:, 2:4] = POLE_ID
    rgb = np.where((ids == ROAD_ID)[..., None], np.array(ROAD_RGB), np.array(SKY_RGB))
    rgb = np.clip(rgb + rng.normal(0, 8, rgb.shape), 0, 255).astype(np.uint8)
    return rgb, ids


def make_gta(root: Path, n: int = 4, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {**write_gta(root, (_scene(rng) for _ in range(n)), first=1), "size": None}


def make_cityscapes(root: Path, split: str = "train", n: int = 4, seed: int = 1, pole: bool = False) -> dict:
    rng = np.random.default_rng(seed)
    return {**write_cityscapes(root, (_scene(rng, pole=pole) for _ in range(n)), split=split), "size": None}


def write_labels(folder: Path, spec: dict, value_fn) -> dict:
    """A pseudo-label folder `<folder>/<image file name>` for every image of `spec`."""
    from bismap.data import open_dataset
    from bismap.data.labels import save_label_png

    ds = open_dataset({**spec, "labels": None})
    folder.mkdir(parents=True)
    for i in range(len(ds)):
        item = ds[i]
        save_label_png(folder / item["file"], value_fn(item))
    return {**spec, "labels": str(folder)}


def write_stm(path: Path, spec: dict, value: int) -> Path:
    from bismap.data import open_dataset

    ds = open_dataset(spec)
    with h5py.File(path, "w") as f:
        for i in range(len(ds)):
            f.create_dataset(f"maps/{ds.names[i]}", data=np.full((H, W), value, np.uint8))
    return path


def losses_logged(text: str) -> list[dict[str, float]]:
    """The trainer's progress lines -> [{loss name: value}] per logged window."""
    rows = []
    for line in text.splitlines():
        m = re.match(r"\[\d+/\d+\].*?\| (.*?) \| lr", line)
        if m:
            tokens = m.group(1).split()
            rows.append({tokens[i]: float(tokens[i + 1]) for i in range(0, len(tokens), 2)})
    return rows


@pytest.fixture
def tiny(tmp_path):
    src = make_gta(tmp_path / "gta5")
    tgt = make_cityscapes(tmp_path / "cityscapes", "train", seed=1)
    val = make_cityscapes(tmp_path / "cityscapes", "val", seed=2, n=2)
    return {"source": src, "target": tgt, "val": val, "tmp": tmp_path}


def constant_checkpoint(path: Path, cls: int) -> Path:
    """conftest.constant_checkpoint with this module's normalisation stored, as training stages store it."""
    return tiny_constant_checkpoint(path, cls, data=DATA)


# ---------------------------------------------------------------------------------------------
# warmup


@pytest.fixture(scope="module")
def trained(module_dir):
    """One 20-iteration warm-up on the trivially learnable source, shared by the tests that need it."""
    from bismap.stages import warmup

    torch.set_num_threads(1)
    root = module_dir
    src = make_gta(root / "gta5")
    val = make_cityscapes(root / "cityscapes", "val", seed=2, n=2)
    out = root / "warmup.pt"
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        warmup.run(source=src, out_checkpoint=out, model=MODEL, train=train_cfg(20), augment=AUGMENT, data=DATA,
                   runtime=RUNTIME_T, threads=1)
    return {"checkpoint": out, "log": log.getvalue(), "val": val, "tmp": root}


def test_warmup_reduces_training_loss(trained) -> None:
    rows = losses_logged(trained["log"])
    assert len(rows) == 20
    first = np.mean([r["ce"] for r in rows[:3]])
    last = np.mean([r["ce"] for r in rows[-3:]])
    assert last < 0.5 * first, (first, last)
    out = trained["checkpoint"]
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["iteration"] == 20 and ckpt["ema"] is None
    assert ckpt["data"] == {"mean": DATA["mean"], "std": DATA["std"]}
    assert not Path(str(out) + ".resume.pt").exists()


def test_killed_warmup_resumes_to_the_same_weights(tiny, monkeypatch, capsys) -> None:
    """The fingerprint is stable across runs, so a killed job continues from its resume file."""
    import bismap.method.losses
    from bismap.stages import warmup

    kw = dict(source=tiny["source"], model=MODEL, train=train_cfg(3), augment=AUGMENT,
              data=DATA, runtime={**RUNTIME_T, "checkpoint_every": 1}, threads=1)
    ref = tiny["tmp"] / "ref.pt"
    warmup.run(out_checkpoint=ref, **kw)
    calls = {"n": 0}
    real = bismap.method.losses.weighted_cross_entropy

    def dies_at_third(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return real(*a, **k)

    out = tiny["tmp"] / "killed.pt"
    monkeypatch.setattr(bismap.method.losses, "weighted_cross_entropy", dies_at_third)
    with pytest.raises(KeyboardInterrupt):
        warmup.run(out_checkpoint=out, **kw)
    assert Path(str(out) + ".resume.pt").exists() and not out.exists()
    monkeypatch.setattr(bismap.method.losses, "weighted_cross_entropy", real)
    capsys.readouterr()
    warmup.run(out_checkpoint=out, **kw)
    assert "resuming from" in capsys.readouterr().out
    a, b = torch.load(ref, weights_only=True)["model"], torch.load(out, weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_warmup_is_deterministic_and_fingerprint_tracks_config(tiny) -> None:
    from bismap.engine.fingerprint import fingerprint
    from bismap.stages import warmup

    a, b = tiny["tmp"] / "a.pt", tiny["tmp"] / "b.pt"
    for out in (a, b):
        warmup.run(source=tiny["source"], out_checkpoint=out, model=MODEL, train=train_cfg(2), augment=AUGMENT,
                   data=DATA, runtime=RUNTIME_T, threads=1)
    sa, sb = torch.load(a, weights_only=True)["model"], torch.load(b, weights_only=True)["model"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    f1 = fingerprint(train=train_cfg(2), model=MODEL)
    assert f1 == fingerprint(model=dict(MODEL), train=train_cfg(2))
    assert f1 != fingerprint(train=train_cfg(3), model=MODEL)
    # speed-only keys do not invalidate a resume


def test_warmup_as_oracle_on_target_ground_truth(tiny) -> None:
    from bismap.stages import warmup

    out = tiny["tmp"] / "oracle.pt"
    warmup.run(source=tiny["target"], out_checkpoint=out, model=MODEL, train=train_cfg(2), augment=AUGMENT,
               data=DATA, runtime=RUNTIME_T, threads=1)
    assert torch.load(out, weights_only=True)["iteration"] == 2


# ---------------------------------------------------------------------------------------------
# self-training


def st_cfg(weight: float, use_stm: bool) -> dict:
    return schema_defaults("self_training", init="fresh", use_stm=use_stm, sce=dict(SCE),
                           consistency={"weight": weight, "rampup": 2, "ema_decay": 0.9}, strong=dict(STRONG))


def test_self_training_full_losses(tiny, capsys, monkeypatch) -> None:
    from bismap.stages import self_training

    target = write_labels(tiny["tmp"] / "pseudo", tiny["target"], lambda it: it["label"])
    stm = write_stm(tiny["tmp"] / "stm.h5", tiny["source"], 0)   # all-zero STM: weighted source CE must vanish
    seen = []
    build_view = self_training.build_view
    monkeypatch.setattr(self_training, "build_view", lambda *a, **k: seen.append(k) or build_view(*a, **k))
    out = tiny["tmp"] / "st.pt"
    self_training.run(source=tiny["source"], target=target, stm_maps=stm, out_checkpoint=out, model=MODEL,
                      train=train_cfg(3), augment=AUGMENT, cfg=st_cfg(30.0, True), data=DATA, runtime=RUNTIME_T,
                      threads=1)
    rows = losses_logged(capsys.readouterr().out)
    assert [set(r) for r in rows] == [{"source_ce", "target_sce", "consistency", "total"}] * 3
    assert all(r["source_ce"] == 0.0 for r in rows)
    assert all(r["consistency"] >= 0.0 for r in rows)
    assert seen[0]["weight_maps"] == stm and seen[1]["strong"] == STRONG
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["ema"] is not None
    assert any(not torch.equal(ckpt["ema"][k], ckpt["model"][k]) for k in ckpt["model"]
               if ckpt["model"][k].is_floating_point())


def test_naive_self_training_needs_no_strong_view_stm_or_ema(tiny, capsys, monkeypatch) -> None:
    """consistency.weight 0 + use_stm false: the naive baseline (labels with ignore pixels)."""
    from bismap.stages import self_training

    def naive(item):
        lab = item["label"].copy()
        lab[:, :8] = 255
        return lab

    target = write_labels(tiny["tmp"] / "naive", tiny["target"], naive)
    seen = []
    build_view = self_training.build_view
    monkeypatch.setattr(self_training, "build_view", lambda *a, **k: seen.append(k) or build_view(*a, **k))
    out = tiny["tmp"] / "naive.pt"
    cfg = st_cfg(0.0, False)
    del cfg["consistency"]["ema_decay"], cfg["consistency"]["rampup"], cfg["strong"]  # not needed when off
    self_training.run(source=tiny["source"], target=target, stm_maps=None, out_checkpoint=out, model=MODEL,
                      train=train_cfg(2), augment=AUGMENT, cfg=cfg, data=DATA, runtime=RUNTIME_T, threads=1)
    rows = losses_logged(capsys.readouterr().out)
    assert [set(r) for r in rows] == [{"source_ce", "target_sce", "total"}] * 2
    assert all(k.get("strong") is None and k.get("weight_maps") is None for k in seen)
    assert torch.load(out, weights_only=True)["ema"] is None


def test_self_training_use_stm_without_maps_is_an_input_error(tiny) -> None:
    from bismap.stages import self_training

    with pytest.raises(InputError, match="STM"):
        self_training.run(source=tiny["source"], target=tiny["target"], stm_maps=None,
                          out_checkpoint=tiny["tmp"] / "x.pt", model=MODEL, train=train_cfg(1), augment=AUGMENT,
                          cfg=st_cfg(0.0, True), data=DATA, runtime=RUNTIME_T)


def test_teacher_mode_and_rampup() -> None:
    from bismap.models import build_model
    from bismap.stages.self_training import consistency_weight, teacher_mode

    net = build_model(MODEL).eval()
    with teacher_mode(net):
        bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert bns and all(m.training for m in bns)
        assert not net.decoder.dropout.training
    assert not any(m.training for m in net.modules())
    cfg = {"consistency": {"weight": 30.0, "rampup": 4000, "ema_decay": 0.999}}
    assert consistency_weight(cfg, 0) == pytest.approx(30.0 * np.exp(-5.0))
    assert consistency_weight(cfg, 4000) == pytest.approx(30.0)
    assert consistency_weight(cfg, 2000) == pytest.approx(30.0 * np.exp(-5.0 * 0.25))
    assert consistency_weight({"consistency": {"weight": 0.0}}, 10) == 0.0


# ---------------------------------------------------------------------------------------------
# distillation


def _ctx(model, batches):
    from bismap.engine.step_context import StepContext

    return StepContext(model=model, ema=None, batches=batches, iteration=0, device=torch.device("cpu"),
                       autocast=contextlib.nullcontext)


def _batches():
    g = torch.Generator().manual_seed(0)

    def img():
        return torch.randn(2, 3, H, W, generator=g)

    lab = torch.randint(0, 19, (2, H, W), generator=g)
    return {"source": {"image": img(), "label": lab, "weight": torch.ones(2, H, W)},
            "target": {"image": img(), "label": lab}}


def dill_cfg(variant: str = "kl", weight: float = 1.0, **kw) -> dict:
    return schema_defaults("distillation", **{"init": "fresh", "use_stm": False, "sce": dict(SCE),
                                              "kd": {"weight": weight, "variant": variant}, **kw})


def test_kd_kl_is_zero_for_identical_student_and_original_differs() -> None:
    from bismap.models import build_model
    from bismap.stages.distillation import make_loss_fn

    torch.manual_seed(0)
    net = build_model(MODEL).eval()  # eval: identical forward passes (no dropout)
    ctx = _ctx(net, _batches())
    kl = make_loss_fn(dill_cfg("kl"), net)(ctx)["kd"]
    orig = make_loss_fn(dill_cfg("original"), net)(ctx)["kd"]
    kl, orig = kl.detach(), orig.detach()
    assert abs(float(kl)) < 1e-6
    assert abs(float(orig) - float(kl)) > 1e-4
    assert "kd" not in make_loss_fn(dill_cfg("kl", weight=0.0), net)(ctx)
    with pytest.raises(InputError, match="variant"):  # the schema refuses it first; the loss never guesses
        make_loss_fn(dill_cfg("bogus"), net)(ctx)


def test_distillation_end_to_end_student_weights(tiny, capsys) -> None:
    from bismap.models import build_model
    from bismap.stages import distillation

    teacher = constant_checkpoint(tiny["tmp"] / "teacher.pt", ROAD)
    target = write_labels(tiny["tmp"] / "teacher_labels", tiny["target"], lambda it: np.full((H, W), ROAD, np.uint8))
    stm = write_stm(tiny["tmp"] / "stm.h5", tiny["source"], 255)
    torch.manual_seed(123)
    pretrained = build_model(MODEL).backbone.state_dict()
    weights = tiny["tmp"] / "r18_like_simclr.pth"
    torch.save({"state_dict": pretrained}, weights)
    out = tiny["tmp"] / "dill.pt"
    # lr 0: the student's backbone must still hold the student_weights file afterwards
    distillation.run(source=tiny["source"], target=target, stm_maps=stm, teacher_checkpoint=teacher,
                     out_checkpoint=out, model=MODEL, train=train_cfg(2, lr=0.0, momentum=0.0), augment=AUGMENT,
                     cfg=dill_cfg("kl", use_stm=True, student_weights=str(weights)), data=DATA, runtime=RUNTIME_T,
                     threads=1)
    rows = losses_logged(capsys.readouterr().out)
    assert [set(r) for r in rows] == [{"source_ce", "target_sce", "kd", "total"}] * 2
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["ema"] is None and ckpt["model_config"]["weights"] == str(weights)
    for k, v in pretrained.items():
        if k.endswith(".weight") and "bn" not in k and v.dim() == 4:
            assert torch.equal(ckpt["model"]["backbone." + k], v), k


def test_self_training_init_warmup_starts_from_the_checkpoint(tiny) -> None:
    """init: warmup with lr 0 leaves the warm-up's weights; a missing checkpoint is an input error."""
    from bismap.stages import self_training

    init = constant_checkpoint(tiny["tmp"] / "init_warmup.pt", ROAD)
    target = write_labels(tiny["tmp"] / "pseudo_init", tiny["target"], lambda it: it["label"])
    cfg = {**st_cfg(0.0, False), "init": "warmup"}
    out = tiny["tmp"] / "st_init.pt"
    self_training.run(source=tiny["source"], target=target, stm_maps=None, out_checkpoint=out, model=MODEL,
                      train=train_cfg(1, lr=0.0, momentum=0.0), augment=AUGMENT, cfg=cfg, data=DATA, runtime=RUNTIME_T,
                      threads=1, init_checkpoint=init)
    ref = torch.load(init, weights_only=True)["model"]
    got = torch.load(out, weights_only=True)["model"]
    for k, v in ref.items():
        if v.is_floating_point() and "running" not in k:
            assert torch.equal(got[k], v), k
    with pytest.raises(InputError, match="warm-up checkpoint"):
        self_training.run(source=tiny["source"], target=target, stm_maps=None, out_checkpoint=tiny["tmp"] / "y.pt",
                          model=MODEL, train=train_cfg(1), augment=AUGMENT, cfg=cfg, data=DATA, runtime=RUNTIME_T,
                          threads=1)


def test_distillation_init_teacher_copies_the_teacher(tiny) -> None:
    from bismap.stages import distillation

    teacher = constant_checkpoint(tiny["tmp"] / "teacher_init.pt", ROAD)
    target = write_labels(tiny["tmp"] / "teacher_labels_init", tiny["target"],
                          lambda it: np.full((H, W), ROAD, np.uint8))
    out = tiny["tmp"] / "dill_init.pt"
    distillation.run(source=tiny["source"], target=target, stm_maps=None, teacher_checkpoint=teacher,
                     out_checkpoint=out, model=MODEL, train=train_cfg(1, lr=0.0, momentum=0.0), augment=AUGMENT,
                     cfg={**dill_cfg("kl", use_stm=False), "init": "teacher"}, data=DATA, runtime=RUNTIME_T, threads=1)
    ref = torch.load(teacher, weights_only=True)["model"]
    got = torch.load(out, weights_only=True)["model"]
    assert torch.equal(got["decoder.classifier.bias"], ref["decoder.classifier.bias"])
    for k, v in ref.items():
        if v.is_floating_point() and "running" not in k:
            assert torch.equal(got[k], v), k


def test_distillation_init_warmup_starts_from_the_warmup_not_the_teacher(tiny) -> None:
    """init: warmup copies the warm-up checkpoint (here class SKY), not the teacher (ROAD)."""
    from bismap.stages import distillation

    teacher = constant_checkpoint(tiny["tmp"] / "teacher_w.pt", ROAD)
    warm = constant_checkpoint(tiny["tmp"] / "warmup_w.pt", SKY)
    target = write_labels(tiny["tmp"] / "teacher_labels_w", tiny["target"],
                          lambda it: np.full((H, W), ROAD, np.uint8))
    cfg = {**dill_cfg("kl", use_stm=False), "init": "warmup"}
    out = tiny["tmp"] / "dill_w.pt"
    distillation.run(source=tiny["source"], target=target, stm_maps=None, teacher_checkpoint=teacher,
                     out_checkpoint=out, model=MODEL, train=train_cfg(1, lr=0.0, momentum=0.0), augment=AUGMENT,
                     cfg=cfg, data=DATA, runtime=RUNTIME_T, threads=1, init_checkpoint=warm)
    got = torch.load(out, weights_only=True)["model"]["decoder.classifier.bias"]
    assert int(got.argmax()) == SKY
    with pytest.raises(InputError, match="warm-up checkpoint"):
        distillation.run(source=tiny["source"], target=target, stm_maps=None, teacher_checkpoint=teacher,
                         out_checkpoint=tiny["tmp"] / "dill_w2.pt", model=MODEL, train=train_cfg(1), augment=AUGMENT,
                         cfg=cfg, data=DATA, runtime=RUNTIME_T, threads=1)


def test_student_model_config() -> None:
    from bismap.stages.distillation import student_model_config

    assert student_model_config(MODEL, dill_cfg()) == MODEL
    cfg = student_model_config(MODEL, dill_cfg(student_weights="r101_1x_sk0.pth", student_backbone="simclr_r101"))
    assert cfg["weights"] == "r101_1x_sk0.pth" and cfg["backbone"] == "simclr_r101"
    assert MODEL["backbone"] == "resnet18"


# ---------------------------------------------------------------------------------------------
# teacher labels


def test_teacher_labels_of_constant_model(tiny) -> None:
    from bismap.data.labels import read_label_png
    from bismap.stages import teacher_labels

    ckpt = constant_checkpoint(tiny["tmp"] / "c.pt", POLE)
    tgt = make_cityscapes(tiny["tmp"] / "cs_pole", "train", n=3, seed=5, pole=True)
    out_dir, quality = tiny["tmp"] / "tl", tiny["tmp"] / "tl.json"
    cfg = {"scales": [0.75, 1.0, 1.5], "flip": True, "adabn": {"enabled": True, "max_images": 2, "batch_size": 2},
           "selection": "none", "threshold": 0.9, "align_prior": False}
    teacher_labels.run(checkpoint=ckpt, target={**tgt, "labels": "none"}, target_gt=tgt, out_dir=out_dir,
                       out_quality=quality, cfg=cfg, data=DATA, runtime=RUNTIME_T, threads=1)
    files = sorted(p.name for p in out_dir.iterdir())
    assert files == [f"aachen_000000_{i:06d}_leftImg8bit.png" for i in range(3)]
    for f in files:
        lab = read_label_png(out_dir / f)
        assert lab.shape == (H, W) and np.all(lab == POLE)
    q = json.loads(quality.read_text())
    assert q["images"] == 3 and q["coverage"] == 1.0
    assert q["accuracy"] == pytest.approx(2 / W)  # GT pole is 2 columns of 64
    assert q["coverage_per_class"]["pole"] == 1.0
    # without GT: coverage only
    teacher_labels.run(checkpoint=ckpt, target={**tgt, "labels": "none"}, target_gt=None, out_dir=out_dir,
                       out_quality=quality, cfg={**cfg, "adabn": {"enabled": False}}, data=DATA, runtime=RUNTIME_T)
    q = json.loads(quality.read_text())
    assert q["accuracy"] is None and q["coverage"] == 1.0


def test_teacher_labels_confidence_selection_leaves_unsure_pixels_unlabelled(tiny) -> None:
    from bismap.data.labels import read_label_png
    from bismap.stages import teacher_labels

    ckpt = constant_checkpoint(tiny["tmp"] / "c.pt", POLE)  # softmax of the pole: e^10 / (e^10 + 18) = 0.99918
    tgt = make_cityscapes(tiny["tmp"] / "cs_sel", "train", n=2, seed=6, pole=True)
    out_dir, quality = tiny["tmp"] / "tl_sel", tiny["tmp"] / "tl_sel.json"
    base = {"scales": [1.0], "flip": False, "adabn": {"enabled": False, "max_images": 2, "batch_size": 2},
            "align_prior": False}
    for threshold, expected in ((0.999, POLE), (0.9995, 255)):
        def label(runtime, threshold=threshold):  # this iteration's threshold, bound (B023)
            teacher_labels.run(checkpoint=ckpt, target={**tgt, "labels": "none"}, target_gt=tgt, out_dir=out_dir,
                               out_quality=quality, cfg={**base, "selection": "confidence", "threshold": threshold},
                               data=DATA, runtime=runtime)
        if expected == 255:  # an empty label set stops the stage and leaves the earlier labels as they were
            before = sorted((f.name, f.read_bytes()) for f in out_dir.iterdir()), quality.read_bytes()
            with pytest.raises(InputError, match=r"teacher labels gave labels to 0\.00% of the target pixels"):
                label(RUNTIME_T)
            assert (sorted((f.name, f.read_bytes()) for f in out_dir.iterdir()), quality.read_bytes()) == before
        label({**RUNTIME_T, "min_label_coverage": 0} if expected == 255 else RUNTIME_T)
        for f in out_dir.iterdir():
            assert np.all(read_label_png(f) == expected), threshold
        q = json.loads(quality.read_text())
        assert q["selection"] == "confidence" and q["threshold"] == threshold
        assert q["coverage"] == (1.0 if expected == POLE else 0.0)
    # balanced: the class's own percentile caps the threshold, so a class the teacher is never
    # 0.9995 sure of keeps its pixels (here every pixel has the same confidence: all kept)
    teacher_labels.run(checkpoint=ckpt, target={**tgt, "labels": "none"}, target_gt=tgt, out_dir=out_dir,
                       out_quality=quality, cfg={**base, "selection": "balanced", "threshold": 0.9995,
                                                 "percentile": 20.0, "sample_pixels": 100, "seed": 0},
                       data=DATA, runtime=RUNTIME_T)
    for f in out_dir.iterdir():
        assert np.all(read_label_png(f) == POLE)
    q = json.loads(quality.read_text())
    assert q["coverage"] == 1.0 and q["class_thresholds"][str(POLE)] == pytest.approx(0.99918, abs=1e-5)


# ---------------------------------------------------------------------------------------------
# evaluate


def test_evaluate_constant_model_miou(tiny) -> None:
    from bismap.stages import evaluate

    ckpt = constant_checkpoint(tiny["tmp"] / "c.pt", ROAD)
    out_json, out_csv = tiny["tmp"] / "m.json", tiny["tmp"] / "m.csv"
    evaluate.run(checkpoint=ckpt, target=tiny["val"], out_json=out_json, out_confusion_csv=out_csv,
                 cfg={"scales": [1.0], "flip": False, "protocol": "cityscapes19"}, data=DATA, runtime=RUNTIME_T,
                 threads=1)
    m = json.loads(out_json.read_text())
    rows = list(csv.reader(out_csv.open()))
    road_row = [int(v) for v in rows[1 + ROAD][1:]]
    sky_row = [int(v) for v in rows[1 + SKY][1:]]
    n_road, n_sky = sum(road_row), sum(sky_row)
    assert n_road + n_sky == 2 * H * W and road_row[ROAD] == n_road and sky_row[ROAD] == n_sky
    assert m["iou_per_class"]["road"] == pytest.approx(n_road / (n_road + n_sky))
    assert m["iou_per_class"]["sky"] == 0.0
    assert m["miou"] == pytest.approx(n_road / (n_road + n_sky) / 2)
    assert m["present_classes"] == ["road", "sky"] and m["images"] == 2
    evaluate.run(checkpoint=ckpt, target=tiny["val"], out_json=out_json, out_confusion_csv=out_csv,
                 cfg={"scales": [0.5, 1.0], "flip": True, "protocol": "synthia"}, data=DATA, runtime=RUNTIME_T)
    m2 = json.loads(out_json.read_text())
    assert m2["headline"] == "miou16" and m2["miou"] == pytest.approx(m["miou"])


def test_evaluate_trained_checkpoint_and_unlabelled_split(trained) -> None:
    """The warm-up trained on the trivially learnable source labels the target val split well."""
    from bismap.stages import evaluate

    ckpt, tmp = trained["checkpoint"], trained["tmp"]
    out_json = tmp / "w.json"
    cfg = {"scales": [1.0], "flip": False, "protocol": "cityscapes19"}
    evaluate.run(checkpoint=ckpt, target=trained["val"], out_json=out_json, out_confusion_csv=tmp / "w.csv",
                 cfg=cfg, data=DATA, runtime=RUNTIME_T)
    assert json.loads(out_json.read_text())["pixel_accuracy"] > 0.8
    with pytest.raises(InputError, match="ground truth"):
        evaluate.run(checkpoint=ckpt, target={**trained["val"], "labels": "none"}, out_json=out_json,
                     out_confusion_csv=tmp / "w.csv", cfg=cfg, data=DATA, runtime=RUNTIME_T)

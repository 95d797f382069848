"""Engine tests on a tiny CPU model: schedule, stream resume, trainer resume, inference, AdaBN."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bismap.engine import checkpoint, inference, optim, stream, trainer
from bismap.io import InputError
from conftest import TINY_MODEL

torch.set_num_threads(1)


class TinyNet(nn.Module):
    """Same interface as DeepLabV3Plus: forward -> (feature, logits), param_groups() -> (backbone, head)."""

    def __init__(self, num_classes: int = 3, dropout: float = 0.5):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(4, num_classes, 1))
        self.config = {"tiny": True}

    def forward(self, x):
        feat = self.backbone(x)
        return feat, self.head(feat)

    def param_groups(self):
        return list(self.backbone.parameters()), list(self.head.parameters())


class ToyData(torch.utils.data.Dataset):
    """Random images whose augmentation (noise) depends on (index, epoch), like TrainingView."""

    def __init__(self, n: int = 10, size: int = 8):
        self.n, self.size, self.epoch = n, size, 0
        g = torch.Generator().manual_seed(0)
        self.images = torch.randn(n, 3, size, size, generator=g)
        self.labels = torch.randint(0, 3, (n, size, size), generator=g)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        rng = np.random.default_rng([i, self.epoch])
        noise = torch.from_numpy(rng.normal(size=(3, self.size, self.size)).astype(np.float32))
        return {"image": self.images[i] + 0.1 * noise, "label": self.labels[i], "index": i, "epoch": self.epoch}


def ce_loss(ctx):
    b = ctx.batches["a"]
    with ctx.autocast():
        _, logits = ctx.model(b["image"])
    losses = {"ce": nn.functional.cross_entropy(logits.float(), b["label"])}
    if ctx.ema is not None:
        with torch.no_grad():
            _, t = ctx.ema(ctx.batches["b"]["image"])
        _, s = ctx.model(ctx.batches["b"]["image"])
        losses["cons"] = ((s - t) ** 2).mean()
    return losses


TRAIN = {"iterations": 8, "lr": 0.05, "head_lr_mult": 10, "momentum": 0.9, "weight_decay": 5e-4,
         "warmup_iters": 2, "poly_power": 0.9, "min_lr": 1e-4, "amp": "auto", "seed": 3}
RUNTIME = {"checkpoint_every": 4, "log_every": 3}


def make_run(seed: int = 0):
    torch.manual_seed(seed)
    model = TinyNet()
    streams = {"a": stream.InfiniteStream(ToyData(10), 3, seed=1), "b": stream.InfiniteStream(ToyData(7), 2, seed=2)}
    return model, streams


def run_fit(out: Path, fp: str = "fp", loss_fn=ce_loss, **kw):
    model, streams = make_run()
    trainer.fit(model=model, loss_fn=loss_fn, streams=streams, train_cfg=kw.pop("train", TRAIN), out_checkpoint=out,
                fingerprint=fp, ema_decay=0.9, device="cpu", extra_state={"data": {"mean": [0, 0, 0]}},
                tensorboard_dir=None, **RUNTIME, **kw)
    return torch.load(out, weights_only=True)


def assert_same_state(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ---------------------------------------------------------------------------------------------


def test_schedule_matches_formula():
    model = TinyNet()
    opt = optim.build_optimizer(model, lr=0.01, head_lr_mult=10, momentum=0.9, weight_decay=0)
    sched = optim.build_scheduler(opt, total_iters=100, warmup_iters=10, power=0.9, min_lr=1e-4)
    seen = {}
    for it in range(100):
        seen[it] = [g["lr"] for g in opt.param_groups]
        opt.step()
        sched.step()
    assert seen[0] == [0.0, 0.0]
    assert seen[5] == pytest.approx([0.005, 0.05])
    for it in (10, 37, 99):
        f = (1 - (it - 10) / 90) ** 0.9
        assert seen[it] == pytest.approx([1e-4 + (0.01 - 1e-4) * f, 1e-4 + (0.1 - 1e-4) * f])
    assert seen[10] == pytest.approx([0.01, 0.1])
    # the scheduler state round-trips
    sched2 = optim.build_scheduler(opt, total_iters=100, warmup_iters=10, power=0.9, min_lr=1e-4)
    sched2.load_state_dict(sched.state_dict())
    assert sched2.last_epoch == sched.last_epoch


def test_stream_resume_exact_and_epochs():
    data = ToyData(10)
    s = stream.InfiniteStream(data, 3, seed=5)
    first = [next(s) for _ in range(4)]  # 3 batches per epoch: crosses into epoch 1
    assert [b["epoch"][0].item() for b in first] == [0, 0, 0, 1]
    epoch0 = torch.cat([b["index"] for b in first[:3]]).tolist()
    assert len(set(epoch0)) == 9
    state = s.state_dict()
    rest = [next(s) for _ in range(4)]
    s2 = stream.InfiniteStream(ToyData(10), 3, seed=5)
    s2.load_state_dict(state)
    rest2 = [next(s2) for _ in range(4)]
    for a, b in zip(rest, rest2):
        assert torch.equal(a["index"], b["index"]) and torch.equal(a["image"], b["image"])
    # a different seed shuffles differently
    s3 = stream.InfiniteStream(ToyData(10), 3, seed=6)
    assert torch.cat([next(s3)["index"] for _ in range(3)]).tolist() != epoch0


def test_stream_workers_match_in_process():
    a = stream.InfiniteStream(ToyData(10), 3, seed=5, workers=0)
    b = stream.InfiniteStream(ToyData(10), 3, seed=5, workers=1, pin_memory=False)
    for _ in range(4):
        x, y = next(a), next(b)
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["epoch"], y["epoch"])
    state = b.state_dict()
    b.load_state_dict(state)  # persistent workers restart mid-epoch
    x, y = next(a), next(b)
    assert torch.equal(x["image"], y["image"])
    b.close()


def test_stream_rank_slices_are_disjoint():
    parts = [stream.InfiniteStream(ToyData(10), 2, seed=5, rank=r, world_size=2).epoch_indices(0) for r in range(2)]
    assert not set(parts[0]) & set(parts[1]) and len(parts[0]) == len(parts[1]) == 5


@pytest.mark.parametrize("world", [2, 4])
def test_stream_batch_is_global_the_ranks_split_it(world):
    """train.batch_size keeps its meaning with N ranks: batch b of all ranks together is one process's batch b."""
    one = stream.InfiniteStream(ToyData(13), 4, seed=5).epoch_batches(1)
    ranks = [stream.InfiniteStream(ToyData(13), 4, seed=5, rank=r, world_size=world).epoch_batches(1)
             for r in range(world)]
    assert len(one) == 3 and all(len(b) == len(one) for b in ranks)
    for b, batch in enumerate(one):
        assert all(len(r[b]) == 4 // world for r in ranks)
        assert sorted(i for r in ranks for i in r[b]) == sorted(batch)


def test_stream_state_continues_with_another_world_size():
    """A resume file written by 2 ranks continues on 1 process (and back) at the same global batch."""
    two = [stream.InfiniteStream(ToyData(12), 4, seed=3, rank=r, world_size=2) for r in range(2)]
    for s in two:
        for _ in range(5):  # into the second epoch
            next(s)
    one = stream.InfiniteStream(ToyData(12), 4, seed=3)
    one.load_state_dict(two[0].state_dict())
    ref = stream.InfiniteStream(ToyData(12), 4, seed=3)
    for _ in range(5):
        next(ref)
    assert torch.equal(next(one)["index"], next(ref)["index"])


def test_stream_batch_must_split_evenly_over_ranks():
    with pytest.raises(InputError, match="multiple of the number of GPUs"):
        stream.InfiniteStream(ToyData(12), 3, seed=0, world_size=2)


def test_stream_too_small_dataset():
    with pytest.raises(InputError):
        stream.InfiniteStream(ToyData(2), 3, seed=0)


def test_resume_after_kill_is_exact(tmp_path, capsys):
    full = run_fit(tmp_path / "full.pt")
    assert full["format"] == "bismap-checkpoint/1" and full["iteration"] == 8 and full["data"] == {"mean": [0, 0, 0]}
    assert full["model_config"] == {"tiny": True}

    def dying(ctx):
        if ctx.iteration == 5:
            raise KeyboardInterrupt("simulated kill")
        return ce_loss(ctx)

    out = tmp_path / "resumed.pt"
    with pytest.raises(KeyboardInterrupt):
        run_fit(out, loss_fn=dying)
    assert checkpoint.resume_path(out).exists() and not out.exists()
    resumed = run_fit(out)
    assert "resuming from" in capsys.readouterr().out
    assert not checkpoint.resume_path(out).exists()
    assert_same_state(full["model"], resumed["model"])
    assert_same_state(full["ema"], resumed["ema"])
    assert not torch.equal(full["model"]["backbone.0.weight"], full["ema"]["backbone.0.weight"])


def test_fingerprint_mismatch_starts_fresh(tmp_path, capsys):
    def dying(ctx):
        if ctx.iteration == 5:
            raise KeyboardInterrupt
        return ce_loss(ctx)

    out = tmp_path / "m.pt"
    with pytest.raises(KeyboardInterrupt):
        run_fit(out, fp="old", loss_fn=dying)
    fresh = run_fit(out, fp="new")
    text = capsys.readouterr().out
    assert ("not resuming from" in text and "changed since it was written" in text
            and "resuming from" not in text.replace("not resuming from", ""))
    reference = run_fit(tmp_path / "ref.pt", fp="new")
    assert_same_state(fresh["model"], reference["model"])
    assert "fingerprint" not in fresh  # final files depend on config and seed only


def test_log_line_and_unknown_key(tmp_path, capsys):
    run_fit(tmp_path / "l.pt", train={**TRAIN, "iterations": 3, "typo_key": 1})
    out = capsys.readouterr().out
    assert "typo_key" in out
    line = [ln for ln in out.splitlines() if ln.startswith("[3/3]")][0]
    assert "it/s" in line and "ETA" in line and "ce " in line and "cons " in line and "lr " in line


def test_load_model_rejects_foreign_files(tmp_path):
    bad = tmp_path / "bad.pt"
    torch.save({"state_dict": {}}, bad)
    with pytest.raises(InputError, match="bad.pt"):
        checkpoint.load_model(bad)
    junk = tmp_path / "junk.pt"
    junk.write_text("hello")
    with pytest.raises(InputError, match="junk.pt"):
        checkpoint.load_checkpoint(junk)


def test_load_model_rebuilds(tmp_path, monkeypatch):
    import sys
    import types

    fake = types.ModuleType("bismap.models")
    fake.build_model = lambda cfg: TinyNet()
    monkeypatch.setitem(sys.modules, "bismap.models", fake)
    ck = run_fit(tmp_path / "c.pt", train={**TRAIN, "iterations": 2})
    m = checkpoint.load_model(tmp_path / "c.pt", which="ema")
    assert not m.training
    assert_same_state(m.state_dict(), ck["ema"])


def test_predict_logits_constant_model():
    class Const(nn.Module):
        def forward(self, x):
            b, _, h, w = x.shape
            logits = torch.tensor([1.0, -2.0, 3.0]).view(1, 3, 1, 1).expand(b, 3, (h + 3) // 4, (w + 3) // 4)
            return x[:, :1], logits

    x = torch.randn(2, 3, 16, 24)
    out = inference.predict_logits(Const(), x, scales=(0.5, 1.0, 1.5), flip=True)
    assert out.shape == (2, 3, 16, 24)
    assert torch.allclose(out, torch.tensor([1.0, -2.0, 3.0]).view(1, 3, 1, 1).expand_as(out))


def test_predict_logits_flip_is_undone():
    # a model that is not flip invariant: logits = the image itself; averaging with the flipped
    # view must give back the image, not its mirror
    class Ident(nn.Module):
        def forward(self, x):
            return x, x

    x = torch.randn(1, 3, 8, 12)
    assert torch.allclose(inference.predict_logits(Ident(), x, flip=True), x, atol=1e-6)


def test_adabn_uses_target_statistics():
    class BNNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm2d(3)

        def forward(self, x):
            y = self.bn(x)
            return y, y

    net = BNNet().eval()
    g = torch.Generator().manual_seed(0)
    images = [{"image": 3.0 + 2.0 * torch.randn(3, 8, 8, generator=g)} for _ in range(6)]
    used = inference.adapt_batchnorm(net, images, max_images=4, batch_size=2)
    assert used == 4 and not net.training and net.bn.momentum == 0.1
    stack = torch.stack([im["image"] for im in images[:4]])
    assert torch.allclose(net.bn.running_mean, stack.mean(dim=(0, 2, 3)), atol=1e-5)
    # cumulative average of the two batches' unbiased variances
    v = torch.stack([stack[:2].var(dim=(0, 2, 3)), stack[2:].var(dim=(0, 2, 3))]).mean(0)
    assert torch.allclose(net.bn.running_var, v, atol=1e-4)
    assert net.bn.running_mean.mean().item() == pytest.approx(3.0, abs=0.2)


def test_adabn_leaves_out_a_last_single_image_that_deeplab_cannot_normalise():
    """max_images 3 in batches of 2: DeepLab's ASPP pooling BatchNorm refuses the 1-image rest in train mode."""
    from bismap.io import InputError
    from bismap.models import build_model
    from conftest import TINY_MODEL

    torch.manual_seed(0)
    net = build_model(TINY_MODEL)
    g = torch.Generator().manual_seed(0)
    images = [{"image": torch.rand(3, 24, 40, generator=g)} for _ in range(3)]
    assert inference.adapt_batchnorm(net, images, max_images=3, batch_size=2) == 2
    two = {k: v.clone() for k, v in net.state_dict().items()}
    inference.adapt_batchnorm(net, images, max_images=2, batch_size=2)  # the same two images
    assert all(torch.equal(two[k], v) for k, v in net.state_dict().items())
    with pytest.raises(InputError, match="no batch of 2 or more images"):
        inference.adapt_batchnorm(net, images, max_images=1, batch_size=4)


def test_predict_dataset_yields_full_size():
    class DS:
        has_labels = True
        names = ["a", "b"]

        def __len__(self):
            return 2

        def __getitem__(self, i):
            return {"image": np.full((8, 12, 3), 10 * i, np.uint8), "label": np.zeros((8, 12), np.uint8),
                    "name": self.names[i], "file": self.names[i] + ".png"}

    net = TinyNet().eval()
    out = list(inference.predict_dataset(net, DS(), scales=(1.0, 0.5), flip=True, mean=[0.5] * 3, std=[0.25] * 3,
                                         output="probs"))
    assert [o[0] for o in out] == ["a", "b"] and out[0][1] == "a.png"
    assert out[0][2].shape == (3, 8, 12) and torch.allclose(out[0][2].sum(0), torch.ones(8, 12), atol=1e-5)


def test_amp_resolution_cpu():
    from bismap.engine.device import resolve_amp, resolve_device, set_threads

    assert resolve_amp("auto", torch.device("cpu")).dtype is None
    assert resolve_device("cpu") == torch.device("cpu")
    assert set_threads(1) == 1
    with pytest.raises(ValueError):
        resolve_amp("fp8", torch.device("cpu"))


def test_ema_update_formula():
    from bismap.engine.ema import create_ema, update_ema

    m = TinyNet()
    e = create_ema(m)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(1.0)
        m.backbone[1].running_mean.fill_(7.0)
    before = [p.clone() for p in e.parameters()]
    update_ema(e, m, 0.9)
    for b, pe, pm in zip(before, e.parameters(), m.parameters()):
        assert torch.allclose(pe, 0.9 * b + 0.1 * pm, atol=1e-6)
    assert torch.equal(e.backbone[1].running_mean, m.backbone[1].running_mean)
    assert all(not p.requires_grad for p in e.parameters())


def test_amp_scaler_path_and_resume(tmp_path, monkeypatch):
    """The GradScaler path (fp16 on CUDA) exercised on CPU autocast: trains, and the scaler state resumes."""
    from bismap.engine import device as dev

    monkeypatch.setattr(trainer, "resolve_amp", lambda mode, device: dev.AmpSettings(torch.bfloat16, True, "cpu"))
    full = run_fit(tmp_path / "full.pt")

    def dying(ctx):
        if ctx.iteration == 5:
            raise KeyboardInterrupt
        return ce_loss(ctx)

    with pytest.raises(KeyboardInterrupt):
        run_fit(tmp_path / "r.pt", loss_fn=dying)
    state = torch.load(checkpoint.resume_path(tmp_path / "r.pt"), weights_only=True)
    assert state["scaler"] and "scale" in state["scaler"]
    resumed = run_fit(tmp_path / "r.pt")
    assert_same_state(full["model"], resumed["model"])
    assert all(torch.isfinite(v).all() for v in full["model"].values() if v.is_floating_point())


def test_fit_requires_model_config(tmp_path):
    model, streams = make_run()
    del model.config
    with pytest.raises(ValueError, match="model_config"):
        trainer.fit(model=model, loss_fn=ce_loss, streams=streams, train_cfg=TRAIN, out_checkpoint=tmp_path / "x.pt",
                    fingerprint="f", device="cpu", tensorboard_dir=None, **RUNTIME)


def test_fit_and_load_model_with_real_deeplab(tmp_path):
    """Integration with bismap.models: a 2-iteration fit of the embedded model, rebuilt by load_model."""
    models = pytest.importorskip("bismap.models")
    cfg = dict(TINY_MODEL)
    torch.manual_seed(0)
    net = models.build_model(cfg)

    class Seg(ToyData):
        def __init__(self):
            super().__init__(4, 32)
            self.labels = torch.randint(0, 19, (4, 32, 32))

    def loss_fn(ctx):
        b = ctx.batches["s"]
        with ctx.autocast():
            _, logits = ctx.model(b["image"])
        logits = nn.functional.interpolate(logits.float(), size=b["label"].shape[-2:], mode="bilinear",
                                           align_corners=True)
        return {"ce": nn.functional.cross_entropy(logits, b["label"])}

    out = tmp_path / "real.pt"
    trainer.fit(model=net, loss_fn=loss_fn, streams={"s": stream.InfiniteStream(Seg(), 2, seed=0)},
                train_cfg={**TRAIN, "iterations": 2}, out_checkpoint=out, fingerprint="r", ema_decay=0.5,
                device="cpu", model_config=cfg, tensorboard_dir=None, **RUNTIME)
    for which in ("model", "ema"):
        m = checkpoint.load_model(out, which=which)
        assert_same_state(m.state_dict(), torch.load(out, weights_only=True)[which])


def test_a_finished_stage_survives_the_loss_of_its_output(tmp_path, capsys):
    """Ctrl-C between the final write and the job's exit: Snakemake marks the output incomplete and
    --rerun-incomplete deletes it. The rerun puts the same bytes back without training."""
    out = tmp_path / "m.pt"
    run_fit(out, fp="fp")
    original = out.read_bytes()
    kept, meta = checkpoint.finished_paths(out)
    assert kept.is_file() and os.path.samefile(kept, out)          # a hard link: no second copy on disk
    out.unlink()                                                    # what --rerun-incomplete does
    calls = []

    def counting(ctx):
        calls.append(ctx.iteration)
        return ce_loss(ctx)

    run_fit(out, fp="fp", loss_fn=counting)
    assert calls == [] and out.read_bytes() == original
    assert "restored from" in capsys.readouterr().out
    out.unlink()
    run_fit(out, fp="other", loss_fn=counting)                      # another config or inputs: trains again
    assert len(calls) == TRAIN["iterations"]
    assert json.loads(meta.read_text())["fingerprint"] == "other"

"""Activation checkpointing of the backbone: the same losses, gradients, BN statistics and training."""
from __future__ import annotations

import pytest
import torch

from bismap.models import build_model
from bismap.models.checkpointing import set_activation_checkpointing
from conftest import TINY_MODEL

torch.set_num_threads(1)


def _step(backbone: str, checkpointing: bool, **extra):
    torch.manual_seed(0)
    model = build_model({**TINY_MODEL, "backbone": backbone, **extra})
    model.train()
    assert set_activation_checkpointing(model, checkpointing) == 1
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 19, (2, 64, 64), generator=torch.Generator().manual_seed(2))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: (saved.append(t.numel() * t.element_size()), t)[1],
                                                  lambda t: t):
        _, logits = model(x)
        loss = torch.nn.functional.cross_entropy(
            torch.nn.functional.interpolate(logits, size=y.shape[-2:], mode="bilinear"), y)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, {k: v.clone() for k, v in model.state_dict().items()}, sum(saved)


@pytest.mark.parametrize("backbone,extra", [("resnet18", {}), ("resnet50", {}),
                                            ("simclr_r50", {"sk_ratio": 0.0625})])
def test_checkpointing_changes_memory_not_numbers(backbone, extra):
    loss0, grads0, state0, saved0 = _step(backbone, False, **extra)
    loss1, grads1, state1, saved1 = _step(backbone, True, **extra)
    assert torch.equal(loss0, loss1)
    assert grads0.keys() == grads1.keys() and len(grads0) > 10
    for name in grads0:
        torch.testing.assert_close(grads1[name], grads0[name], rtol=1e-5, atol=1e-7, msg=name)
    # batch-norm running statistics and counters are updated once, not again by the recomputation
    for key in state0:
        assert torch.equal(state0[key], state1[key]), key
    assert saved1 < 0.6 * saved0, (saved0, saved1)


def test_only_training_forwards_with_autograd_are_checkpointed(monkeypatch):
    import bismap.models.checkpointing as ck

    calls = []
    real = ck.checkpoint
    monkeypatch.setattr(ck, "checkpoint", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    model = build_model({**TINY_MODEL, "backbone": "resnet18"})
    set_activation_checkpointing(model, True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model.train()
        model(x)          # a teacher's forward, AdaBN
    model.eval()
    model(x)              # evaluation with autograd on
    assert calls == []
    model.train()
    model(x)
    assert len(calls) == 8  # ResNet-18: 2 + 2 + 2 + 2 blocks


def test_fit_with_checkpointing_writes_the_same_model(tmp_path):
    from bismap.engine import stream, trainer
    from test_engine import TRAIN, ToyData

    def fit(out, on):
        torch.manual_seed(0)
        model = build_model({**TINY_MODEL, "backbone": "resnet18"})
        streams = {"a": stream.InfiniteStream(ToyData(6, size=32), 2, seed=1)}

        def loss_fn(ctx):
            _, logits = ctx.model(ctx.batches["a"]["image"])
            up = torch.nn.functional.interpolate(logits, size=(32, 32), mode="bilinear")
            return {"ce": torch.nn.functional.cross_entropy(up, ctx.batches["a"]["label"])}

        trainer.fit(model=model, loss_fn=loss_fn, streams=streams, train_cfg={**TRAIN, "iterations": 3},
                    out_checkpoint=out, fingerprint="fp", device="cpu", tensorboard_dir=None, log_every=1,
                    checkpoint_every=0, model_config=model.model_config, activation_checkpointing=on)
        return torch.load(out, weights_only=True)["model"]

    off, on = fit(tmp_path / "off.pt", False), fit(tmp_path / "on.pt", True)
    assert off.keys() == on.keys()
    for key in off:
        torch.testing.assert_close(on[key], off[key], rtol=1e-5, atol=1e-6, msg=key)

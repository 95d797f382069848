"""runtime.side_thread: teachers' forwards and branch backwards on a second thread give the same weights
bit for bit as the single backward (self-training with and without its EMA teacher, distillation), and
the work really runs on that thread."""
from __future__ import annotations

import contextlib
import io
import threading

import pytest
import torch

from conftest import RUNTIME
from test_stages_training import (
    AUGMENT,
    DATA,
    MODEL,
    dill_cfg,
    make_cityscapes,
    make_gta,
    st_cfg,
    train_cfg,
    write_labels,
    write_stm,
)

RUNTIME_Q = {**RUNTIME, "log_every": 100, "checkpoint_every": 1000}
ITERATIONS = 5


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture
def data(tmp_path):
    """Tiny source/target with labels, STM maps and a briefly trained warm-up to start from and teach."""
    from bismap.stages import warmup

    src = make_gta(tmp_path / "gta5")
    tgt = make_cityscapes(tmp_path / "cityscapes", "train", seed=1)
    labelled = write_labels(tmp_path / "pseudo", tgt, lambda it: it["label"])
    stm = write_stm(tmp_path / "stm.h5", src, 200)
    ckpt = tmp_path / "warmup.pt"
    with contextlib.redirect_stdout(io.StringIO()):
        warmup.run(source=src, out_checkpoint=ckpt, model=MODEL, train=train_cfg(4), augment=AUGMENT, data=DATA,
                   runtime=RUNTIME_Q, threads=1)
    return {"source": src, "target": labelled, "stm": stm, "warmup": ckpt, "tmp": tmp_path}


@contextlib.contextmanager
def threads_at_work(monkeypatch):
    """Names of the threads that ran a module forward, and of those that ran a branch backward."""
    seen: dict[str, list[str]] = {"forward": [], "grad": []}
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda *_: seen["forward"].append(threading.current_thread().name.split("_")[0]))
    grad = torch.autograd.grad

    def recorded_grad(*args, **kwargs):
        seen["grad"].append(threading.current_thread().name.split("_")[0])
        return grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", recorded_grad)
    try:
        yield seen
    finally:
        handle.remove()
        monkeypatch.setattr(torch.autograd, "grad", grad)


def train_both_ways(run_stage, tmp_path, name: str, monkeypatch, branches: int, teacher: bool) -> tuple[dict, dict]:
    """Checkpoints of the same stage run with side_thread off and on; asserts where the work ran."""
    ckpts = {}
    for on in (False, True):
        out = tmp_path / f"{name}_{on}.pt"
        with threads_at_work(monkeypatch) as seen, contextlib.redirect_stdout(io.StringIO()):
            run_stage(out, {**RUNTIME_Q, "side_thread": on})
        ckpts[on] = torch.load(out, weights_only=True)
        if not on:
            assert set(seen["forward"]) == {"MainThread"} and seen["grad"] == []
        else:
            assert set(seen["forward"]) == ({"MainThread", "bismap-side"} if teacher else {"MainThread"})
            assert len(seen["grad"]) == branches * ITERATIONS
            assert set(seen["grad"]) <= {"MainThread", "bismap-side"}
    return ckpts[False], ckpts[True]


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("consistency,threads", [(30.0, 1), (0.0, 1), (30.0, 2)])
def test_self_training_gives_the_same_weights_with_the_side_thread(data, monkeypatch, consistency, threads) -> None:
    """threads 2: two intra-op threads under each calling thread (a rule given 2 cores) change nothing either."""
    from bismap.stages import self_training

    cfg = {**st_cfg(consistency, True), "init": "warmup"}

    def run_stage(out, runtime):
        self_training.run(source=data["source"], target=data["target"], stm_maps=data["stm"], out_checkpoint=out,
                          model=MODEL, train=train_cfg(ITERATIONS), augment=AUGMENT, cfg=cfg, data=DATA,
                          runtime=runtime, threads=threads, init_checkpoint=data["warmup"])
        assert torch.get_num_threads() == threads

    off, on = train_both_ways(run_stage, data["tmp"], "st", monkeypatch, branches=3 if consistency else 2,
                              teacher=bool(consistency))
    assert_same_state(off["model"], on["model"])
    if consistency:
        assert_same_state(off["ema"], on["ema"])
    start = torch.load(data["warmup"], weights_only=True)["model"]
    assert any(not torch.equal(off["model"][k], start[k]) for k in start)  # it trained


def test_distillation_gives_the_same_weights_with_the_side_thread(data, monkeypatch) -> None:
    from bismap.stages import distillation

    cfg = {**dill_cfg("kl", use_stm=True), "init": "warmup"}

    def run_stage(out, runtime):
        distillation.run(source=data["source"], target=data["target"], stm_maps=data["stm"],
                         teacher_checkpoint=data["warmup"], out_checkpoint=out, model=MODEL,
                         train=train_cfg(ITERATIONS), augment=AUGMENT, cfg=cfg, data=DATA, runtime=runtime,
                         threads=1, init_checkpoint=data["warmup"])

    off, on = train_both_ways(run_stage, data["tmp"], "kd", monkeypatch, branches=2, teacher=True)
    assert_same_state(off["model"], on["model"])


def test_branches_must_cover_every_loss_once() -> None:
    from bismap.engine.side_thread import Branches, SideThread

    net = torch.nn.Linear(3, 1)
    x = torch.ones(2, 3)
    a, b = net(x).sum(), (net(x) ** 2).sum()
    side = SideThread(True)
    try:
        branches = Branches(side, list(net.parameters()))
        branches.add([a])
        with pytest.raises(ValueError, match=r"not in a branch: \['b'\]"):
            branches.set_grads({"a": a, "b": b})
        branches.add([b])
        branches.set_grads({"a": a, "b": b})
        expected = [torch.autograd.grad([a2 + b2], list(net.parameters())) for a2, b2 in
                    [(net(x).sum(), (net(x) ** 2).sum())]][0]
        for p, g in zip(net.parameters(), expected):
            assert torch.allclose(p.grad, g)
    finally:
        side.close()

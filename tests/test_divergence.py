"""A diverged training run stops with one line before it writes anything built on the diverged state, and
nothing downstream accepts NaN weights, scores or features (issue 27: lr 30 saved inf weights, lr 1000
evaluated 'every pixel road' as a normal model)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from bismap.engine import checkpoint, trainer
from bismap.engine.divergence import Diverged, nonfinite_tensor, parameter_norm
from bismap.io import InputError
from conftest import TINY_MODEL
from test_engine import TRAIN, assert_same_state, ce_loss, make_run
from test_workflow import make_copy, snakemake

GUARD = {"max_loss_growth": 1000.0, "max_weight_growth": 100.0}


def fit(out: Path, loss_fn=ce_loss, fp: str = "fp", checkpoint_every: int = 4, log_every: int = 3, **guard):
    model, streams = make_run()
    trainer.fit(model=model, loss_fn=loss_fn, streams=streams, train_cfg=TRAIN, out_checkpoint=out,
                fingerprint=fp, ema_decay=0.9, device="cpu", tensorboard_dir=None,
                checkpoint_every=checkpoint_every, log_every=log_every, **{**GUARD, **guard})
    return torch.load(out, weights_only=True)


def exploding(factor: float, from_iteration: int):
    def loss_fn(ctx):
        losses = ce_loss(ctx)
        if ctx.iteration >= from_iteration:
            losses = {k: v * factor for k, v in losses.items()}
        return losses
    return loss_fn


def test_the_guard_changes_no_number_of_a_normal_run(tmp_path):
    guarded = fit(tmp_path / "a.pt")
    unguarded = fit(tmp_path / "b.pt", max_loss_growth=0, max_weight_growth=0)
    assert_same_state(guarded["model"], unguarded["model"])
    assert_same_state(guarded["ema"], unguarded["ema"])


def test_a_finite_loss_explosion_stops_before_the_resume_file_is_written(tmp_path):
    out = tmp_path / "warmup.pt"
    with pytest.raises(Diverged) as exc:
        fit(out, loss_fn=exploding(1e7, 3))            # iteration 4 (index 3) is the first huge one
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(f"{out}: training diverged at iteration 4/8: the training loss grew")
    assert "runtime.max_loss_growth (1000)" in msg and "no checkpoint was written" in msg and "train.lr (0.05)" in msg
    assert not out.exists() and not checkpoint.resume_path(out).exists()
    late = exploding(3e3, 7)                          # only the last iteration: still finite weights after it
    with pytest.raises(Diverged, match="iteration 8/8: the training loss grew"):
        fit(tmp_path / "late.pt", loss_fn=late)
    fit(tmp_path / "late.pt", loss_fn=late, max_loss_growth=0)  # 0 = off: the same run finishes
    assert (tmp_path / "late.pt").is_file()


def test_non_finite_weights_stop_and_the_last_good_resume_file_is_kept(tmp_path):
    out = tmp_path / "m.pt"

    def poisoned(ctx):
        if ctx.iteration == 4:  # after the resume file of iteration 4
            with torch.no_grad():
                ctx.model.backbone[1].running_var.fill_(float("inf"))
        return ce_loss(ctx)

    with pytest.raises(Diverged, match=r"iteration 6/8: the model's backbone\.1\.running_var holds NaN or inf; "
                                       r"the last resume file .*m\.pt\.resume\.pt is kept"):
        fit(out, loss_fn=poisoned)
    resume = torch.load(checkpoint.resume_path(out), weights_only=True)
    assert resume["iteration"] == 4 and nonfinite_tensor(resume["model"]) is None
    # the rerun resumes from the good state and ends where an uninterrupted run ends
    resumed = fit(out)
    assert_same_state(resumed["model"], fit(tmp_path / "clean.pt")["model"])


def test_weights_that_grow_a_hundredfold_stop_the_run(tmp_path):
    def blown_up(ctx):
        if ctx.iteration == 1:
            with torch.no_grad():
                for p in ctx.model.parameters():
                    p.mul_(1000)
        return ce_loss(ctx)

    with pytest.raises(Diverged, match=r"iteration 3/8: the weights' norm grew to .*x the .* training started "
                                       r"from \(limit runtime.max_weight_growth 100\)"):
        fit(tmp_path / "m.pt", loss_fn=blown_up, max_loss_growth=0)


def test_a_non_finite_resume_file_is_never_resumed(tmp_path, capsys):
    out = tmp_path / "m.pt"
    shutil.copy(_resume_file_at_4(tmp_path), checkpoint.resume_path(out))
    state = torch.load(checkpoint.resume_path(out), weights_only=True)
    state["model"]["head.1.weight"][0, 0, 0, 0] = float("nan")  # as an older version could have written
    torch.save(state, checkpoint.resume_path(out))
    final = fit(out)
    assert "holds NaN or inf (written by a diverged run); starting fresh" in capsys.readouterr().out
    assert_same_state(final["model"], fit(tmp_path / "clean.pt")["model"])


def _resume_file_at_4(tmp_path: Path) -> Path:
    out = tmp_path / "killed" / "m.pt"
    out.parent.mkdir()

    def killed(ctx):
        if ctx.iteration == 5:
            raise KeyboardInterrupt
        return ce_loss(ctx)

    with pytest.raises(KeyboardInterrupt):
        fit(out, loss_fn=killed)
    return checkpoint.resume_path(out)


def test_load_model_refuses_non_finite_weights(tmp_path):
    from bismap.models import build_model

    net = build_model(TINY_MODEL)
    state = net.state_dict()
    state["decoder.classifier.bias"][2] = float("nan")
    path = tmp_path / "warmup.pt"
    checkpoint.save_checkpoint(path, {"format": checkpoint.FORMAT, "model_config": dict(TINY_MODEL), "model": state,
                                      "ema": None, "iteration": 2})
    with pytest.raises(InputError, match=r"warmup\.pt: its model weight decoder\.classifier\.bias holds NaN or inf"):
        checkpoint.load_model(path)


def test_parameter_norm_does_not_overflow():
    big = [torch.full((1000,), 1e30)]
    assert parameter_norm(big) == pytest.approx(1e30 * 1000 ** 0.5)


def test_label_stages_refuse_nan_scores():
    from bismap.method.labelling import check_scores

    check_scores(np.array([[0.5, -np.inf]]), "a.png", "pseudo_labels")  # -inf: the lowest score, rejected
    for bad in (np.nan, np.inf):
        with pytest.raises(InputError, match="pseudo_labels: the scores of target image a.png hold NaN or inf"):
            check_scores(np.array([[0.5, bad]]), "a.png", "pseudo_labels")


def test_kmeans_and_prototypes_refuse_nan_features(tmp_path):
    import h5py

    from bismap.method.kmeans import kmeans
    from bismap.stages import fit_prototypes
    from conftest import schema_defaults

    x = torch.randn(50, 4)
    x[7, 2] = float("nan")
    with pytest.raises(ValueError, match="kmeans: the samples hold NaN or inf"):
        kmeans(x, 3)
    bank = tmp_path / "bank.h5"
    with h5py.File(bank, "w") as f:
        for c in range(19):
            f.create_dataset(f"class_{c}", data=x.numpy() if c == 0 else np.zeros((0, 4), np.float32))
    with pytest.raises(InputError, match=r"bank\.h5: class_0 holds NaN or inf features"):
        fit_prototypes.run(features_h5=bank, out_path=tmp_path / "p.pt",
                           cfg=schema_defaults("prototypes", components=2, device="cpu"))
    assert not (tmp_path / "p.pt").exists()


@pytest.mark.slow
@pytest.mark.parametrize("lr, iterations, sign", [(30, 20, "the training loss grew to"),
                                                  (1000, 2, "the weights' norm grew to")])
def test_a_diverging_warmup_stops_the_workflow_with_one_line(tmp_path, lr, iterations, sign):
    """The two learning rates of the report, on the tiny config: lr 30 keeps a finite loss that explodes,
    lr 1000 moves the weights 1000-fold in two iterations while the loss stays near 3."""
    work = make_copy(tmp_path / "wf")
    (work / "lr.yaml").write_text(f"train: {{lr: {lr}, iterations: {iterations}}}\n"
                                  "runtime: {checkpoint_every: 5, log_every: 5}\n")
    r = snakemake(work, "--cores", "1", "--configfile", "configs/tiny.yaml", "lr.yaml", "--",
                  "results/tiny/models/warmup.pt")
    assert r.returncode != 0
    lines = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.startswith("bismap warmup: error:")]
    assert len(lines) == 1, r.stdout[-3000:] + r.stderr[-3000:]
    assert "results/tiny/models/warmup.pt: training diverged at iteration" in lines[0] and sign in lines[0]
    assert f"Lower train.lr ({lr})" in lines[0]
    assert not (work / "results/tiny/models/warmup.pt").exists()

"""Stage: self-training on fixed target pseudo labels (the original's Stage D).

Per iteration: STM-weighted CE on the (stylised) source, symmetric CE on the fixed pseudo labels
computed on the weak target view, and a mean-teacher masked consistency term (EMA teacher on the
weak view, student on the strong cut-out view, KL on the kept pixels) ramped up with a sigmoid.
`init: fresh` builds the model from the `model` slice (model.weights, e.g. ImageNet), as the
original; `init: warmup` fine-tunes the source-only warm-up checkpoint instead (the embedded
default: a from-scratch ResNet-18 cannot learn the task again in a short self-training schedule).

The naive self-training baseline is this function with naive (confidence-threshold) labels,
`use_stm: false` and `consistency.weight: 0`; weight 0 also drops the strong view and the EMA.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import torch

from bismap.engine.launch import on_ranks
from bismap.engine.stage_setup import build_seeded_model, build_stream, build_view, derive_seed, init_from_checkpoint
from bismap.engine.stage_training import begin, train_stage
from bismap.engine.step_context import Step
from bismap.io import InputError
from bismap.method.steps import source_and_target_terms


@contextlib.contextmanager
def teacher_mode(net: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Train-mode BN (batch statistics, as the original) with every dropout off; restores modes after."""
    modes = {m: m.training for m in net.modules()}
    net.train()
    for m in net.modules():
        if isinstance(m, (torch.nn.Dropout, torch.nn.Dropout2d, torch.nn.Dropout3d, torch.nn.AlphaDropout)):
            m.eval()
    try:
        yield net
    finally:
        for m, training in modes.items():
            m.training = training


def consistency_weight(cfg: dict, iteration: int) -> float:
    """weight * sigmoid_rampup(iteration, rampup): the mean-teacher weight at this iteration."""
    from bismap.method.losses import sigmoid_rampup

    cons = cfg["consistency"]
    weight = float(cons["weight"])
    if weight == 0.0:
        return 0.0
    return weight * float(sigmoid_rampup(iteration, int(cons["rampup"])))


def consistency_enabled(cfg: dict) -> bool:
    cons = cfg["consistency"]
    return float(cons["weight"]) > 0.0


def make_loss_fn(cfg: dict) -> Step:
    """The per-iteration step (a closure over the `self_training` slice) for trainer.fit: source
    CE, target SCE and, with the EMA teacher, the consistency term on the strong view."""
    from bismap.method.losses import consistency_kl

    terms = source_and_target_terms(cfg)
    if not consistency_enabled(cfg):
        return Step(terms=terms)

    def consistency(ctx) -> dict:
        _, teacher_logits = ctx.teachers["ema"]
        tgt = ctx.batches["target"]
        with ctx.autocast():
            _, strong_logits = ctx.model(tgt["strong"])
        w = consistency_weight(cfg, ctx.iteration)
        return {"consistency": w * consistency_kl(strong_logits.float(), teacher_logits.float(), tgt["keep"])}

    return Step(terms=[*terms, consistency],
                teachers={"ema": lambda ctx: (ctx.ema, ctx.batches["target"]["image"], teacher_mode)})


@on_ranks
def run(*, source: dict, target: dict, stm_maps: str | Path | None, out_checkpoint: str | Path, model: dict,
        train: dict, train_overrides: dict | None = None, augment: dict, cfg: dict, data: dict, runtime: dict,
        threads: int = 1, init_checkpoint: str | Path | None = None) -> None:
    """Self-train `model` (fresh, or the warm-up checkpoint when `init: warmup`) on source + target
    pseudo labels; writes the final checkpoint."""
    args = dict(locals())  # first: the arguments alone, from which the resume fingerprint derives
    device, train, seed = begin(args)
    use_consistency = consistency_enabled(cfg)
    if cfg["use_stm"] and stm_maps is None:
        raise InputError("self_training: `use_stm` is true but no STM maps file was given")
    if cfg["init"] == "warmup" and init_checkpoint is None:
        raise InputError("self_training: `init` is 'warmup' but no warm-up checkpoint was given")

    src_view = build_view(source, augment, data, seed=derive_seed(seed, "source-view"),
                          weight_maps=stm_maps if cfg["use_stm"] else None)
    tgt_view = build_view(target, augment, data, seed=derive_seed(seed, "target-view"),
                          strong=cfg["strong"] if use_consistency else None)
    streams = {
        "source": build_stream(src_view, train, runtime, seed=derive_seed(seed, "source-stream")),
        "target": build_stream(tgt_view, train, runtime, seed=derive_seed(seed, "target-stream")),
    }
    net = build_seeded_model(model, seed)
    if cfg["init"] == "warmup":
        init_from_checkpoint(net, init_checkpoint, stage="self_training")
    train_stage("self_training", args, net=net, loss_fn=make_loss_fn(cfg), streams=streams, device=device,
                ema_decay=float(cfg["consistency"]["ema_decay"]) if use_consistency else None, side_thread=True)

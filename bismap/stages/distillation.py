"""Stage: self-distillation round (the original's Stage E, training half).

A student learns from STM-weighted source CE, symmetric CE on the teacher's hard labels and a
distillation term against the frozen teacher's logits on the same weak target crop. No EMA and
no consistency term, as in the original. `init: fresh` builds the student fresh (backbone from
`distillation.student_weights`, e.g. SimCLRv2 R101-1x-SK0, and a fresh head), as the original;
`init: teacher` starts it as a copy of the teacher (the embedded from-scratch default); `init: warmup`
starts every round's student from the source-only warm-up, so a round cannot compound its
teacher's drift by fine-tuning it on its own labels. `kd.variant: kl` is a true KL(teacher || student);
`original` reproduces the original's probabilities-as-log-probabilities term (see losses).
"""
from __future__ import annotations

from pathlib import Path

import torch

from bismap.engine.launch import on_ranks
from bismap.engine.stage_setup import (
    build_seeded_model,
    build_stream,
    build_view,
    derive_seed,
    init_from_checkpoint,
    model_config,
)
from bismap.engine.stage_training import begin, train_stage
from bismap.engine.step_context import Step
from bismap.io import InputError
from bismap.method.steps import source_and_target_terms

SECTION = "distillation"


def student_model_config(model: dict, cfg: dict) -> dict:
    """The `model` slice with the student's backbone weights (null = `model.weights`) and optional
    `student_backbone` (null/absent = `model.backbone`, e.g. simclr_r101 for r101_1x_sk0.pth)."""
    weights = cfg["student_weights"]
    return model_config(model, weights=weights, backbone=cfg["student_backbone"])


def make_loss_fn(cfg: dict, teacher: torch.nn.Module) -> Step:
    """Per-iteration step for trainer.fit: source CE (+STM) + target SCE + kd.weight * KD."""
    from bismap.method.losses import distillation_loss

    kd = cfg["kd"]
    kd_weight = float(kd["weight"])
    variant = str(kd["variant"])
    if kd_weight == 0.0:
        return Step(terms=source_and_target_terms(cfg))

    def kd_term(ctx, target_logits) -> dict:
        _, teacher_logits = ctx.teachers["teacher"]
        return {"kd": kd_weight * distillation_loss(target_logits.float(), teacher_logits.float(), variant=variant)}

    return Step(terms=source_and_target_terms(cfg, target_extra=kd_term),
                teachers={"teacher": lambda ctx: (teacher, ctx.batches["target"]["image"], None)})


@on_ranks
def run(*, source: dict, target: dict, stm_maps: str | Path | None, teacher_checkpoint: str | Path,
        out_checkpoint: str | Path, model: dict, train: dict, train_overrides: dict | None = None, augment: dict,
        cfg: dict, data: dict, runtime: dict, threads: int = 1, init_checkpoint: str | Path | None = None) -> None:
    """Distil the frozen teacher into a student (fresh, a copy of the teacher, or the warm-up at
    `init_checkpoint`); writes the final-iteration checkpoint."""
    args = dict(locals())  # first: the arguments alone, from which the resume fingerprint derives
    from bismap.engine import checkpoint

    device, train, seed = begin(args)
    if cfg["use_stm"] and stm_maps is None:
        raise InputError(f"{SECTION}: `use_stm` is true but no STM maps file was given")
    init = cfg["init"]
    if init != "fresh" and (cfg["student_weights"] or cfg["student_backbone"]):
        raise InputError(f"config: `{SECTION}.init: {init}` copies a trained model, so `student_weights` and "
                         "`student_backbone` must be null (use `init: fresh` for a SimCLR student)")
    if init == "warmup" and init_checkpoint is None:
        raise InputError(f"{SECTION}: `init` is 'warmup' but no warm-up checkpoint was given")

    teacher = checkpoint.load_model(str(teacher_checkpoint), device=device, which="model")
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)

    src_view = build_view(source, augment, data, seed=derive_seed(seed, "source-view"),
                          weight_maps=stm_maps if cfg["use_stm"] else None)
    tgt_view = build_view(target, augment, data, seed=derive_seed(seed, "target-view"))
    streams = {
        "source": build_stream(src_view, train, runtime, seed=derive_seed(seed, "source-stream")),
        "target": build_stream(tgt_view, train, runtime, seed=derive_seed(seed, "target-stream")),
    }
    student_cfg = student_model_config(model, cfg)
    net = build_seeded_model(student_cfg, seed)
    if init in ("teacher", "warmup"):
        init_from_checkpoint(net, teacher_checkpoint if init == "teacher" else init_checkpoint, stage=SECTION)
    train_stage(SECTION, args, net=net, loss_fn=make_loss_fn(cfg, teacher), streams=streams, device=device,
                model_config=student_cfg, side_thread=True)

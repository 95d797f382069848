"""The loss terms self-training and distillation share (same operations, same order)."""
from __future__ import annotations

from typing import Callable

import torch


def source_and_target_terms(cfg: dict, target_extra: Callable | None = None) -> list[Callable]:
    """The two supervised terms of self-training and distillation, as Step terms: STM-weighted
    source CE, and symmetric CE on the target labels. `target_extra(ctx, target_logits) -> losses`
    adds a stage's own losses on the same target forward pass (distillation's KD)."""
    from bismap.method.losses import symmetric_cross_entropy, weighted_cross_entropy

    use_stm = bool(cfg["use_stm"])
    sce = cfg["sce"]
    alpha = float(sce["alpha"])
    beta = float(sce["beta"])

    def source(ctx) -> dict[str, torch.Tensor]:
        src = ctx.batches["source"]
        with ctx.autocast():
            _, logits = ctx.model(src["image"])
        return {"source_ce": weighted_cross_entropy(logits.float(), src["label"],
                                                    weight=src["weight"] if use_stm else None)}

    def target(ctx) -> dict[str, torch.Tensor]:
        tgt = ctx.batches["target"]
        with ctx.autocast():
            _, logits = ctx.model(tgt["image"])
        out = {"target_sce": symmetric_cross_entropy(logits.float(), tgt["label"], alpha=alpha, beta=beta)}
        if target_extra is not None:
            out.update(target_extra(ctx, logits))
        return out

    return [source, target]

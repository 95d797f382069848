"""Training-step pieces shared by self-training and distillation (same operations, same order)."""
from __future__ import annotations


def source_and_target_losses(cfg: dict, section: str):
    """The two supervised terms self-training and distillation share: STM-weighted source CE and
    symmetric CE on the target labels. Returns `step(ctx) -> (losses, target_logits)` so the
    stage can add its own term on the same target forward pass: it then passes
    `target_branch_open=True` and declares the target branch itself (`ctx.branch`, with that term).

    Each loss is computed right after its forward, so the source branch's backward can run on the
    side thread while the target forward runs; the single backward gives the same gradients
    either way (tests/test_side_thread.py)."""
    from bismap.losses import symmetric_cross_entropy, weighted_cross_entropy

    use_stm = bool(cfg["use_stm"])
    sce = cfg["sce"]
    alpha = float(sce["alpha"])
    beta = float(sce["beta"])

    def step(ctx, target_branch_open: bool = False):
        src, tgt = ctx.batches["source"], ctx.batches["target"]
        with ctx.autocast():
            _, src_logits = ctx.model(src["image"])
        source_ce = weighted_cross_entropy(src_logits.float(), src["label"], weight=src["weight"] if use_stm else None)
        ctx.branch(source_ce)
        with ctx.autocast():
            _, tgt_logits = ctx.model(tgt["image"])
        target_sce = symmetric_cross_entropy(tgt_logits.float(), tgt["label"], alpha=alpha, beta=beta)
        if not target_branch_open:
            ctx.branch(target_sce)
        return {"source_ce": source_ce, "target_sce": target_sce}, tgt_logits

    return step

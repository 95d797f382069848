"""Which jobs a sharded label stage becomes; rules import it at parse time, so it imports nothing (no torch)."""
from __future__ import annotations


def needs_statistics(cfg: dict) -> bool:
    """A label stage's labels depend on every image at once (the prior alignment's offset, per-class
    percentile or balanced thresholds): its shards then wait for one statistics job (`run_statistics` of
    bismap.stages.pseudo_labels, naive_labels, teacher_labels). `cfg`: the stage's config section."""
    return bool(cfg.get("align_prior", False)) or str(cfg["selection"]) in ("percentile", "balanced")

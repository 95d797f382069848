"""Activation checkpointing of the backbone's residual blocks: memory for compute, same numbers.

With it on, a training forward keeps only each block's input; the block's inner activations are
recomputed during the backward pass (torch.utils.checkpoint, non-reentrant). The backbone's blocks
hold most of the activation memory of DeepLabV3+ at the paper's crops, so this is what lets the
paper setting run on smaller cards, for about one more backbone forward per step.

Batch norm in training mode updates its running statistics in every forward; the recomputation
must not update them a second time, or the statistics (and every evaluation) would differ from a
run without checkpointing. The recompute context sets each BN's momentum to 0 (running = running)
and puts `num_batches_tracked` back, so checkpoints are the same either way.
"""
from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


@contextlib.contextmanager
def _running_statistics_kept(module: nn.Module) -> Iterator[None]:
    norms = [m for m in module.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats]
    saved = [(m, m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone())
             for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum, tracked in saved:
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


def run_blocks(blocks: Iterable[nn.Module], x: torch.Tensor, checkpointing: bool) -> torch.Tensor:
    """`x` through `blocks` in order, each one checkpointed when `checkpointing` and autograd records."""
    for block in blocks:
        if checkpointing and block.training and torch.is_grad_enabled():
            x = checkpoint(block, x, use_reentrant=False,
                           context_fn=lambda b=block: (contextlib.nullcontext(), _running_statistics_kept(b)))
        else:
            x = block(x)
    return x


def set_activation_checkpointing(model: nn.Module, enabled: bool) -> int:
    """Switch checkpointing on every backbone inside `model` that supports it; returns how many."""
    found = 0
    for m in model.modules():
        if hasattr(m, "activation_checkpointing"):
            m.activation_checkpointing = bool(enabled)
            found += 1
    return found

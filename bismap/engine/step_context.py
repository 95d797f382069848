"""What a training stage's loss function sees at one iteration (trainer.fit calls `loss_fn(ctx)`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager

import torch
from torch import nn

from bismap.engine.side_thread import Branches, SideThread


@dataclass
class StepContext:
    """What loss_fn sees at one iteration."""

    model: nn.Module                      # the (possibly DDP-wrapped) student, train mode
    ema: nn.Module | None                 # the EMA teacher (eval mode unless loss_fn changes it), or None
    batches: dict[str, Any]               # stream name -> batch, tensors on `device`
    iteration: int                        # 0-based index of this optimizer step
    device: torch.device
    autocast: Callable[[], ContextManager]  # `with ctx.autocast(): ...` around forwards
    total_iterations: int = 0
    state: dict = field(default_factory=dict)  # free scratch space for loss_fn (not checkpointed)
    side: SideThread = field(default_factory=lambda: SideThread(False))  # `side.forward` for teachers
    branches: Branches | None = None       # set when the side thread runs branch backwards

    def branch(self, *losses: torch.Tensor) -> None:
        """These losses complete one branch (a forward no later loss reads): its backward may start
        now on the side thread (engine.side_thread). Declare every loss or none."""
        if self.branches is not None:
            self.branches.add(losses)

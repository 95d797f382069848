"""What a training stage computes per iteration (`Step`) and what its loss code sees (`StepContext`).

A stage describes its step as data: the teachers' no-grad forwards, then loss terms in order. Where
each part runs (inline, or a teacher forward and finished terms' backwards on a second CPU thread:
engine.side_thread) is the trainer's business; loss code never sees it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Mapping, Sequence

import torch
from torch import nn

Losses = Mapping[str, torch.Tensor]
# A teacher forward: ctx -> (model, image, mode), mode a context manager factory the model runs in, or None.
TeacherForward = Callable[["StepContext"], tuple[nn.Module, torch.Tensor, Callable | None]]


@dataclass
class StepContext:
    """What loss code sees at one iteration."""

    model: nn.Module                      # the (possibly DDP-wrapped) student, train mode
    ema: nn.Module | None                 # the EMA teacher (eval mode unless loss code changes it), or None
    batches: dict[str, Any]               # stream name -> batch, tensors on `device`
    iteration: int                        # 0-based index of this optimizer step
    device: torch.device
    autocast: Callable[[], ContextManager]  # `with ctx.autocast(): ...` around forwards
    total_iterations: int = 0
    state: dict = field(default_factory=dict)  # free scratch space for loss code (not checkpointed)
    teachers: Mapping[str, Any] = field(default_factory=dict)  # Step.teachers' outputs by name


@dataclass(frozen=True)
class Step:
    """One iteration's losses: `teachers` (name -> TeacherForward, run under no_grad and autocast,
    their outputs in `ctx.teachers[name]`), then `terms` in order, each doing its own forwards and
    returning named losses that no later term reads (one branch of the graph each).

    Calling a Step runs it inline and returns all losses: it is a loss function for trainer.fit as
    any `ctx -> losses` callable is; the trainer may instead run it through engine.side_thread."""

    terms: Sequence[Callable[[StepContext], Losses]]
    teachers: Mapping[str, TeacherForward] = field(default_factory=dict)

    def __call__(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        from bismap.engine.side_thread import SideThread, run_step

        return run_step(self, ctx, SideThread(False), [])[0]


def as_step(loss_fn: Step | Callable[[StepContext], Losses]) -> Step:
    """A plain `ctx -> losses` function is a Step of one term."""
    return loss_fn if isinstance(loss_fn, Step) else Step(terms=[loss_fn])

"""Stop a training run that has diverged, before it writes anything built on the diverged state.

A too-high learning rate does not always give a NaN loss: at lr 30 the loss grew to 1e21 while
staying finite and the saved weights held inf; at lr 1000 two iterations grew the weights 1000-fold
(every pixel then predicts one class) with a loss of 3.3. Three signs, checked at every progress line
and before every checkpoint write (one host sync each): non-finite weights or buffers, a loss that
grew past `max_loss_growth` times the first iteration's (at least 1), and a global parameter norm past
`max_weight_growth` times the one training started from. Normal runs change the norm by a few per cent
(the default run's oracle: 0.96x after 1,000 iterations); 0 switches a check off.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import torch
from torch import nn

from bismap.io import InputError


class Diverged(InputError):
    """Training diverged; its message is one line naming the checkpoint, the iteration and the sign."""

    @classmethod
    def at(cls, out_checkpoint, done: int, total: int, problem: str, resume_file: Path, lr: float) -> "Diverged":
        if resume_file.exists():
            kept = f"the last resume file {resume_file} is kept (written before the divergence was seen)"
        else:
            kept = "no checkpoint was written"
        return cls(f"{out_checkpoint}: training diverged at iteration {done}/{total}: {problem}; {kept}. "
                   f"Lower train.lr ({lr:g}) or check the inputs")


def nonfinite_tensor(state: Mapping[str, torch.Tensor]) -> str | None:
    """The name of the first floating tensor of `state` holding NaN or inf, else None (one host sync)."""
    names = [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point() and v.numel()]
    if not names:
        return None
    finite = torch.stack([torch.isfinite(state[k]).all() for k in names])
    if bool(finite.all()):
        return None
    return names[int((~finite).nonzero()[0])]


def parameter_norm(parameters: Iterable[torch.Tensor]) -> float:
    """The global L2 norm of the parameters (float64 per tensor: no overflow below 1e150)."""
    norms = [torch.linalg.vector_norm(p.detach(), dtype=torch.float64) for p in parameters]
    return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0


@dataclass
class DivergenceGuard:
    """The references (first loss, starting norm) and limits; its state travels in the resume file."""

    max_loss_growth: float = 0.0
    max_weight_growth: float = 0.0
    first_loss: float | None = None
    start_norm: float | None = None

    def state_dict(self) -> dict:
        return {"first_loss": self.first_loss, "start_norm": self.start_norm}

    def load_state_dict(self, state: Mapping | None) -> None:
        if state:
            self.first_loss, self.start_norm = state.get("first_loss"), state.get("start_norm")

    def start(self, model: nn.Module) -> None:
        """The norm training starts from (kept from the resume file when resuming)."""
        if self.start_norm is None and self.max_weight_growth > 0:
            self.start_norm = parameter_norm(model.parameters())

    def record_first_loss(self, loss: torch.Tensor) -> None:
        if self.first_loss is None and self.max_loss_growth > 0:
            self.first_loss = float(loss.detach())

    def problem(self, model: nn.Module, ema: nn.Module | None, loss_mean: float | None,
                loss_must_be_finite: bool) -> str | None:
        """What says the run diverged (one clause), or None."""
        if loss_mean is not None and not math.isfinite(loss_mean) and loss_must_be_finite:
            return f"the training loss became {loss_mean}"
        for name, module in (("model", model), ("EMA teacher", ema)):
            if module is not None:
                bad = nonfinite_tensor(module.state_dict())
                if bad is not None:
                    return f"the {name}'s {bad} holds NaN or inf"
        if loss_mean is not None and math.isfinite(loss_mean) and self.max_loss_growth > 0 and self.first_loss:
            reference = max(abs(self.first_loss), 1.0)
            if loss_mean > self.max_loss_growth * reference:
                return (f"the training loss grew to {loss_mean:.3g}, over runtime.max_loss_growth "
                        f"({self.max_loss_growth:g}) x max(first iteration's loss {self.first_loss:.3g}, 1)")
        if self.max_weight_growth > 0 and self.start_norm:
            norm = parameter_norm(model.parameters())
            if not norm <= self.max_weight_growth * self.start_norm:
                return (f"the weights' norm grew to {norm:.3g}, {norm / self.start_norm:.3g}x the "
                        f"{self.start_norm:.3g} training started from (limit runtime.max_weight_growth "
                        f"{self.max_weight_growth:g})")
        return None

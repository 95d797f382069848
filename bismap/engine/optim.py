"""SGD with the original's two learning rates and its warm-up + poly schedule.

The original trains the backbone at `lr` and ASPP + decoder at 10x (head_10x_lr), with a
linear warm-up from 0 over `warmup_iters` followed by poly decay to an absolute `min_lr`
(the same floor for both groups, as its PolyLR with eta_min does).
"""
from __future__ import annotations

import torch
from torch import nn


def param_groups(model: nn.Module) -> tuple[list, list]:
    """(backbone, head) parameters; models without param_groups() train everything at 1x."""
    module = getattr(model, "module", model)  # DDP
    if hasattr(module, "param_groups"):
        backbone, head = module.param_groups()
        return list(backbone), list(head)
    return list(module.parameters()), []


def build_optimizer(model: nn.Module, *, lr: float, head_lr_mult: float = 10.0, momentum: float = 0.9,
                    weight_decay: float = 5e-4) -> torch.optim.SGD:
    """SGD(momentum, weight decay) with group 0 = backbone at lr, group 1 = head at lr*head_lr_mult."""
    backbone, head = param_groups(model)
    backbone = [p for p in backbone if p.requires_grad]
    head = [p for p in head if p.requires_grad]
    groups = [{"params": backbone, "lr": float(lr), "name": "backbone"}]
    if head:
        groups.append({"params": head, "lr": float(lr) * float(head_lr_mult), "name": "head"})
    return torch.optim.SGD(groups, lr=float(lr), momentum=float(momentum), weight_decay=float(weight_decay))


def warmup_poly_lr(iteration: int, *, base_lr: float, total_iters: int, warmup_iters: int, power: float,
                   min_lr: float) -> float:
    """Learning rate used for the optimizer step of `iteration` (0-based).

    Warm-up: base_lr * iteration / warmup_iters (starts at exactly 0, as the original).
    Then: min_lr + (base_lr - min_lr) * (1 - (iteration - warmup) / (total - warmup)) ** power.
    """
    if warmup_iters > 0 and iteration < warmup_iters:
        return base_lr * iteration / warmup_iters
    span = max(total_iters - warmup_iters, 1)
    progress = min(max(iteration - warmup_iters, 0) / span, 1.0)
    return min_lr + (base_lr - min_lr) * (1.0 - progress) ** power


class WarmupPolyFactor:
    """Picklable LambdaLR factor (LambdaLR saves callable objects' __dict__ in its state_dict)."""

    def __init__(self, base_lr: float, total_iters: int, warmup_iters: int, power: float, min_lr: float):
        self.base_lr = float(base_lr)
        self.total_iters = int(total_iters)
        self.warmup_iters = int(warmup_iters)
        self.power = float(power)
        self.min_lr = float(min_lr)

    def __call__(self, iteration: int) -> float:
        if self.base_lr == 0.0:
            return 0.0
        return warmup_poly_lr(iteration, base_lr=self.base_lr, total_iters=self.total_iters,
                              warmup_iters=self.warmup_iters, power=self.power, min_lr=self.min_lr) / self.base_lr


def build_scheduler(optimizer: torch.optim.Optimizer, *, total_iters: int, warmup_iters: int = 0,
                    power: float = 0.9, min_lr: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR (one factor per group, so min_lr is an absolute floor per group); step once per iteration."""
    factors = [WarmupPolyFactor(g["initial_lr"] if "initial_lr" in g else g["lr"], total_iters, warmup_iters,
                                power, min_lr) for g in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=factors)


def from_train_cfg(model: nn.Module, train_cfg: dict) -> tuple[torch.optim.SGD, torch.optim.lr_scheduler.LambdaLR]:
    """Optimizer and scheduler from the `train` config slice (the keys trainer.TRAIN_KEYS lists)."""
    opt = build_optimizer(model, lr=train_cfg["lr"], head_lr_mult=train_cfg["head_lr_mult"],
                          momentum=train_cfg["momentum"], weight_decay=train_cfg["weight_decay"])
    sched = build_scheduler(opt, total_iters=train_cfg["iterations"], warmup_iters=train_cfg["warmup_iters"],
                            power=train_cfg["poly_power"], min_lr=train_cfg["min_lr"])
    return opt, sched

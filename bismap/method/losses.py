"""Training losses of BiSMAP. Logits may come at stride 4: they are upsampled bilinearly
(align_corners=True, as the original's `cross_entropy2d`) to the label / mask size inside.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from bismap.io import InputError

__all__ = ["weighted_cross_entropy", "symmetric_cross_entropy", "consistency_kl", "sigmoid_rampup", "distillation_loss",
           "upsample_to"]


def upsample_to(logits: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Bilinear (align_corners=True) resize of [B,C,h,w] logits to `size` (no-op when equal)."""
    size = tuple(size)
    if tuple(logits.shape[-2:]) == size:
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=True)


def _zero(logits: torch.Tensor) -> torch.Tensor:
    # keeps the graph connected (DDP / GradScaler expect a grad) when there is nothing to learn from
    return logits.sum() * 0.0


def _at_label_size(logits: torch.Tensor, target: torch.Tensor, ignore_index: int):
    """Logits upsampled to the labels (float), labels as long, the valid mask and its pixel count."""
    logits = upsample_to(logits, target.shape[-2:]).float()
    target = target.long()
    valid = target != ignore_index
    return logits, target, valid, valid.sum()


def weighted_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                           ignore_index: int = 255) -> torch.Tensor:
    """sum over valid pixels of w*CE, divided by the NUMBER of valid pixels (not the weight sum),
    as the original's STM-weighted source loss; weight=None is plain CE."""
    logits, target, valid, n = _at_label_size(logits, target, ignore_index)
    if n == 0:
        return _zero(logits)
    ce = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none")
    if weight is not None:
        ce = ce * weight.to(ce.dtype)
    return ce[valid].sum() / n


def symmetric_cross_entropy(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.1, beta: float = 1.0,
                            ignore_index: int = 255) -> torch.Tensor:
    """alpha*CE + beta*RCE on noisy pseudo labels (ProDA's `rce`): RCE = -sum_c p_c log(clip(onehot_c, 1e-4, 1))
    with p clamped to [1e-7, 1], i.e. -ln(1e-4)*(1 - p_y); both averaged over valid pixels."""
    logits, target, valid, n = _at_label_size(logits, target, ignore_index)
    if n == 0:
        return _zero(logits)
    num_classes = logits.shape[1]
    ce = weighted_cross_entropy(logits, target, ignore_index=ignore_index)
    p = F.softmax(logits, dim=1).clamp(min=1e-7, max=1.0)
    onehot = F.one_hot(torch.where(valid, target, 0), num_classes).permute(0, 3, 1, 2).to(p.dtype)
    rce_map = -(p * torch.log(onehot.clamp(min=1e-4, max=1.0))).sum(dim=1)
    rce = rce_map[valid].sum() / n
    return alpha * ce + beta * rce


def consistency_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, keep_mask: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) summed over kept pixels x classes / (n_kept * C) (PyTorch KLDivLoss 'mean'
    on the selected elements, as the original); the teacher is detached; keep_mask [B,H,W] sets the size."""
    size = keep_mask.shape[-2:]
    s = upsample_to(student_logits, size).float()
    t = upsample_to(teacher_logits.detach(), size).float()
    keep = keep_mask.bool()
    n = keep.sum()
    if n == 0:
        return _zero(s)
    log_s = F.log_softmax(s, dim=1)
    log_t = F.log_softmax(t, dim=1)
    kl = (log_t.exp() * (log_t - log_s)).sum(dim=1)
    return kl[keep].sum() / (n * s.shape[1])


def sigmoid_rampup(iteration: int | float, length: int | float) -> float:
    """exp(-5 (1 - min(t, L)/L)^2); 1.0 when length <= 0 (no ramp)."""
    if length <= 0:
        return 1.0
    t = min(max(float(iteration), 0.0), float(length)) / float(length)
    return float(math.exp(-5.0 * (1.0 - t) ** 2))


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, variant: str = "kl") -> torch.Tensor:
    """Teacher -> student distillation; the teacher is upsampled to the student's size and detached.

    "kl": true KL(t || s) = sum t*(log t - log s), divided by B*C*H*W (the original's normaliser,
          so a weight of 1 stays on the original's scale).
    "original": the original (ProDA `step_distillation`) term, which passes the student's
          PROBABILITIES s where kl_div expects log-probabilities: sum t*(log t - s) / (B*C*H*W).
          Its gradient is -t/N: it maximises sum t*s rather than minimising a KL. Kept for fidelity.
    """
    s_logits = student_logits.float()
    t_logits = upsample_to(teacher_logits.detach(), s_logits.shape[-2:]).float()
    log_t = F.log_softmax(t_logits, dim=1)
    t = log_t.exp()
    if variant == "kl":
        other = F.log_softmax(s_logits, dim=1)
    elif variant == "original":
        other = F.softmax(s_logits, dim=1)
    else:
        raise InputError(f"distillation.kd.variant: must be 'kl' or 'original', got {variant!r}")
    return (t * (log_t - other)).sum() / s_logits.numel()

"""Synchronised BatchNorm for CPU process groups (gloo), where torch's SyncBatchNorm refuses to run.

Why: with the global batch split over ranks, per-rank BatchNorm would normalise each slice by its
own statistics, so N CPU ranks would train a different model than one process. Here the batch
statistics are all-reduced in the forward and the two gradient sums in the backward, as torch's
CUDA SyncBatchNorm does, so N ranks compute the one-process step up to float rounding. On GPUs
the engine uses torch's own nn.SyncBatchNorm; this module serves CPU ranks (tests, CPU clusters).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    dist.all_reduce(t)
    return t


class _SyncBatchNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, eps: float, momentum: float | None):
        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = [1, c] + [1] * (x.dim() - 2)
        local = torch.cat([x.sum(dims), x.new_tensor([x.numel() // c])])
        total = _all_reduce(local)
        n = total[c]
        mean = total[:c] / n
        centred = x - mean.view(shape)
        var = _all_reduce((centred * centred).sum(dims)) / n  # two passes: no E[x^2] - E[x]^2 cancellation
        invstd = torch.rsqrt(var + eps)
        xhat = centred * invstd.view(shape)
        if running_mean is not None and momentum is not None:
            with torch.no_grad():
                running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
                running_var.mul_(1 - momentum).add_(var.detach() * (n / max(float(n) - 1, 1.0)), alpha=momentum)
        ctx.save_for_backward(xhat, weight, invstd)
        ctx.n, ctx.shape, ctx.dims = n, shape, dims
        y = xhat
        if weight is not None:
            y = y * weight.view(shape) + bias.view(shape)
        return y

    @staticmethod
    def backward(ctx, gy):
        xhat, weight, invstd = ctx.saved_tensors
        shape, dims, n = ctx.shape, ctx.dims, ctx.n
        c = xhat.shape[1]
        local_gb = gy.sum(dims)
        local_gw = (gy * xhat).sum(dims)
        total = _all_reduce(torch.cat([local_gb, local_gw]))  # the whole batch's sums, every rank's loss
        scale = invstd if weight is None else invstd * weight
        gx = scale.view(shape) * (gy - (total[:c] / n).view(shape) - xhat * (total[c:] / n).view(shape))
        # Parameter gradients stay local: DDP averages them over the ranks like every other parameter.
        gw = local_gw if weight is not None else None
        gb = local_gb if weight is not None else None
        return gx, gw, gb, None, None, None, None


class CpuSyncBatchNorm(nn.BatchNorm2d):
    """nn.BatchNorm2d whose training-mode statistics span every rank of the process group.

    Same parameters, buffers and state-dict keys as nn.BatchNorm2d, so checkpoints do not change.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return super().forward(x)
        momentum = self.momentum
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if momentum is None:  # cumulative moving average, as nn.BatchNorm2d
                momentum = 1.0 / float(self.num_batches_tracked)
        return _SyncBatchNormFn.apply(x, self.weight, self.bias,
                                      self.running_mean if self.track_running_stats else None,
                                      self.running_var if self.track_running_stats else None,
                                      self.eps, momentum if self.track_running_stats else None)


def convert_cpu_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every nn.BatchNorm2d below `module` (in place) by a CpuSyncBatchNorm holding its state."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            sync = CpuSyncBatchNorm(child.num_features, eps=child.eps, momentum=child.momentum,
                                    affine=child.affine, track_running_stats=child.track_running_stats)
            sync.load_state_dict(child.state_dict())
            sync.train(child.training)
            for p_new, p_old in zip(sync.parameters(), child.parameters()):
                p_new.requires_grad_(p_old.requires_grad)
            setattr(module, name, sync)
        else:
            convert_cpu_sync_batchnorm(child)
    return module

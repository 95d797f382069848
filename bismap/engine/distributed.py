"""Multi-GPU data parallelism (DDP), started by torchrun or by `srun` under SLURM.

Everything else (trainer.fit, the streams) reads the process group from here, so a stage
runs unchanged on one process or many: each rank draws its own slice of every epoch,
gradients are averaged by DDP, BatchNorm statistics are synchronised (SyncBatchNorm) and
only rank 0 writes files or prints progress.
"""
from __future__ import annotations

import datetime
import os
import subprocess
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_info() -> DistInfo:
    """Rank / world / local rank from torchrun (RANK, WORLD_SIZE, LOCAL_RANK) or SLURM
    (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID); a plain process is rank 0 of 1.

    A SLURM job with one task is a plain process: that is how every Snakemake job runs.
    """
    env = os.environ
    if "WORLD_SIZE" in env and "RANK" in env:
        return DistInfo(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        return DistInfo(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)))
    return DistInfo(0, 1, 0)


def _slurm_master_addr() -> str | None:
    nodes = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST")
    if not nodes:
        return None
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True, text=True, check=True)
        return out.stdout.split()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return None


def init_distributed(backend: str | None = None, timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group when launched with several processes; a no-op otherwise.

    backend: nccl when CUDA is available, else gloo. Under SLURM, MASTER_ADDR defaults to the
    job's first node and MASTER_PORT to 29500 + (job id % 1000).
    """
    info = env_info()
    if info.world_size <= 1 or (dist.is_available() and dist.is_initialized()):
        return current_info() if dist.is_available() and dist.is_initialized() else info
    if "MASTER_ADDR" not in os.environ:
        addr = _slurm_master_addr()
        if addr is None:
            raise RuntimeError("distributed launch: MASTER_ADDR is not set and cannot be derived from SLURM")
        os.environ["MASTER_ADDR"] = addr
    os.environ.setdefault("MASTER_PORT", str(29500 + int(os.environ.get("SLURM_JOB_ID", "0")) % 1000))
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(info.local_rank % torch.cuda.device_count())
    dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size,
                            timeout=datetime.timedelta(seconds=timeout_s))
    return info


def current_info() -> DistInfo:
    """The running process group (rank 0 of 1 when none)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK",
                                                                               os.environ.get("SLURM_LOCALID", 0))))
    return DistInfo(0, 1, 0)


def is_main() -> bool:
    return current_info().rank == 0


def world_size() -> int:
    return current_info().world_size


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def wrap_model(model: nn.Module, device: torch.device) -> nn.Module:
    """DDP with SyncBatchNorm when world > 1; the model itself otherwise.

    torch's SyncBatchNorm only runs on GPUs; CPU ranks (gloo: the tests, CPU clusters) get
    engine.sync_batchnorm's equivalent, so N ranks train the one-process model either way. The
    BatchNorm layers are converted in place: `model` stays the module that checkpoints save.
    """
    if world_size() <= 1:
        return model
    if device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # replaces the children in place
        ids = [device.index if device.index is not None else torch.cuda.current_device()]
        return nn.parallel.DistributedDataParallel(model, device_ids=ids, **_no_buffer_sync())
    from bismap.engine.sync_batchnorm import convert_cpu_sync_batchnorm

    convert_cpu_sync_batchnorm(model)
    return nn.parallel.DistributedDataParallel(model, **_no_buffer_sync())


def _no_buffer_sync() -> dict:
    """DDP's switch for "do not re-broadcast buffers every forward" (renamed in newer torch)."""
    import inspect

    params = inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}


def unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def broadcast_buffers(module: nn.Module | None, src: int = 0) -> None:
    """Give every rank rank `src`'s buffers (BN running stats), so saved states are rank independent.

    Needed on CPU where BN is not synchronised: DDP broadcasts buffers only before a forward.
    """
    if module is None or world_size() <= 1:
        return
    for b in unwrap(module).buffers():
        dist.broadcast(b, src)


def all_gather_object(obj):
    """[obj of rank 0, obj of rank 1, ...]; [obj] without a process group."""
    if world_size() <= 1:
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def mean_over_ranks(values: dict) -> dict:
    """The same keys, each value averaged over the ranks (one all-reduce); `values` itself in one process.

    Every rank must pass the same keys in the same order (they run the same loss function)."""
    if world_size() <= 1 or not values:
        return values
    keys = list(values)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    t = torch.stack([torch.as_tensor(values[k], dtype=torch.float32, device=device).reshape(()) for k in keys])
    dist.all_reduce(t)
    t /= world_size()
    return dict(zip(keys, t))


def any_rank(flag: bool) -> bool:
    """True when `flag` is true on any rank (one small all-reduce per call under a process group)."""
    if world_size() <= 1:
        return bool(flag)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()

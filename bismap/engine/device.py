"""Device, thread and mixed-precision choices, made in one place so every stage agrees.

Thread count matters on shared CPUs: oversubscribing cores made one training iteration
several times slower (design.md), so stages pass Snakemake's `threads` here.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, ContextManager, Mapping

import torch

_THREADS_SET = False


def _local_rank() -> int:
    """This process' GPU index under torchrun or SLURM (0 otherwise)."""
    for key in ("LOCAL_RANK", "SLURM_LOCALID"):
        if key in os.environ:
            try:
                return int(os.environ[key])
            except ValueError:
                pass
    return 0


def resolve_device(name: str = "auto") -> torch.device:
    """"auto" -> the local GPU when CUDA is available, else CPU; "cuda" requires CUDA.

    The GPU index follows LOCAL_RANK / SLURM_LOCALID so every DDP process gets its own card.
    """
    name = str(name).lower()
    if name == "cpu":
        return torch.device("cpu")
    if name in ("auto", "cuda", "gpu"):
        if torch.cuda.is_available():
            index = _local_rank() % max(torch.cuda.device_count(), 1)
            return torch.device("cuda", index)
        if name == "auto":
            return torch.device("cpu")
        raise RuntimeError("device 'cuda' requested but torch.cuda.is_available() is False")
    if name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {name!r} requested but torch.cuda.is_available() is False")
        return torch.device(name)
    raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}")


def available_cores() -> int:
    """Cores this process may run on (CPU affinity, i.e. what SLURM/taskset granted)."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # non-Linux
        return max(os.cpu_count() or 1, 1)


def set_threads(n: int | None = None) -> int:
    """Use `n` intra-op threads (Snakemake's `threads`; None = the CPU affinity); returns n.

    Inter-op threads can only be set once per process and before any parallel work, so that
    is attempted once and silently skipped when torch has already started its pool.
    """
    global _THREADS_SET
    n = available_cores() if n is None else max(int(n), 1)
    torch.set_num_threads(n)
    if not _THREADS_SET:
        with contextlib.suppress(RuntimeError):
            torch.set_num_interop_threads(n)
        _THREADS_SET = True
    return n


@dataclass(frozen=True)
class AmpSettings:
    """Resolved mixed precision: autocast dtype (None = off) and whether a GradScaler is needed."""

    dtype: torch.dtype | None
    use_scaler: bool
    device_type: str

    @property
    def enabled(self) -> bool:
        return self.dtype is not None

    def autocast(self) -> ContextManager:
        """A fresh autocast context (a no-op when AMP is off)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    @property
    def name(self) -> str:
        return {None: "off", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN has native bf16 kernels on this CPU (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_amp(mode: str, device: torch.device) -> AmpSettings:
    """"auto": bf16 on GPUs that support it, else fp16 + GradScaler; always off on CPU.

    CPU autocast is not faster than fp32 for these convolutions on CPUs without native bf16, so
    "auto" keeps CPU runs exact and deterministic; an explicit "bf16" on a CPU with native bf16
    (AVX512-BF16/AMX, as oneDNN reports it) is honoured (speed: docs/performance.md); an explicit
    "fp16" on CPU, or "bf16" without native support, is refused with a note.
    """
    mode = str(mode).lower()
    if mode not in ("auto", "off", "bf16", "fp16"):
        raise ValueError(f"train.amp must be 'auto', 'off', 'bf16' or 'fp16', got {mode!r}")
    device = torch.device(device)
    if mode == "bf16" and device.type == "cpu" and cpu_has_native_bf16():
        return AmpSettings(torch.bfloat16, False, "cpu")
    if mode == "off" or device.type != "cuda":
        if mode in ("bf16", "fp16") and device.type != "cuda":
            print(f"note: train.amp={mode} ignored on {device.type}; running in fp32", flush=True)
        return AmpSettings(None, False, device.type)
    if mode == "auto":
        mode = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if mode == "bf16":
        return AmpSettings(torch.bfloat16, False, device.type)
    return AmpSettings(torch.float16, True, device.type)


def to_device(batch: Any, device: torch.device, channels_last: bool) -> Any:
    """A batch (tensors in nested dicts, lists, tuples) on `device`; 4-d float tensors NHWC when channels_last."""
    if isinstance(batch, torch.Tensor):
        t = batch.to(device, non_blocking=True)
        if channels_last and t.dim() == 4 and t.is_floating_point():
            t = t.contiguous(memory_format=torch.channels_last)
        return t
    if isinstance(batch, Mapping):
        return {k: to_device(v, device, channels_last) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device, channels_last) for v in batch)
    return batch

"""Training and inference machinery shared by every stage.

device (threads, device, AMP), stream (resumable infinite batches), optim (SGD 1x/10x,
warm-up + poly), ema (mean teacher), checkpoint (final + resume files), trainer (fit),
preemption (stop on SLURM's SIGTERM with a resume file), progress (ETA, TensorBoard, seeds),
inference (multi-scale/flip logits, AdaBN), distributed (DDP via torchrun or SLURM).
Submodules are imported on demand so `import bismap.engine` stays cheap.
"""
from __future__ import annotations

__all__ = ["checkpoint", "device", "distributed", "ema", "inference", "optim", "stream", "trainer"]

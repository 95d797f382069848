"""Small helpers of the training loop: its ETA text, TensorBoard writer and per-rank seeding."""
from __future__ import annotations

import math
from pathlib import Path

import torch

from bismap.engine.stream import mix_seed


def format_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def seed_everything(seed: int, rank: int) -> None:
    import random

    import numpy as np

    s = mix_seed(seed, rank, 1)
    random.seed(s)
    np.random.seed(s % (2**32))
    torch.manual_seed(s)


def tensorboard_writer(folder: Path | None):
    if folder is None:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:  # a dependency, but training does not need it
        print(f"note: no TensorBoard event files ({e}); `pip install tensorboard` to get them", flush=True)
        return None
    return SummaryWriter(log_dir=str(folder))

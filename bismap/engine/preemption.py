"""Stop a training run cleanly when the scheduler says so, and continue it in the next job.

WHY: SLURM ends a job at its time limit (and on `scancel`, or preemption) with SIGTERM, then
SIGKILL after the cluster's KillWait (often 30 s). A stage longer than the partition's limit
would otherwise only continue from the last periodic resume file, losing up to
`runtime.checkpoint_every` iterations per job. Here the signal only sets a flag (a signal
handler must not do work); the training loop looks at it after every iteration, writes the
resume file at that iteration and stops with `Preempted`. The next submission of the job (the
rule's `retries`, rules/common.smk) resumes from that file: the result equals an
uninterrupted run's.
"""
from __future__ import annotations

import math
import os
import signal
import subprocess
import threading
from types import FrameType

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)  # SIGUSR1: sbatch --signal=USR1@<seconds> before the limit
EXIT_CODE = 75  # EX_TEMPFAIL: stopped on purpose, resumable


class Preempted(Exception):
    """The run stopped on a signal after writing its resume file."""


class StopSignals:
    """Context manager: while inside, SIGTERM / SIGUSR1 set a flag instead of killing the process.

    Outside the main thread (where Python cannot install handlers) it does nothing. The previous
    handlers come back on exit, so the rest of the stage dies on a signal as it always did. (torch is
    imported on entry, not with the module: bismap.workflow.stage_logging imports this before torch.)
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}
        self._any_rank = None  # ddp.any_rank under a process group; None in one process

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum

    def __enter__(self) -> "StopSignals":
        from bismap.engine import distributed as ddp

        self._any_rank = ddp.any_rank if ddp.world_size() > 1 else None
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def requested(self) -> bool:
        """True when any rank received a stop signal (all ranks then stop at the same iteration)."""
        received = self.received is not None
        return received if self._any_rank is None else self._any_rank(received)

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else "none"


def slurm_time_limits() -> tuple[float, float] | None:
    """(seconds left, seconds of the whole limit) of this SLURM job (squeue %L, %l), or None outside
    SLURM or without a limit."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return None
    try:
        out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%L %l"], capture_output=True, text=True,
                             timeout=30, check=True).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    times = [parse_slurm_duration(t) for t in out[:2]]
    return None if len(times) < 2 or None in times else (times[0], times[1])


def parse_slurm_duration(text: str) -> float | None:
    """Seconds of a SLURM duration (sbatch -t / squeue %L): M, M:S, H:M:S, D-H, D-H:M or D-H:M:S."""
    text = text.strip()
    days, _, clock = text.rpartition("-")
    try:
        parts = [int(p) for p in clock.split(":")]
        day_count = int(days) if days else 0
    except ValueError:
        return None  # UNLIMITED, NOT_SET, INVALID
    if days:
        h, m, s = (parts + [0, 0])[:3]
    elif len(parts) == 1:
        h, m, s = 0, parts[0], 0
    else:
        h, m, s = ([0] + parts)[-3:]
    return float(((day_count * 24 + h) * 60 + m) * 60 + s)


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def submissions_note(rate_it_s: float, remaining: int, limits: tuple[float, float] | None) -> str | None:
    """One line: how many more jobs of this job's time limit the remaining iterations take (None
    when they fit in this job, or outside SLURM)."""
    if limits is None or rate_it_s <= 0 or remaining <= 0:
        return None
    left, limit = limits
    need = remaining / rate_it_s
    if need <= left:
        return None
    more = math.ceil((need - left) / max(limit, 1.0))
    return (f"note: at {rate_it_s:.2f} it/s the remaining {remaining} iterations take {_hours(need)} and this job "
            f"has {_hours(left)} left: it will stop at its time limit with a resume file, and about {more} more "
            f"submission(s) of {_hours(limit)} finish the stage (resources.<stage>.submissions counts them all)")

"""Glue between Snakemake's `script:` directive and the stage functions.

Scripts in scripts/ stay one call long: `with stage_logging(snakemake): run(...)`. This module
sends the stage's output to the rule's log, makes torch follow the rule's `threads`, and turns
bad user input (bismap.io.InputError) into one readable line and a non-zero exit instead of a
traceback buried in the log.
"""
from __future__ import annotations

import contextlib
import os
import re
import socket
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Iterator

from bismap.engine.preemption import EXIT_CODE as PREEMPTED_EXIT
from bismap.engine.preemption import Preempted
from bismap.io import InputError, os_error_in, os_error_message, remove_stale_temporaries


def set_thread_env(threads: int) -> None:
    """Cap BLAS/OpenMP pools before torch is imported, then torch's own intra-op pool.

    Two jobs on two cores each spinning several threads collapse to a fraction of the speed
    (design.md measured 7 s instead of 0.8 s per iteration), so the rule's threads is a hard cap.
    """
    threads = max(1, int(threads))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    try:
        import torch
    except ImportError:  # report-only environments
        return
    torch.set_num_threads(threads)


class _Tee:
    """Line-buffered writes to several text files (the rule log and its attempt history)."""

    def __init__(self, *files: Any) -> None:
        self.files = files

    def write(self, text: str) -> int:
        for f in self.files:
            f.write(text)
        return len(text)

    def flush(self) -> None:
        for f in self.files:
            f.flush()

    def isatty(self) -> bool:
        return False


class ConsoleProgress:
    """File-like sink that repeats a stage's progress lines (`[done/total] ... ETA ...`, the trainer's format)
    on the console, at most one per `every_s` seconds plus the last one: the log keeps all of them, the
    console of `snakemake --cores N` shows how far each running job is without tailing logs."""

    PATTERN = re.compile(r"^\[(\d+)/(\d+)\] .*\bETA\b")

    def __init__(self, rule: str, every_s: float, clock=time.monotonic) -> None:
        self.rule, self.every_s, self.clock = rule, float(every_s), clock
        self.pending, self.last = "", None

    def write(self, text: str) -> int:
        if self.every_s <= 0:
            return len(text)
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            match = self.PATTERN.match(line)
            if not match:
                continue
            now = self.clock()
            final = match.group(1) == match.group(2)
            if final or self.last is None or now - self.last >= self.every_s:
                self.last = now
                _console(f"bismap {self.rule}: {line}")
        return len(text)

    def flush(self) -> None:
        pass


def history_path(log_path: str | os.PathLike) -> Path:
    """`<log>.attempts`: every attempt's output, appended. Snakemake deletes the rule log itself before
    each run of the job, so this file is what keeps what happened before a kill."""
    return Path(str(log_path) + ".attempts")


@contextlib.contextmanager
def _redirect(log_path: str | os.PathLike | None, rule: str, console_every_s: float = 0) -> Iterator[Any]:
    if not log_path:
        yield None
        return
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    history = history_path(log_path)
    earlier = history.read_text(errors="replace") if history.is_file() else ""
    attempt = earlier.count("===== attempt ") + 1
    header = (f"===== attempt {attempt} of {rule}: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, "
              f"host {socket.gethostname()}, pid {os.getpid()} =====\n")
    with open(log_path, "w", buffering=1) as fh, open(history, "a", buffering=1) as hist:
        fh.write(earlier)
        tee = _Tee(fh, hist, ConsoleProgress(rule, console_every_s))
        tee.write(header)
        old_out, old_err = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = tee
        try:
            yield tee
        finally:
            sys.stdout, sys.stderr = old_out, old_err


def _console(line: str) -> None:
    sys.__stderr__.write(line + "\n")
    sys.__stderr__.flush()


@contextlib.contextmanager
def stage_logging(smk: Any) -> Iterator[None]:
    """Run a stage inside a rule: stdout/stderr -> log[0], threads set, InputError -> exit 1.

    `smk` is the `snakemake` object of a script. Before the stage runs, temporaries a killed earlier
    attempt left next to the rule's outputs are deleted (our naming pattern only). Warnings are
    repeated on the console at the end, and training progress lines every `runtime.console_every_s`. \
An OS error (disk full, permission denied, read-only file
    system, I/O error) becomes one line naming the path, the errno text and what to do. Any other
    exception keeps its traceback in the log (and Snakemake shows the log with --show-failed-logs)
    and also exits non-zero.
    """
    log_path = smk.log[0] if len(smk.log) else None
    rule = getattr(smk, "rule", "stage")
    set_thread_env(getattr(smk, "threads", 1))
    start = time.time()
    seen: list[str] = []
    runtime = (getattr(smk, "config", None) or {}).get("runtime") or {}
    with _redirect(log_path, rule, runtime.get("console_every_s", 0)), warnings.catch_warnings():
        warnings.simplefilter("default")
        shown = warnings.showwarning

        def record(message, category, filename, lineno, file=None, line=None):
            seen.append(f"{category.__name__}: {message}".replace("\n", " "))
            shown(message, category, filename, lineno, file, line)

        warnings.showwarning = record
        print(f"[{rule}] start, threads={smk.threads}", flush=True)
        # Under DDP only rank 0 writes outputs, so only rank 0 clears their temporaries (before the process
        # group forms, so no rank is writing yet).
        main_rank = os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")) == "0"
        for out in list(getattr(smk, "output", [])) if main_rank else []:
            for p in remove_stale_temporaries(out):
                print(f"[{rule}] removed {p}, left by a killed earlier attempt", flush=True)
        try:
            yield
        except Preempted as e:  # SIGTERM / SIGUSR1 mid-training: the resume file is written
            print(f"[{rule}] {e}; exit {PREEMPTED_EXIT}, the next submission resumes", flush=True)
            _console(f"bismap {rule}: {e} (resume file written; the rule's retries resubmit it)")
            raise SystemExit(PREEMPTED_EXIT) from None
        except InputError as e:
            print(f"[{rule}] error: {e}", flush=True)
            _console(f"bismap {rule}: error: {e}")
            raise SystemExit(1) from None
        except Exception as e:
            os_err = os_error_in(e)
            if os_err is not None:
                traceback.print_exc()
                message = os_error_message(os_err)
                print(f"[{rule}] error: {message}", flush=True)
                _console(f"bismap {rule}: error: {message}")
                raise SystemExit(1) from None
            traceback.print_exc()
            _console(f"bismap {rule}: failed, see {log_path}")
            raise SystemExit(1) from None
        finally:
            for w in seen:
                _console(f"bismap {rule}: warning: {w[:500]}")
        print(f"[{rule}] done in {time.time() - start:.1f} s", flush=True)

"""Glue between Snakemake's `script:` directive and the stage functions.

Scripts in scripts/ stay one call long: `with stage_logging(snakemake): run(...)`. This module
sends the stage's output to the rule's log, makes torch follow the rule's `threads`, and turns
bad user input (bismap.io.InputError) into one readable line and a non-zero exit instead of a
traceback buried in the log.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Iterator

from bismap.io import InputError


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


@contextlib.contextmanager
def _redirect(log_path: str | os.PathLike | None) -> Iterator[Any]:
    if not log_path:
        yield None
        return
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w", buffering=1) as fh:
        old_out, old_err = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = fh
        try:
            yield fh
        finally:
            sys.stdout, sys.stderr = old_out, old_err


@contextlib.contextmanager
def stage_logging(smk: Any) -> Iterator[None]:
    """Run a stage inside a rule: stdout/stderr -> log[0], threads set, InputError -> exit 1.

    `smk` is the `snakemake` object of a script. Any other exception keeps its traceback in the
    log (and Snakemake shows the log with --show-failed-logs) and also exits non-zero.
    """
    log_path = smk.log[0] if len(smk.log) else None
    rule = getattr(smk, "rule", "stage")
    set_thread_env(getattr(smk, "threads", 1))
    start = time.time()
    with _redirect(log_path):
        print(f"[{rule}] start, threads={smk.threads}", flush=True)
        try:
            yield
        except InputError as e:
            print(f"[{rule}] error: {e}", flush=True)
            sys.__stderr__.write(f"bismap {rule}: error: {e}\n")
            sys.__stderr__.flush()
            raise SystemExit(1) from None
        except Exception:
            traceback.print_exc()
            sys.__stderr__.write(f"bismap {rule}: failed, see {log_path}\n")
            sys.__stderr__.flush()
            raise SystemExit(1) from None
        print(f"[{rule}] done in {time.time() - start:.1f} s", flush=True)


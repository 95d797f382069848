"""Run a training stage on N ranks: local processes (as torchrun does) or `srun` tasks under SLURM.

WHY here and not in the rules: a Snakemake job is one process, and the SLURM plugin starts it with
`srun -n1` unless the rule is an "mpi" job (rules/common.smk makes multi-rank stages so). The stage
function then starts its own ranks: inside a SLURM allocation of N tasks one `srun` step places them
on the allocated nodes and GPUs (SLURM_PROCID / SLURM_NTASKS give each its rank); elsewhere N child
processes get torchrun's RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT. Each rank calls
the same stage function and engine.distributed joins them into one process group. The parent relays
the ranks' output into the rule's log (rank 0 as is, the others prefixed), forwards SIGTERM / SIGUSR1
to them (a resume file is written: engine.preemption) and fails when any rank fails.
"""
from __future__ import annotations

import base64
import functools
import importlib
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
from typing import Any, Callable

from bismap.engine.preemption import EXIT_CODE as PREEMPTED_EXIT
from bismap.engine.preemption import Preempted

SPEC_ENV = "BISMAP_RANK_SPEC"  # set in every rank: the stage to call, as base64 pickle


def is_launched_rank() -> bool:
    return SPEC_ENV in os.environ


def on_ranks(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator for a training stage's `run`: `run(..., ranks=N)` trains on N processes (DDP).

    `threads` stays the per-rank thread count. ranks=1 (the default) calls the stage here, unchanged.
    """

    @functools.wraps(fn)
    def wrapper(*, ranks: int = 1, **kwargs: Any) -> Any:
        if int(ranks) <= 1 or is_launched_rank():
            return fn(**kwargs)
        return run_ranks(fn.__module__, fn.__qualname__, kwargs, int(ranks))

    return wrapper


def _slurm_nodes() -> int | None:
    """Nodes of the SLURM job this process runs in (None outside SLURM or when scontrol cannot say).

    Asked of scontrol because the SLURM plugin's job step hands Snakemake's job only the job id (it
    strips SLURM_NTASKS, SLURM_JOB_NUM_NODES and the rest so that a nested srun inherits nothing)."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return None
    try:
        out = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True, timeout=60,
                             check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return 1
    fields = dict(kv.split("=", 1) for kv in out.split() if "=" in kv)
    return int(fields.get("NumNodes", "1").split("-")[0] or 1)


def rank_threads(job_threads: int, ranks: int) -> int:
    """Threads of each rank: the job's threads (per rank x ranks, rules/common.smk) shared out."""
    return max(1, job_threads // ranks)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _commands(ranks: int, threads: int, spec: str) -> list[tuple[list[str], dict[str, str]]]:
    """One (argv, env) per process to start: one srun step in a SLURM allocation of `ranks` tasks,
    else `ranks` local processes with torchrun's variables."""
    base = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    base[SPEC_ENV] = spec
    worker = [sys.executable, "-m", "bismap.engine.launch"]
    nodes = _slurm_nodes()
    if nodes is not None:  # inside the job SLURM made for this stage (rules/common.smk: one task per rank)
        srun = ["srun", f"--ntasks={ranks}", f"--cpus-per-task={threads}", "--kill-on-bad-exit=1"]
        if nodes > 1 and ranks % nodes == 0:
            srun += [f"--nodes={nodes}", f"--ntasks-per-node={ranks // nodes}"]
        # No GPU flags: a step gets all of the job's GPUs, and each rank takes GPU SLURM_LOCALID.
        return [([*srun, *worker], base)]
    common = {**base, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": str(ranks)}
    return [(worker, {**common, "RANK": str(r), "LOCAL_RANK": str(r)}) for r in range(ranks)]


def _relay(stream, out) -> None:
    for line in iter(stream.readline, ""):
        out.write(line)
        out.flush()


def run_ranks(module: str, qualname: str, kwargs: dict, ranks: int) -> None:
    """Call module.qualname(**kwargs) in `ranks` processes and wait for all of them.

    Raises Preempted when the ranks stopped on a signal with a resume file (exit 75), RuntimeError
    naming the first failed rank otherwise.
    """
    threads = rank_threads(int(kwargs.get("threads", ranks)), ranks)
    if "threads" in kwargs:
        kwargs = {**kwargs, "threads": threads}
    spec = base64.b64encode(pickle.dumps((module, qualname, kwargs, ranks))).decode()
    procs = [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              bufsize=1) for argv, env in _commands(ranks, threads, spec)]
    how = "srun" if len(procs) == 1 else "local processes"
    print(f"started {ranks} ranks ({how}, pid {' '.join(str(p.pid) for p in procs)})", flush=True)
    relays = [threading.Thread(target=_relay, args=(p.stdout, sys.stdout), daemon=True) for p in procs]
    for t in relays:
        t.start()

    def forward(signum, frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        codes = _wait_all(procs)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        for t in relays:
            t.join(timeout=10)
        for p in procs:
            p.stdout.close()
    if all(c == 0 for c in codes):
        return
    if all(c in (0, PREEMPTED_EXIT) for c in codes):
        raise Preempted(f"{ranks} ranks stopped on a signal after writing the resume file")
    bad = next(i for i, c in enumerate(codes) if c not in (0, PREEMPTED_EXIT))
    who = "the srun step" if len(procs) == 1 else f"rank {bad}"
    raise RuntimeError(f"{who} of {ranks} exited with code {codes[bad]} (its output is above)")


def _wait_all(procs: list[subprocess.Popen]) -> list[int]:
    """Exit codes of all processes; when one fails the others are terminated (as torchrun does)."""
    while True:
        codes = [p.poll() for p in procs]
        if all(c is not None for c in codes):
            return [int(c) for c in codes]
        if any(c not in (None, 0, PREEMPTED_EXIT) for c in codes):
            for p in procs:
                if p.poll() is None:
                    p.terminate()
        try:
            procs[[c is None for c in codes].index(True)].wait(timeout=1)
        except subprocess.TimeoutExpired:
            pass


class _Prefixed:
    """stdout of ranks > 0: every line tagged with the rank, so the shared log shows who said what."""

    def __init__(self, out, rank: int) -> None:
        self.out, self.tag, self.fresh = out, f"[rank {rank}] ", True

    def write(self, text: str) -> int:
        for part in text.splitlines(keepends=True):
            self.out.write((self.tag if self.fresh else "") + part)
            self.fresh = part.endswith("\n")
        return len(text)

    def flush(self) -> None:
        self.out.flush()

    def isatty(self) -> bool:
        return False


def _main() -> int:
    """One rank: call the stage named by SPEC_ENV; its exit code says how it ended."""
    from bismap.engine.distributed import env_info
    from bismap.io import InputError

    module, qualname, kwargs, ranks = pickle.loads(base64.b64decode(os.environ[SPEC_ENV]))
    info = env_info()
    if info.world_size != ranks:
        print(f"rank launch: expected {ranks} ranks, the environment says {info.world_size}", flush=True)
        return 1
    if info.rank > 0:
        sys.stdout = sys.stderr = _Prefixed(sys.__stdout__, info.rank)
    print(f"rank {info.rank}/{info.world_size} (local {info.local_rank}) on {socket.gethostname()}, "
          f"pid {os.getpid()}", flush=True)
    fn = importlib.import_module(module)
    for part in qualname.split("."):
        fn = getattr(fn, part)
    try:
        fn(**kwargs)
    except Preempted as e:
        print(f"rank {info.rank}: {e}", flush=True)
        return PREEMPTED_EXIT
    except InputError as e:
        print(f"rank {info.rank}: error: {e}", flush=True)
        return 1
    finally:
        from bismap.engine.distributed import cleanup

        cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(_main())

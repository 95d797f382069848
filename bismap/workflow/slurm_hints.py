#!/usr/bin/env python3
"""Say which Snakemake resource to raise when SLURM killed a job for memory or time.

WHY: without accounting (`slurm-status-command: squeue`) the SLURM executor only reports
"SLURM status is: 'OUT_OF_MEMORY'" (or nothing more than FAILED), and never names the knob.
This scans the plugin's per-job logs (.snakemake/slurm_logs/rule_<rule>/<wildcards>/<jobid>.log)
for SLURM's own kill messages and prints one line per killed job naming `mem_mb` or `runtime`.

Use it after a failed run (`python -m bismap.workflow.slurm_hints`), or from the
Snakefile's `onerror:` handler. Standard library only; exit code 0 whether or not it finds any.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

# SLURM's own wording (slurmstepd / task/cgroup) in the job's output file.
OOM_PATTERNS = (
    re.compile(r"oom[-_ ]kill", re.IGNORECASE),
    re.compile(r"Out Of Memory", re.IGNORECASE),
    re.compile(r"Exceeded job memory limit", re.IGNORECASE),
)
TIME_PATTERNS = (re.compile(r"DUE TO TIME LIMIT"),)


def classify(text: str) -> str | None:
    """Return "mem_mb" or "runtime" when the log shows SLURM killed the job for it."""
    if any(p.search(text) for p in OOM_PATTERNS):
        return "mem_mb"
    if any(p.search(text) for p in TIME_PATTERNS):
        return "runtime"
    return None


def requested(text: str, resource: str) -> str | None:
    """The value the job asked for, when the in-job snakemake printed it (`mem_mb=...`)."""
    m = re.search(rf"\b{resource}=(\d+)", text)
    return m.group(1) if m else None


def hints(logdir: Path, since: float = 0.0) -> list[str]:
    """One hint per killed job whose log under `logdir` was written at or after `since`."""
    out: list[str] = []
    if not logdir.is_dir():
        return out
    for log in sorted(logdir.glob("rule_*/**/*.log")):
        if log.stat().st_mtime < since:
            continue
        text = log.read_text(errors="replace")
        resource = classify(text)
        if resource is None:
            continue
        rule = log.relative_to(logdir).parts[0].removeprefix("rule_")
        wildcards = "/".join(log.relative_to(logdir).parts[1:-1])
        asked = requested(text, resource)
        asked_txt = f" (it had {resource}={asked})" if asked else ""
        what = "its memory limit" if resource == "mem_mb" else "its time limit"
        out.append(
            f"SLURM job {log.stem} of rule '{rule}'"
            + (f" [{wildcards}]" if wildcards and wildcards != "." else "")
            + f" was killed for exceeding {what}{asked_txt}: raise the rule's `{resource}`"
            f" (config `resources` section, or `--set-resources {rule}:{resource}=<value>`);"
            f" log: {log}"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    """CLI: print the hints to stderr (where Snakemake's own error report goes)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("logdir", nargs="?", default=".snakemake/slurm_logs", type=Path)
    ap.add_argument("--since", type=float, default=0.0,
                    help="only logs modified at or after this UNIX time (the run's start)")
    args = ap.parse_args(argv)
    for line in hints(args.logdir, args.since):
        print(line, file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

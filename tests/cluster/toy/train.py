"""Stand-in for the training engine: a loop that checkpoints every k iterations and resumes.

WHY: the fault test cancels a running job and needs Snakemake's retry to continue from the
resume file, exactly like the real engine's `<out_checkpoint>.resume.pt`.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def main(out: str, iterations: int, every: int, seconds: float) -> None:
    """Run `iterations` steps of `seconds` each, persisting progress to `<out>.resume.json`."""
    resume = Path(out + ".resume.json")
    start = 0
    if resume.exists():
        start = json.loads(resume.read_text())["iteration"]
        print(f"resumed from iteration {start}", flush=True)
    for it in range(start + 1, iterations + 1):
        time.sleep(seconds)
        print(f"iteration {it} job={os.environ.get('SLURM_JOB_ID', 'none')}", flush=True)
        if it % every == 0 and it < iterations:
            tmp = resume.with_suffix(".tmp")
            tmp.write_text(json.dumps({"iteration": it}))
            tmp.replace(resume)
    Path(out).write_text(f"trained {iterations} iterations, started at {start}\n")
    resume.unlink(missing_ok=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))

"""Stage: generate the built-in synthetic domain-shift benchmark (source in GTA5 layout, \
target in Cityscapes layout)."""
from __future__ import annotations

import os
from typing import Any


def run(*, source_dir: str | os.PathLike, target_dir: str | os.PathLike, cfg: dict[str, Any], runtime: dict,
        threads: int = 1) -> None:
    """cfg = the `synthetic` config slice (see bismap.data.synthetic); `runtime.synthetic_workers`
    sets the processes (the images do not depend on it).

    `threads` (Snakemake's) caps the worker count so the rule never uses more cores than it declared.
    """
    from bismap.data.synthetic import write_benchmark

    workers = int(runtime["synthetic_workers"])
    cfg = {**cfg, "workers": min(workers, int(threads)) if threads else workers}
    write_benchmark(str(source_dir), str(target_dir), cfg)

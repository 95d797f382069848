"""Running every (ablation, seed) of the benchmark, reusing the finished reference run of the seed."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

from bismap.io import InputError
from bismap.sweep.plan import reuse_plan, snakemake_cmd
from bismap.sweep.spec import experiment_name, overlay, runs, write_overlay

FORCE_MARKER = ".benchmark_forcerun"  # rules still to force in a run copied from its reference run


def run_all(spec: dict, *, ablations: Sequence[str] | None = None, seeds: Sequence[Any] | None = None,
            snakemake: str | None = None, extra_args: Sequence[str] = (), dry_run: bool = False,
            keep_going: bool = False, results_root: str | os.PathLike = "results") -> list[str]:
    """Run the pipeline once per (ablation, seed); returns the experiment names run.

    An ablation whose seed already has a finished reference run starts from a copy of it (file
    times kept) and reruns only the stages its switch affects (`reuse: false` turns this off).
    """
    import shutil

    out = Path(spec["out"])
    root = Path(results_root)
    snakemake = snakemake or str(Path(sys.executable).with_name("snakemake"))
    done = []
    for ablation, seed in runs(spec, ablations, seeds):
        cfg = overlay(spec, ablation, seed)
        exp = cfg["experiment"]
        path = write_overlay(cfg, out / "configs" / f"{exp}.yaml")
        extra = list(extra_args)
        # The copy's outputs carry no Snakemake provenance, so the rules to force are kept in a
        # marker until the run succeeds: a run killed after the copy still reruns them next time.
        marker = root / exp / FORCE_MARKER
        if not dry_run and not (root / exp).exists():
            roots = reuse_plan(spec, ablation, seed, snakemake, root)
            if roots is not None:
                ref_exp = experiment_name(spec["prefix"], spec.get("reference", "full"), seed)
                print(f"benchmark: {exp} starts from a copy of {ref_exp}; rerunning "
                      f"{', '.join(roots) or 'nothing'} and what depends on it", flush=True)
                tmp = root / f".{exp}.copying"
                shutil.rmtree(tmp, ignore_errors=True)
                shutil.copytree(root / ref_exp, tmp, copy_function=shutil.copy2)
                for name in ("summary.json", "summary.md"):  # the reference's results must never pass as this run's
                    (tmp / name).unlink(missing_ok=True)
                (tmp / FORCE_MARKER).write_text("\n".join(roots) + "\n")
                tmp.rename(root / exp)
        if not dry_run and marker.is_file():
            roots = marker.read_text().split()
            if roots:
                extra += ["--forcerun", *roots]
        cmd = snakemake_cmd(snakemake, spec, path, extra)
        print("benchmark:", " ".join(cmd), flush=True)
        if dry_run:
            done.append(exp)
            continue
        rc = subprocess.call(cmd)
        if rc != 0:
            msg = f"benchmark: run {exp} failed (snakemake exit {rc})"
            if not keep_going:
                raise InputError(msg)
            print(msg, file=sys.stderr, flush=True)
            continue
        marker.unlink(missing_ok=True)
        done.append(exp)
    return done

"""Running every (ablation, seed) of the benchmark, reusing the finished reference run of the seed."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from bismap.io import InputError
from bismap.sweep.archive import FORCE_MARKER, archive_run
from bismap.sweep.copies import config_fingerprint, copied_from, copy_reference, discard, stale_reason
from bismap.sweep.plan import reuse_plan, snakemake_cmd
from bismap.sweep.spec import experiment_name, overlay, runs, write_overlay


def run_all(spec: dict, *, ablations: Sequence[str] | None = None, seeds: Sequence[Any] | None = None,
            snakemake: str | None = None, extra_args: Sequence[str] = (), dry_run: bool = False,
            keep_going: bool = False, results_root: str | os.PathLike = "results") -> list[str]:
    """Run the pipeline once per (ablation, seed); returns the experiment names run.

    An ablation whose seed already has a finished reference run starts from a copy of it (file
    times kept) and reruns only the stages its switch affects (`reuse: false` turns this off). A
    copy made under another config, or before the reference rebuilt a stage, is copied afresh.
    """
    out = Path(spec["out"])
    root = Path(results_root)
    snakemake = snakemake or str(Path(sys.executable).with_name("snakemake"))
    done = []
    for ablation, seed in runs(spec, ablations, seeds):
        reused_from = None
        cfg = overlay(spec, ablation, seed)
        exp = cfg["experiment"]
        path = write_overlay(cfg, out / "configs" / f"{exp}.yaml")
        extra = list(extra_args)
        # The copy's outputs carry no Snakemake provenance, so the rules to force are kept in a
        # marker until the run succeeds: a run killed after the copy still reruns them next time.
        marker = root / exp / FORCE_MARKER
        fingerprint = None if dry_run else config_fingerprint(spec, cfg)
        stale = fingerprint and stale_reason(root, exp, fingerprint)
        if stale:
            print(f"benchmark: {exp} is a stale copy ({stale}); copying the reference run again", flush=True)
            discard(root / exp)
        if not dry_run and not (root / exp).exists():
            roots = reuse_plan(spec, ablation, seed, snakemake, root)
            if roots is not None:
                reused_from = _copy_reference(spec, root, exp, seed, roots, fingerprint)
        reused_from = reused_from or copied_from(root / exp)
        if not dry_run and marker.is_file():
            roots = marker.read_text().split()
            if roots:
                extra += ["--forcerun", *roots]
        cmd = snakemake_cmd(snakemake, spec, path, extra)
        print("benchmark:", " ".join(cmd), flush=True)
        if dry_run:
            done.append(exp)
            continue
        t0 = time.perf_counter()
        rc = subprocess.call(cmd)
        if rc != 0:
            msg = f"benchmark: run {exp} failed (snakemake exit {rc})"
            if not keep_going:
                raise InputError(msg)
            print(msg, file=sys.stderr, flush=True)
            continue
        marker.unlink(missing_ok=True)
        if (root / exp / "summary.json").is_file():
            kept = archive_run(spec, ablation, seed, root, time.perf_counter() - t0, reused_from)
            print(f"benchmark: kept {kept}", flush=True)
        else:   # e.g. snakemake arguments that stop before the report
            print(f"benchmark: {exp} has no summary.json; no record kept", flush=True)
        done.append(exp)
    return done


def _copy_reference(spec: dict, root: Path, exp: str, seed: Any, roots: list[str], fingerprint: str) -> str:
    ref_exp = experiment_name(spec["prefix"], spec.get("reference", "full"), seed)
    print(f"benchmark: {exp} starts from a copy of {ref_exp}; rerunning "
          f"{', '.join(roots) or 'nothing'} and what depends on it", flush=True)
    copy_reference(root, ref_exp, exp, roots, fingerprint)
    return ref_exp


def archive_existing(spec: dict, results_root: str | os.PathLike = "results") -> list[Path]:
    """Keep a record of every finished run in results/ that has none yet (wall time unknown)."""
    from bismap.sweep.archive import load_run, record_path

    kept = []
    for ablation, seed in runs(spec):
        exp = experiment_name(spec["prefix"], ablation, seed)
        if record_path(spec["archive"], spec.get("preset", "default"), exp).is_file():
            continue
        if load_run(spec, ablation, seed, results_root, []) is not None:
            kept.append(archive_run(spec, ablation, seed, results_root, None))
    return kept

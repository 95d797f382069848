"""One small JSON per finished benchmark run, kept in the repository (results/ is not).

A full run takes about 15 minutes of both cores, so a benchmark is spread over days and machines.
After each finished run its record is written atomically to `<archive>/<preset>/<experiment>.json`:
the run's summary.json, its label-quality jsons, the CPU (model name, and its type: family, model and
widest vector extension, since rented machines of one name differ), the commit, the date and the wall
time. Aggregation reads these records (from one or more archive folders) and,
for runs without one, results/<experiment>/summary.json, so runs made anywhere combine.
"""
from __future__ import annotations

import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from bismap.io import InputError, read_json, write_json
from bismap.sweep.spec import experiment_name

RECORD_VERSION = 1
FORCE_MARKER = ".benchmark_forcerun"  # rules still to force in a run copied from its reference run


def _first_processor() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo, keys lower-cased ({} where there is none)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():
                break
            key, _, value = line.partition(":")
            fields.setdefault(key.strip().lower(), value.strip())
    except OSError:
        pass
    return fields


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    return _first_processor().get("model name") or platform.processor() or platform.machine() or "unknown"


def cpu_type() -> str:
    """What decides the floating-point results besides the code: the CPU family and model and its widest
    vector extension (/proc/cpuinfo; the architecture elsewhere). Two machines rented as "AMD EPYC" can
    be a Zen 3 with AVX2 and a Zen 4 with AVX-512, whose kernels give other numbers."""
    fields = _first_processor()
    flags = set(fields.get("flags", "").split())
    isa = next((name for flag, name in (("avx512f", "avx512"), ("avx2", "avx2"), ("avx", "avx"))
                if flag in flags), None)
    parts = [platform.machine() or "unknown"]
    if "cpu family" in fields:
        parts.append(f"family {fields['cpu family']} model {fields.get('model', '?')}")
    if isa:
        parts.append(isa)
    return " ".join(parts)


def cpu_of(rec: dict) -> tuple[str, str | None] | None:
    """(model name, type) of a record's CPU (older records: type None); None for a results/ run
    without a record."""
    return None if rec.get("cpu") is None else (rec["cpu"], rec.get("cpu_type"))


def cpu_key(rec: dict) -> str | None:
    """cpu_of as one line for tables and messages: "name (type)", or the name alone."""
    cpu = cpu_of(rec)
    return None if cpu is None else (f"{cpu[0]} ({cpu[1]})" if cpu[1] else cpu[0])


def same_cpu(a: Sequence | None, b: Sequence | None) -> bool:
    """Whether two runs' numbers may be paired, from their cpu_of: an unknown CPU (results/ only) pairs
    with anything, and a record older than cpu_type (the model name only) with any type of that name."""
    if a is None or b is None:
        return True
    return a[0] == b[0] and (a[1] is None or b[1] is None or a[1] == b[1])


def commit(archive: str | os.PathLike | None = None) -> str:
    """The checked-out commit (with '-dirty' when tracked files other than the records differ), or 'unknown'."""
    exclude = [f":(exclude){archive}"] if archive else []
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *exclude],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def record_path(archive: str | os.PathLike, preset: str, experiment: str) -> Path:
    return Path(archive) / preset / f"{experiment}.json"


def make_record(run_dir: Path, *, preset: str, ablation: str, seed: Any, wall_s: float | None,
                cores: int | None = None, reused_from: str | None = None,
                archive: str | os.PathLike | None = None) -> dict:
    """The record of the finished run in `run_dir` (results/<experiment>/)."""
    summary = _checked(read_json(run_dir / "summary.json"), run_dir / "summary.json")
    quality = {p.name: read_json(p) for p in sorted((run_dir / "labels").glob("*.quality.json"))}
    return {"record_version": RECORD_VERSION, "experiment": run_dir.name, "preset": preset, "ablation": ablation,
            "seed": seed, "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "commit": commit(archive),
            "cpu": cpu_model(), "cpu_type": cpu_type(), "cores": cores,
            "wall_s": None if wall_s is None else round(float(wall_s), 1),
            "reused_from": reused_from, "summary": summary, "quality": quality}


def archive_run(spec: dict, ablation: str, seed: Any, results_root: str | os.PathLike, wall_s: float | None,
                reused_from: str | None = None) -> Path:
    """Write the record of a finished run atomically into the archive folder; returns its path."""
    exp = experiment_name(spec["prefix"], ablation, seed)
    rec = make_record(Path(results_root) / exp, preset=spec.get("preset", "default"), ablation=ablation, seed=seed,
                      wall_s=wall_s, cores=spec.get("cores"), reused_from=reused_from, archive=spec["archive"])
    path = record_path(spec["archive"], rec["preset"], exp)
    if path.is_file():   # a rerun that changed nothing keeps the record of the run that made the results
        try:
            old = read_json(path)
            if old.get("summary") == rec["summary"]:
                return path
            if not same_cpu(cpu_of(old), cpu_of(rec)):
                print(f"benchmark: warning: {path} held a run on {cpu_key(old)}, replaced by one on {cpu_key(rec)}; "
                      f"results differ across CPU types, so keep each type's records apart (--archive DIR)",
                      flush=True)
        except (InputError, AttributeError):
            pass
    write_json(path, rec)
    return path


def _checked(summary: Any, path: Path) -> dict:
    if not isinstance(summary, dict) or not isinstance(summary.get("models"), list):
        raise InputError(f"{path}: not a run summary (expected a mapping with a `models` list)")
    for row in summary["models"]:
        if not isinstance(row, dict) or "model" not in row:
            raise InputError(f"{path}: not a run summary (a `models` row without `model`)")
    return summary


def load_run(spec: dict, ablation: str, seed: Any, results_root: str | os.PathLike,
             archives: Sequence[str | os.PathLike]) -> dict | None:
    """The record of one run: from the first archive folder holding it, else from a finished results/ run.

    None when the run is missing or unfinished (no summary.json, or a copied run still marked for
    rerunning). A record or summary that cannot be read is an InputError naming the file.
    """
    exp = experiment_name(spec["prefix"], ablation, seed)
    preset = spec.get("preset", "default")
    for folder in archives:
        path = record_path(folder, preset, exp)
        if path.is_file():
            rec = read_json(path)
            if not isinstance(rec, dict) or rec.get("experiment") != exp:
                raise InputError(f"{path}: not the benchmark record of {exp}")
            _checked(rec.get("summary"), path)
            return {**rec, "source": str(path)}
    run_dir = Path(results_root) / exp
    if not (run_dir / "summary.json").is_file() or (run_dir / FORCE_MARKER).exists():
        return None
    summary = _checked(read_json(run_dir / "summary.json"), run_dir / "summary.json")
    return {"experiment": exp, "preset": preset, "ablation": ablation, "seed": seed, "cpu": None, "commit": None,
            "date": None, "wall_s": None, "summary": summary, "source": str(run_dir / "summary.json")}

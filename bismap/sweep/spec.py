"""The benchmark file: seeds, ablations and the config overlay of one (ablation, seed) run."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from bismap.io import InputError, atomic_path


def load_spec(path: str | os.PathLike) -> dict:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: benchmark file not found")
    spec = yaml.safe_load(p.read_text()) or {}
    if not isinstance(spec, dict):
        raise InputError(f"{p}: expected a mapping")
    spec.setdefault("base_config", "config.yaml")
    spec.setdefault("prefix", "bench")
    spec.setdefault("out", "results/benchmark")
    spec.setdefault("cores", 2)
    spec.setdefault("seed_keys", ["train.seed"])
    spec.setdefault("ablations", {"full": {}})
    spec.setdefault("reference", "full")
    spec.setdefault("reuse", True)
    spec.setdefault("archive", "benchmark_records")
    seeds = spec.get("seeds")
    if not isinstance(seeds, list) or not seeds:
        raise InputError(f"{p}: `seeds` must be a non-empty list")
    if not isinstance(spec["ablations"], dict) or not spec["ablations"]:
        raise InputError(f"{p}: `ablations` must be a non-empty mapping name -> overrides")
    for name, overrides in spec["ablations"].items():
        if overrides is not None and not isinstance(overrides, dict):
            raise InputError(f"{p}: ablation {name!r}: overrides must be a mapping of dotted keys")
    spec["presets"] = _presets(p, spec)
    return spec


def _presets(p: Path, spec: dict) -> dict:
    """`presets`: name -> {configfiles, prefix, seeds, ablation_seeds, ablations}; absent: one `default` preset."""
    raw = spec.get("presets") or {"default": {}}
    if not isinstance(raw, dict):
        raise InputError(f"{p}: `presets` must be a mapping name -> settings")
    known = {"configfiles", "prefix", "seeds", "ablation_seeds", "ablations"}
    out = {}
    for name, entry in raw.items():
        entry = dict(entry or {})
        if set(entry) - known:
            raise InputError(f"{p}: preset {name!r}: unknown keys {sorted(set(entry) - known)}; known: {sorted(known)}")
        entry.setdefault("configfiles", [])
        entry.setdefault("prefix", spec["prefix"])
        entry.setdefault("seeds", list(spec["seeds"]))
        entry.setdefault("ablation_seeds", spec.get("ablation_seeds"))
        entry.setdefault("ablations", list(spec["ablations"]))
        for key in ("seeds", "ablations", "configfiles"):
            if not isinstance(entry[key], list) or (key != "configfiles" and not entry[key]):
                raise InputError(f"{p}: preset {name!r}: "
                                 f"`{key}` must be a {'non-empty ' if key != 'configfiles' else ''}list")
        unknown = [a for a in entry["ablations"] if a not in spec["ablations"]]
        if unknown:
            raise InputError(f"{p}: preset {name!r}: ablations {unknown} are not defined under `ablations`")
        out[str(name)] = entry
    return out


def preset_spec(spec: dict, preset: str) -> dict:
    """The flat spec of one preset: its prefix, seeds, config files, ablations to run and output folder."""
    if preset not in spec["presets"]:
        raise InputError(f"benchmark: unknown preset {preset!r} (have {', '.join(spec['presets'])})")
    entry = spec["presets"][preset]
    flat = {k: v for k, v in spec.items() if k != "presets"}
    flat.update(preset=preset, prefix=entry["prefix"], seeds=list(entry["seeds"]),
                ablation_seeds=entry["ablation_seeds"], configfiles=list(entry["configfiles"]),
                run_ablations=list(entry["ablations"]))
    if len(spec["presets"]) > 1:
        flat["out"] = str(Path(spec["out"]) / preset)
    return flat


def seeds_of(spec: dict, ablation: str) -> list:
    """The seeds an ablation runs on: all `seeds` for the reference, `ablation_seeds` (when set) for the others."""
    if ablation != spec.get("reference", "full") and spec.get("ablation_seeds"):
        return list(spec["ablation_seeds"])
    return list(spec["seeds"])


def experiment_name(prefix: str, ablation: str, seed: Any) -> str:
    return f"{prefix}_{ablation}_s{seed}"


def set_dotted(cfg: dict, key: str, value: Any) -> None:
    node = cfg
    parts = str(key).split(".")
    for part in parts[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise InputError(f"benchmark: cannot set {key!r}: {part!r} is not a mapping")
        node = nxt
    node[parts[-1]] = value


def overlay(spec: dict, ablation: str, seed: Any) -> dict:
    """The config overlay of one run: experiment name, seed keys, the ablation's overrides."""
    cfg: dict = {"experiment": experiment_name(spec["prefix"], ablation, seed)}
    for key in spec["seed_keys"]:
        set_dotted(cfg, key, seed)
    for key, value in (spec["ablations"][ablation] or {}).items():
        set_dotted(cfg, key, value)
    return cfg


def runs(spec: dict, ablations: Sequence[str] | None = None,
         seeds: Sequence[Any] | None = None) -> list[tuple[str, Any]]:
    names = list(spec.get("run_ablations") or spec["ablations"]) if not ablations else list(ablations)
    for name in names:
        if name not in spec["ablations"]:
            raise InputError(f"benchmark: unknown ablation {name!r} (have {', '.join(spec['ablations'])})")
    every = list(dict.fromkeys([*spec["seeds"], *(spec.get("ablation_seeds") or [])]))
    chosen = every if seeds is None else list(seeds)
    # seed-major: all ablations of the first seed come before the second seed; an ablation runs only
    # on its own seeds (seeds_of) unless the seeds are named explicitly
    return [(a, s) for s in chosen for a in names if seeds is not None or s in seeds_of(spec, a)]



def write_overlay(cfg: dict, path: Path) -> Path:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path

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
    seeds = spec.get("seeds")
    if not isinstance(seeds, list) or not seeds:
        raise InputError(f"{p}: `seeds` must be a non-empty list")
    if not isinstance(spec["ablations"], dict) or not spec["ablations"]:
        raise InputError(f"{p}: `ablations` must be a non-empty mapping name -> overrides")
    for name, overrides in spec["ablations"].items():
        if overrides is not None and not isinstance(overrides, dict):
            raise InputError(f"{p}: ablation {name!r}: overrides must be a mapping of dotted keys")
    return spec


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


def runs(spec: dict, ablations: Sequence[str] | None = None, seeds: Sequence[Any] | None = None) -> list[tuple[str, Any]]:
    names = list(spec["ablations"]) if not ablations else list(ablations)
    for name in names:
        if name not in spec["ablations"]:
            raise InputError(f"benchmark: unknown ablation {name!r} (have {', '.join(spec['ablations'])})")
    chosen = list(spec["seeds"]) if seeds is None else list(seeds)
    # seed-major: all ablations of the first seed come before the second seed
    return [(a, s) for s in chosen for a in names]



def write_overlay(cfg: dict, path: Path) -> Path:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path

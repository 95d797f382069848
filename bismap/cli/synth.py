"""`bismap synth`: write the synthetic domain-shift benchmark outside the pipeline."""
from __future__ import annotations

import argparse
from pathlib import Path


def _parse_set(items: list[str]) -> dict:
    import yaml

    from bismap.io import InputError

    out: dict = {}
    for item in items:
        if "=" not in item:
            raise InputError(f"--set {item}: expected KEY=VALUE (dotted keys for shift.*, object_rates.*)")
        key, value = item.split("=", 1)
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(value)
    return out


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("synth", help="generate the synthetic source/target benchmark",
                              description="Writes OUT/source (GTA5 layout) and OUT/target (Cityscapes layout).")
    p.add_argument("--config", default=None, help="YAML file; its `synthetic` slice (or the whole file) is used")
    p.add_argument("--out", required=True, help="output folder (gets source/ and target/)")
    p.add_argument("--preset", default=None,
                   help="scene kind: default (city street) or suburb (another kind of street)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--n-source", type=int, default=None)
    p.add_argument("--n-target-train", type=int, default=None)
    p.add_argument("--n-target-val", type=int, default=None)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other key, e.g. --set shift.palette_blend=0.5 (repeatable)")
    p.set_defaults(func=run_cli)
    return p


def run_cli(args: argparse.Namespace) -> int:
    import time

    import yaml

    from bismap.data.synthetic import write_benchmark
    from bismap.io import InputError

    cfg: dict = {}
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise InputError(f"{path}: config file not found")
        doc = yaml.safe_load(path.read_text()) or {}
        cfg = dict(doc.get("synthetic", doc) if isinstance(doc, dict) else {})
    for key in ("preset", "seed", "height", "width", "n_source", "n_target_train", "n_target_val", "workers"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    for key, value in _parse_set(args.set).items():
        if isinstance(value, dict):
            cfg[key] = {**cfg.get(key, {}), **value}
        else:
            cfg[key] = value
    out = Path(args.out)
    t0 = time.perf_counter()
    cfg = write_benchmark(str(out / "source"), str(out / "target"), cfg)
    n = int(cfg["n_source"]) + int(cfg["n_target_train"]) + int(cfg["n_target_val"])
    dt = time.perf_counter() - t0
    print(f"synth: {n} images in {dt:.1f}s ({n / max(dt, 1e-9):.0f} images/s with {cfg['workers']} workers)",
          flush=True)
    return 0

"""Stage: one diagonal Gaussian mixture per source class ("multiple anisotropic prototypes").

`prototypes.fit_on` says which bank each class is fitted on: the source's (source_features, the
paper), the target's (target_features; a class with fewer than `target_min_rows` target rows falls back
to its source rows), or both together.

Classes with too few rows for K components get fewer (at least 1: a mixture with more
components than half its rows just memorises points); empty classes get no GMM and are
listed in the output, so the pseudo-label stage can never assign them.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from bismap.data.labels import NUM_CLASSES
from bismap.engine.stage_setup import check_file
from bismap.io import InputError, save_torch
from bismap.method.prototype_banks import bank_names
from bismap.method.prototypes import PROTOTYPES_FORMAT, DiagonalGMM, unit_rows


def _open_bank(path: str | os.PathLike):
    """Open the HDF5 bank, check it has class_0..18 as [N, D]; returns (file, D)."""
    import h5py

    check_file(path, "feature bank")
    try:
        f = h5py.File(path, "r")
    except OSError:
        raise InputError(f"{path}: not an HDF5 feature bank") from None
    missing = [c for c in range(NUM_CLASSES) if f"class_{c}" not in f]
    if missing:
        f.close()
        raise InputError(f"{path}: feature bank lacks datasets class_{missing[0]}..")
    dims = {f[f"class_{c}"].shape[1] for c in range(NUM_CLASSES) if f[f"class_{c}"].ndim == 2}
    if len(dims) != 1 or any(f[f"class_{c}"].ndim != 2 for c in range(NUM_CLASSES)):
        f.close()
        raise InputError(f"{path}: feature bank datasets must all be [N, D] with one D")
    return f, dims.pop()


def components_for(n_rows: int, k: int) -> int:
    """K, reduced so every component has at least two rows on average (min 1); 0 = no GMM."""
    if n_rows <= 0:
        return 0
    return max(1, min(int(k), n_rows // 2))


def _read_rows(path, f, c: int) -> torch.Tensor:
    """Class c's rows as float32, refusing NaN or inf."""
    x = f[f"class_{c}"][()].astype(np.float32)
    if not np.isfinite(x).all():
        raise InputError(f"{path}: class_{c} holds NaN or inf features (written from a diverged "
                         f"model?); nothing can be fitted to them")
    return torch.from_numpy(x)


def _class_rows(banks: dict, c: int, fit_on: str, min_rows: int) -> tuple[torch.Tensor, str]:
    """(class c's rows under `fit_on`, which banks they came from)."""
    if fit_on == "both":
        return torch.cat([_read_rows(*banks["source"], c), _read_rows(*banks["target"], c)]), "source + target"
    if fit_on == "target":
        x = _read_rows(*banks["target"], c)
        if x.shape[0] >= min_rows or "source" not in banks:
            return x, "target"
        return _read_rows(*banks["source"], c), f"source (only {x.shape[0]} target rows < target_min_rows)"
    return _read_rows(*banks["source"], c), "source"


def _open_banks(stack, names: list[str], paths: list) -> tuple[dict, int]:
    """({name: (path, open file)}, the feature dimension they share), each file closed with `stack`."""
    banks, dims = {}, set()
    for name, path in zip(names, paths):
        f, dim = _open_bank(path)
        stack.enter_context(f)
        banks[name] = (path, f)
        dims.add(dim)
    if len(dims) != 1:
        raise InputError(f"{', '.join(map(str, paths))}: feature banks of different dimensions {sorted(dims)}")
    return banks, dims.pop()


def _fit(x: torch.Tensor, k: int, cfg: dict, seed: int, device) -> DiagonalGMM:
    gmm = DiagonalGMM(k, tol=float(cfg["tol"]), max_iter=int(cfg["max_iter"]), reg_covar=float(cfg["reg_covar"]),
                      seed=seed, batch_size=int(cfg["batch_size"]), device=device, n_init=int(cfg["n_init"]),
                      kmeans_n_init=int(cfg["kmeans_n_init"]), kmeans_tol=float(cfg["kmeans_tol"]),
                      kmeans_max_iter=int(cfg["kmeans_max_iter"]))
    return gmm.fit(x)


def run(*, features_h5: str | os.PathLike | list, out_path: str | os.PathLike, cfg: dict, threads: int = 1) -> None:
    """Fit and save {"format": "bismap-gmm/1", "classes": {c: state}, "feature_dim", "skipped", "components",
    "normalize"} (`normalize`: the GMMs model unit-length features, so the scorer must normalise too).

    `cfg` is the complete `prototypes` slice (defaults filled from configs/schema.yaml); `features_h5` the
    bank, or the banks of `bank_names(cfg)` in that order.
    """
    from contextlib import ExitStack

    from bismap.engine.device import resolve_device, set_threads

    set_threads(threads)
    device = resolve_device(str(cfg["device"]))
    k, max_samples, seed = int(cfg["components"]), int(cfg["max_samples"]), int(cfg["seed"])
    normalize = bool(cfg.get("normalize", False))  # the rule drops the key while it is off
    fit_on, min_rows = str(cfg.get("fit_on", "source")), int(cfg.get("target_min_rows", 0))
    paths = [features_h5] if isinstance(features_h5, (str, os.PathLike)) else list(features_h5)
    names = bank_names(cfg)
    if len(paths) != len(names):
        raise InputError(f"fit_prototypes: prototypes.fit_on: {fit_on} reads the {' and '.join(names)} feature "
                         f"bank{'s' if len(names) > 1 else ''}, got {len(paths)} file(s): {', '.join(map(str, paths))}")
    classes: dict[int, dict] = {}
    skipped: list[int] = []
    components: dict[int, int] = {}
    with ExitStack() as stack:
        banks, dim = _open_banks(stack, names, paths)
        for c in range(NUM_CLASSES):
            x, where = _class_rows(banks, c, fit_on, min_rows)
            n = x.shape[0]
            kc = components_for(n, k)
            if kc == 0:
                skipped.append(c)
                print(f"fit_prototypes: class {c}: no features, skipped", flush=True)
                continue
            if normalize:
                x = unit_rows(x)
            if n > max_samples:
                g = torch.Generator().manual_seed(seed * 1000 + c)
                x = x[torch.randperm(n, generator=g)[:max_samples].sort().values]
            if kc < k:
                print(f"fit_prototypes: class {c}: only {n} rows, K reduced {k} -> {kc}", flush=True)
            gmm = _fit(x, kc, cfg, seed + c, device)
            classes[c] = gmm.state_dict()
            components[c] = kc
            rows = f"{x.shape[0]} rows" + ("" if fit_on == "source" else f" of {where}")
            print(f"fit_prototypes: class {c}: {rows}, K={kc}, {gmm.n_iter_} EM iterations, "
                  f"mean loglik {gmm.lower_bound_:.3f}, converged={gmm.converged_}", flush=True)
    if not classes:
        raise InputError(f"{', '.join(map(str, paths))}: every class bank is empty; no prototypes can be fitted")
    if skipped:
        print(f"fit_prototypes: classes without prototypes: {skipped}", flush=True)
    save_torch(out_path, {"format": PROTOTYPES_FORMAT, "classes": classes, "feature_dim": int(dim), "skipped": skipped,
                          "components": components, "normalize": normalize, "config": dict(cfg)})

"""Stage: one diagonal Gaussian mixture per source class ("multiple anisotropic prototypes").

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


def run(*, features_h5: str | os.PathLike, out_path: str | os.PathLike, cfg: dict, threads: int = 1) -> None:
    """Fit and save {"format": "bismap-gmm/1", "classes": {c: state}, "feature_dim", "skipped", "components",
    "normalize"} (`normalize`: the GMMs model unit-length features, so the scorer must normalise too).

    `cfg` is the complete `prototypes` slice (defaults filled from configs/schema.yaml).
    """
    from bismap.engine.device import resolve_device, set_threads

    set_threads(threads)
    device = resolve_device(str(cfg["device"]))
    k, max_samples, seed = int(cfg["components"]), int(cfg["max_samples"]), int(cfg["seed"])
    normalize = bool(cfg.get("normalize", False))  # the rule drops the key while it is off
    f, dim = _open_bank(features_h5)
    classes: dict[int, dict] = {}
    skipped: list[int] = []
    components: dict[int, int] = {}
    with f:
        for c in range(NUM_CLASSES):
            ds = f[f"class_{c}"]
            n = ds.shape[0]
            kc = components_for(n, k)
            if kc == 0:
                skipped.append(c)
                print(f"fit_prototypes: class {c}: no features, skipped", flush=True)
                continue
            x = torch.from_numpy(ds[()].astype(np.float32))
            if not bool(torch.isfinite(x).all()):
                raise InputError(f"{features_h5}: class_{c} holds NaN or inf features (written from a diverged "
                                 f"model?); nothing can be fitted to them")
            if normalize:
                x = unit_rows(x)
            if n > max_samples:
                g = torch.Generator().manual_seed(seed * 1000 + c)
                x = x[torch.randperm(n, generator=g)[:max_samples].sort().values]
            if kc < k:
                print(f"fit_prototypes: class {c}: only {n} rows, K reduced {k} -> {kc}", flush=True)
            gmm = DiagonalGMM(kc, tol=float(cfg["tol"]), max_iter=int(cfg["max_iter"]),
                              reg_covar=float(cfg["reg_covar"]), seed=seed + c, batch_size=int(cfg["batch_size"]),
                              device=device, n_init=int(cfg["n_init"]),
                              kmeans_n_init=int(cfg["kmeans_n_init"]), kmeans_tol=float(cfg["kmeans_tol"]),
                              kmeans_max_iter=int(cfg["kmeans_max_iter"]))
            gmm.fit(x)
            classes[c] = gmm.state_dict()
            components[c] = kc
            print(f"fit_prototypes: class {c}: {x.shape[0]} rows, K={kc}, {gmm.n_iter_} EM iterations, "
                  f"mean loglik {gmm.lower_bound_:.3f}, converged={gmm.converged_}", flush=True)
    if not classes:
        raise InputError(f"{features_h5}: every class bank is empty; no prototypes can be fitted")
    if skipped:
        print(f"fit_prototypes: classes without prototypes: {skipped}", flush=True)
    save_torch(out_path, {"format": PROTOTYPES_FORMAT, "classes": classes, "feature_dim": int(dim), "skipped": skipped,
                          "components": components, "normalize": normalize, "config": dict(cfg)})

"""Stage: target-domain prototypes for the STM = k-means centroids of all target grid vectors.

As the original (sklearn KMeans, k=40, random_state=5, n_init=1, k-means++), but in torch,
seeded, on a seeded subsample of at most `stm.prototypes.max_samples` vectors.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from bismap.io import InputError, save_torch
from bismap.method.prototypes import kmeans
from bismap.method.stm_files import CENTROIDS_FORMAT, open_grid_features


def run(*, features_h5: str | os.PathLike, out_path: str | os.PathLike, cfg: dict, runtime: dict,
        threads: int = 1) -> None:
    """Save {"format": "bismap-kmeans/1", "centroids": [k, C] float64, "k", "seed", "cost", "samples"}."""
    from bismap.engine.device import resolve_device, set_threads

    set_threads(threads)
    device = resolve_device(str(runtime["device"]))
    f, ds, _ = open_grid_features(features_h5, "target")
    with f:
        x = ds[()]
    x = torch.from_numpy(x.reshape(-1, x.shape[-1]).astype(np.float32))
    if not bool(torch.isfinite(x).all()):
        raise InputError(f"{features_h5}: the target grid features hold NaN or inf; nothing can be clustered")
    k, seed = int(cfg["k"]), int(cfg["kmeans_seed"])
    max_samples = int(cfg["max_samples"])
    if x.shape[0] > max_samples:
        x = x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:max_samples].sort().values]
    if x.shape[0] < k:
        raise InputError(f"{features_h5}: {x.shape[0]} target grid vectors < stm.prototypes.k={k}")
    print(f"stm_prototypes: k-means k={k} on {x.shape[0]} target vectors of dim {x.shape[1]}", flush=True)
    c, cost = kmeans(x, k, seed=seed, n_init=int(cfg["kmeans_n_init"]),
                     max_iter=int(cfg["kmeans_max_iter"]), tol=float(cfg["kmeans_tol"]),
                     device=device)
    print(f"stm_prototypes: cost {cost:.4g}", flush=True)
    save_torch(out_path, {"format": CENTROIDS_FORMAT, "centroids": c, "k": k, "seed": seed, "cost": cost,
                          "samples": int(x.shape[0])})

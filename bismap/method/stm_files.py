"""Readers of the STM stages' files: grid features (stm_features) and k-means centroids (stm_prototypes).

Kept out of the stage modules so the writer and every reader of a format share one definition.
"""
from __future__ import annotations

import os

import torch

from bismap.engine.stage_setup import check_file
from bismap.io import InputError, load_torch_file

CENTROIDS_FORMAT = "bismap-kmeans/1"


def open_grid_features(path: str | os.PathLike, part: str):
    """(open h5py File, `part` dataset [N,G,C], names) of an stm_features file; InputError naming it otherwise.

    The dataset is read lazily (the GTA5 source grid is several GB); the caller closes the file.
    """
    import h5py

    check_file(path, "STM feature file")
    try:
        f = h5py.File(path, "r")
    except OSError:
        raise InputError(f"{path}: not an HDF5 file") from None
    if part not in f or f"{part}_names" not in f:
        f.close()
        raise InputError(f"{path}: no `{part}` / `{part}_names` datasets (not an stm_features file?)")
    x = f[part]
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in f[f"{part}_names"][()]]
    if x.ndim != 3 or x.shape[0] != len(names):
        f.close()
        raise InputError(f"{path}: `{part}` must be [N, G, C] with one row per name")
    return f, x, names


def load_centroids(path: str | os.PathLike) -> torch.Tensor:
    """The [k, C] float64 target centroids of an stm_prototypes file."""
    return load_torch_file(path, CENTROIDS_FORMAT, "STM prototypes file")["centroids"].double()

"""Stage: the Source Transferability Map, one uint8 weight map per source image.

Per grid cell p of a source image: d_p = distance to the nearest target centroid,
w_p = 2^-(d_p / m)^2 (0.5 at d = m), where m is a running mean of the per-image mean
distance: m starts at the first image's mean(d), and for every image (the first included)
m <- momentum*m + (1-momentum)*mean(d) is applied BEFORE w is computed, as the reference
describes. Because m depends on the order, images are always taken in sorted name order
(the original used file-glob order). w is upsampled nearest to the label size, the
normalised class entropy of each pixel's class is added (ignore pixels: none), then clipped
to [0,1] and stored as round(255*w) in `maps/<name>` (chunked, gzip).
"""
from __future__ import annotations

import os
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from bismap.data.labels import CLASS_NAMES, NUM_CLASSES
from bismap.data.labels import IGNORE_INDEX as IGNORE
from bismap.engine.stage_setup import open_spec
from bismap.io import InputError, atomic_path, read_json
from bismap.method.stm_files import load_centroids, open_grid_features


def transferability(d: torch.Tensor, m: float) -> torch.Tensor:
    """w = 2^-(d/m)^2 = exp(-ln2 d^2/m^2)."""
    return torch.pow(2.0, -(d / m) ** 2)


def nearest_distances(f: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """[G] Euclidean distance of each grid vector to its nearest centroid (float64)."""
    return torch.cdist(f.double()[None], centroids.double()[None])[0].min(1).values


def running_weights(dists: Sequence[torch.Tensor], momentum: float) -> Iterator[tuple[torch.Tensor, float]]:
    """(w, m used) per image, in the given order, with the update-before-use running scale."""
    m = None
    for d in dists:
        md = float(d.mean())
        m = md if m is None else m
        m = momentum * m + (1.0 - momentum) * md
        yield transferability(d, m if m > 0 else 1.0), m


def compose_map(w_grid: torch.Tensor, label: np.ndarray, bonus: np.ndarray | None) -> np.ndarray:
    """Grid weights [gh,gw] -> uint8 [H,W]: nearest upsample, + class bonus, clip, round(255 w)."""
    h, w = label.shape
    up = F.interpolate(w_grid.double()[None, None], size=(h, w), mode="nearest")[0, 0].numpy()
    if bonus is not None:
        lut = np.zeros(256, dtype=np.float64)
        lut[:NUM_CLASSES] = bonus
        lut[IGNORE] = 0.0
        up = up + lut[label]
    return np.round(np.clip(up, 0.0, 1.0) * 255.0).astype(np.uint8)


def read_normalised(path: str | os.PathLike) -> np.ndarray:
    """The normalised entropy per trainId (float [19]) from a class-entropy json."""
    obj = read_json(path)
    names = CLASS_NAMES
    try:
        norm = obj["normalised"]
        return np.array([float(norm.get(n) or 0.0) for n in names], dtype=np.float64)
    except (TypeError, KeyError, AttributeError, ValueError):
        raise InputError(f"{path}: not a class-entropy json (needs a 'normalised' mapping)") from None


def run(*, features_h5: str | os.PathLike, prototypes: str | os.PathLike, class_entropy_json: str | os.PathLike | None,
        source: dict, out_h5: str | os.PathLike, cfg: dict, threads: int = 1) -> None:
    """Write `maps/<name>` uint8 [H,W] (source label size) for every source image, atomically."""
    from bismap.engine.device import set_threads

    set_threads(threads)
    momentum = float(cfg["momentum"])
    use_bonus = bool(cfg["entropy_bonus"])
    bonus = None
    if use_bonus:
        if class_entropy_json is None:
            raise InputError("stm_maps: stm.maps.entropy_bonus is on but no class entropy json was given")
        bonus = read_normalised(class_entropy_json)
    centroids = load_centroids(prototypes)
    fh, feats, names = open_grid_features(features_h5, "source")
    with fh:
        grid = [int(v) for v in fh.attrs.get("grid", [])]
        if len(grid) != 2 or grid[0] * grid[1] != feats.shape[1]:
            raise InputError(f"{features_h5}: attr grid {grid} does not match {feats.shape[1]} vectors per image")
        if feats.shape[2] != centroids.shape[1]:
            raise InputError(f"{prototypes}: centroids have dim {centroids.shape[1]}, features {feats.shape[2]}")
        _write_maps(feats, names, centroids, grid, bonus, source, out_h5, momentum, use_bonus, features_h5)


def _write_maps(feats, names: list[str], centroids: torch.Tensor, grid: list[int], bonus, source: dict, out_h5,
                momentum: float, use_bonus: bool, features_h5) -> None:
    import h5py

    row = {n: i for i, n in enumerate(names)}
    ds = open_spec(source, "source")
    if not getattr(ds, "has_labels", True):
        raise InputError(f"{source.get('root')}: STM maps need labelled source images")
    order = sorted(ds.names)
    missing = [n for n in order if n not in row]
    if missing:
        raise InputError(f"{features_h5}: no STM features for source image {missing[0]} ({len(missing)} missing)")
    index = {n: i for i, n in enumerate(ds.names)}
    dists = (nearest_distances(torch.from_numpy(np.asarray(feats[row[n]])), centroids) for n in order)
    with atomic_path(out_h5) as tmp, h5py.File(tmp, "w") as out:
        out.attrs["momentum"] = momentum
        out.attrs["k"] = int(centroids.shape[0])
        out.attrs["grid"] = np.array(grid, dtype=np.int64)
        out.attrs["entropy_bonus"] = use_bonus
        maps = out.create_group("maps")
        m = float("nan")
        for i, (name, (w, m)) in enumerate(zip(order, running_weights(dists, momentum))):
            label = ds[index[name]]["label"]
            arr = compose_map(w.reshape(grid), label, bonus)
            d = maps.create_dataset(name, data=arr, chunks=(min(arr.shape[0], 256), min(arr.shape[1], 256)),
                                    compression="gzip", compression_opts=4)
            d.attrs["scale"] = m
            if (i + 1) % 100 == 0 or i + 1 == len(order):
                print(f"stm_maps: {i + 1}/{len(order)} maps, running scale {m:.4g}, mean weight {arr.mean() / 255:.3f}",
                      flush=True)
        out.attrs["final_scale"] = m

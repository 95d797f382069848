"""TrainingView: an `open_dataset` dataset seen through the training augmentation.

Item i of epoch e is a pure function of (seed, e, i): the stream sets the epoch with
`set_epoch`, so a resumed run re-creates exactly the crops it would have produced.
The STM weight-map HDF5 is opened lazily in the process that reads it (never in
__init__), so DataLoader workers fork without sharing an h5py handle.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from bismap.data.transforms import (
    apply_geometry,
    augment_config,
    color_jitter,
    cutout_keep_mask,
    normalize,
    rand_augment,
    sample_geometry,
    strong_config,
)
from bismap.io import InputError


class TrainingView(Dataset):
    """Returns {"image" [3,h,w] float, "label" [h,w] long, "weight" [h,w] float (STM/255, ones if none),
    "strong" [3,h,w] + "keep" [h,w] bool (only with `strong`), "name" str}."""

    def __init__(self, dataset: Dataset, augment: Mapping[str, Any] | None, mean: Sequence[float], std: Sequence[float],
                 weight_maps: str | os.PathLike | None = None, strong: Mapping[str, Any] | None = None,
                 seed: int = 0) -> None:
        self.dataset = dataset
        self.augment = augment_config(augment)
        self.strong = strong_config(strong) if strong is not None else None
        self.mean = [float(v) for v in mean]
        self.std = [float(v) for v in std]
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise InputError(f"data.normalize.mean/std: need 3 values each and std > 0, got {self.mean} / {self.std}")
        self.weight_maps = Path(weight_maps) if weight_maps is not None else None
        if self.weight_maps is not None and not self.weight_maps.is_file():
            raise InputError(f"{self.weight_maps}: weight-map HDF5 not found")
        self.seed = int(seed)
        self.epoch = 0
        self._h5: Any = None
        self._h5_pid: int | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    def __getstate__(self) -> dict[str, Any]:  # picklable for spawn-based workers
        state = dict(self.__dict__)
        state["_h5"], state["_h5_pid"] = None, None
        return state

    def _weight_map(self, name: str, shape: tuple[int, int]) -> np.ndarray | None:
        if self.weight_maps is None:
            return None
        if self._h5 is None or self._h5_pid != os.getpid():
            import h5py

            try:
                self._h5 = h5py.File(self.weight_maps, "r")
            except OSError as e:
                raise InputError(f"{self.weight_maps}: cannot open as HDF5 ({e})") from None
            self._h5_pid = os.getpid()
        key = f"maps/{name}"
        if key not in self._h5:
            raise InputError(f"{self.weight_maps}: no weight map {key!r}")
        wmap = np.asarray(self._h5[key][()], dtype=np.uint8)
        if wmap.ndim != 2:
            raise InputError(f"{self.weight_maps}: {key} has shape {wmap.shape}, expected [H, W]")
        if wmap.shape != shape:  # maps are stored at the label size; follow a spec `size` resize (nearest)
            from PIL import Image

            wmap = np.asarray(Image.fromarray(wmap).resize((shape[1], shape[0]), Image.NEAREST))
        return wmap

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.dataset[index]
        image, label, name = item["image"], item["label"], item["name"]
        rng = self.rng(index)
        geom = sample_geometry(rng, label, self.augment)
        out_label = apply_geometry(label, geom, "label")
        wmap = self._weight_map(name, label.shape[:2])
        if wmap is None:
            weight = torch.ones(out_label.shape, dtype=torch.float32)
        else:
            weight = torch.from_numpy(apply_geometry(wmap, geom, "weight").astype(np.float32) / 255.0)
        weak = color_jitter(apply_geometry(image, geom, "image"), rng, self.augment["jitter"])
        out: dict[str, Any] = {"image": normalize(weak, self.mean, self.std),
                               "label": torch.from_numpy(out_label.astype(np.int64)),
                               "weight": weight, "name": name}
        if self.strong is not None:
            strong = rand_augment(image, rng, self.strong["ops"], self.strong["magnitude"])
            strong = apply_geometry(strong, geom, "image").copy()
            side = int(float(self.strong["cutout"]) * geom.crop[1])
            keep = cutout_keep_mask(rng, geom.crop, side)
            strong[~keep] = 0
            out["strong"] = normalize(strong, self.mean, self.std)
            out["keep"] = torch.from_numpy(keep)
        return out

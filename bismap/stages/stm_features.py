"""Stage: grid features of source and target images for the Source Transferability Map.

Extractor: SimCLRv2 (R152-1x-SK1 in the paper; `stm.features.extractor: simclr` + `stm.features.weights`),
fed [0,1] pixels normalised with `stm.mean/std` (0/1 = as SimCLRv2 expects), or the warm-up
model's encoder (`stm.features.extractor: warmup`, high-level backbone output), fed images normalised
with `data.normalize.mean/std` as it was trained. Images are resized to `stm.features.image_size`; the feature
map is reduced to a coarse grid (`stm.features.grid` by adaptive average pooling, or `stm.features.pool`
kernel = stride as the original's (1,2)) so every image gives G vectors.

HDF5 out: `source` [N,G,C], `target` [M,G,C] float32, `source_names`, `target_names` (sorted),
attrs grid=[gh,gw], extractor.
"""
from __future__ import annotations

import os
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from bismap.engine.inference import iter_batches, to_input
from bismap.engine.stage_setup import check_file, load_warmup, open_spec, setup_device
from bismap.io import InputError, atomic_path


def pool_grid(feat: torch.Tensor, grid: list[int] | None, pool: list[int] | None) -> tuple[torch.Tensor, list[int]]:
    """[B,C,h,w] -> ([B, G, C] grid vectors (row-major), [gh, gw]), by adaptive pooling to grid or avg_pool(pool)."""
    if grid is not None:
        g = F.adaptive_avg_pool2d(feat, (int(grid[0]), int(grid[1])))
    else:
        k = (int(pool[0]), int(pool[1])) if pool is not None else (1, 1)
        g = F.avg_pool2d(feat, kernel_size=k, stride=k)
    b, c, gh, gw = g.shape
    return g.reshape(b, c, -1).permute(0, 2, 1).contiguous(), [gh, gw]


def build_extractor(cfg: dict, checkpoint, data: dict, device: torch.device
                    ) -> tuple[Callable[[torch.Tensor], torch.Tensor], list[float], list[float], str]:
    """(function images->feature map, mean, std, description) for the configured extractor."""
    kind = str(cfg["extractor"])
    if kind == "simclr":
        from bismap.models import load_pretrained
        from bismap.models.simclr import SimCLRResNet

        weights = cfg["weights"]
        if not weights:
            raise InputError("config: `stm.features.weights` must name the SimCLRv2 file when "
                             "stm.features.extractor is simclr")
        check_file(weights, "SimCLRv2 weights file")
        net = SimCLRResNet(int(cfg["depth"]), int(cfg["width_multiplier"]),
                           float(cfg["sk_ratio"]))
        load_pretrained(net, weights, key=cfg["weights_key"])
        net = net.to(device).eval()
        return net, list(cfg["mean"]), list(cfg["std"]), f"simclr:{weights}"
    if checkpoint is None:  # extractor warmup (the schema allows no other)
        raise InputError("stm_features: extractor warmup needs the warm-up checkpoint")
    model = load_warmup(checkpoint, device)
    return (lambda x: model.backbone(x)[1]), list(data["mean"]), list(data["std"]), f"warmup:{checkpoint}"


@torch.no_grad()
def run(*, source: dict, target: dict, out_h5: str | os.PathLike, cfg: dict,
        checkpoint: str | os.PathLike | None = None, data: dict, runtime: dict, threads: int = 1) -> None:
    """Extract grid features of every source and target image into one HDF5 file (atomic)."""
    import h5py

    device = setup_device(threads, runtime)
    size = [int(s) for s in cfg["image_size"]]
    grid = cfg["grid"]
    pool = cfg["pool"]
    extract, mean, std, desc = build_extractor(cfg, checkpoint, data, device)
    batch_size = int(cfg["batch_size"])
    with atomic_path(out_h5) as tmp, h5py.File(tmp, "w") as f:
        shape = None
        for part, spec in (("source", source), ("target", target)):
            ds = open_spec(spec, part, size=size)
            names = list(ds.names)
            if names != sorted(names):
                raise InputError(f"{spec.get('root')}: dataset names are not sorted")
            out = None
            i = 0
            for items in iter_batches(ds, batch_size):
                v, grid_hw = pool_grid(extract(to_input(items, mean, std, device)).float(), grid, pool)
                v = v.cpu().numpy()
                if out is None:
                    out = f.create_dataset(part, shape=(len(ds),) + v.shape[1:], dtype=np.float32,
                                           chunks=(min(len(ds), 64),) + v.shape[1:], compression="gzip",
                                           compression_opts=1)
                    if shape is not None and shape != v.shape[1:]:
                        raise InputError(f"stm_features: {part} grid {v.shape[1:]} differs from source {shape}")
                    shape = v.shape[1:]
                out[i:i + len(items)] = v
                i += len(items)
                if i % max(1, 10 * batch_size) < len(items) or i == len(ds):
                    print(f"stm_features: {part} {i}/{len(ds)} images", flush=True)
            f.create_dataset(f"{part}_names", data=np.array(names, dtype=object), dtype=h5py.string_dtype())
        f.attrs["grid"] = np.array(grid_hw, dtype=np.int64)  # so stm_maps can lay the G vectors out again
        f.attrs["extractor"] = desc
        f.attrs["image_size"] = np.array(size, dtype=np.int64)

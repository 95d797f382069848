"""Stage: banks of decoder features of correctly classified source pixels (input of the GMMs).

For every source image the warm-up model gives the 256-d classifier input at stride 4; a
pixel joins the bank of class c when its (nearest-resized) label is c AND the model predicts
c, as in the original. Each class is thinned by its `class_fractions` entry (frequent stuff
classes would otherwise swamp memory) and capped at `max_per_class` rows by reservoir
sampling, so memory stays bounded and the kept rows are a uniform sample of the whole set.

Also home of the small inference helpers the other D stages share (batching, forward pass).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from bismap.io import InputError, atomic_path

NUM_CLASSES = 19
IGNORE = 255


# ----------------------------------------------------------------------------- shared helpers
def check_file(path: str | os.PathLike, what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: {what} not found")
    return p


def open_spec(spec: dict, name: str, **override) -> torch.utils.data.Dataset:
    """open_dataset(spec) with overrides; an empty dataset is an input error naming its root."""
    from bismap.data import open_dataset

    if not isinstance(spec, dict):
        raise InputError(f"{name}: dataset spec must be a mapping, got {type(spec).__name__}")
    ds = open_dataset({**spec, **override})
    if len(ds) == 0:
        raise InputError(f"{spec.get('root')}: {name} dataset has no images")
    return ds


def iter_batches(dataset, batch_size: int, max_images: int | None = None) -> Iterator[list[dict]]:
    """Items in dataset (sorted-name) order, grouped into batches of equal image size."""
    n = len(dataset) if max_images is None else min(len(dataset), int(max_images))
    batch: list[dict] = []
    for i in range(n):
        item = dataset[i]
        if batch and (len(batch) >= batch_size or batch[0]["image"].shape != item["image"].shape):
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


def to_input(items: Sequence[dict], mean: Sequence[float], std: Sequence[float], device: torch.device) -> torch.Tensor:
    """uint8 HxWx3 images -> normalised float [B,3,H,W] (mean/std in [0,1] units, as the training views)."""
    x = torch.from_numpy(np.stack([it["image"] for it in items])).permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(list(mean), dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(list(std), dtype=torch.float32).view(1, 3, 1, 1)
    return ((x - m) / s).to(device)


@torch.no_grad()
def forward(model: torch.nn.Module, x: torch.Tensor, flip: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(feature, logits) at stride 4, optionally averaged with the horizontally flipped image's."""
    feat, logits = model(x)
    if flip:
        f2, l2 = model(torch.flip(x, dims=[3]))
        feat = (feat + torch.flip(f2, dims=[3])) / 2
        logits = (logits + torch.flip(l2, dims=[3])) / 2
    return feat.float(), logits.float()


def mean_std(data: dict | None, where: str) -> tuple[list[float], list[float]]:
    if not data or "mean" not in data or "std" not in data:
        raise InputError(f"config: `data.mean`/`data.std` are needed by {where}")
    return list(data["mean"]), list(data["std"])


def setup_device(threads: int, data: dict | None, cfg: dict | None = None) -> torch.device:
    """Threads from Snakemake; device from `<stage>.device`, else `data.device` ("auto" = GPU when present)."""
    from bismap.engine.device import resolve_device, set_threads

    set_threads(threads)
    name = (cfg or {}).get("device") or (data or {}).get("device", "auto")
    return resolve_device(str(name))


def load_warmup(checkpoint: str | os.PathLike, device: torch.device) -> torch.nn.Module:
    from bismap.engine.checkpoint import load_model

    check_file(checkpoint, "checkpoint")
    return load_model(checkpoint, device=device).eval()


# ----------------------------------------------------------------------------- sampling core
class ClassReservoir:
    """Per-class uniform sample of at most `cap` rows from a stream (Algorithm R, vectorised, seeded)."""

    def __init__(self, num_classes: int, dim: int, cap: int, seed: int) -> None:
        self.cap, self.dim = int(cap), int(dim)
        self.rows = [torch.empty(0, dim) for _ in range(num_classes)]
        self.seen = [0] * num_classes
        self.gen = torch.Generator().manual_seed(int(seed))

    def add(self, c: int, x: torch.Tensor) -> None:
        n = x.shape[0]
        if n == 0:
            return
        t0 = self.seen[c]
        self.seen[c] += n
        buf = self.rows[c]
        room = max(0, self.cap - buf.shape[0])
        if room:
            buf = torch.cat([buf, x[:room]])
            x = x[room:]
            t0 += room
        if x.shape[0]:
            t = torch.arange(t0, t0 + x.shape[0], dtype=torch.float64)
            j = (torch.rand(x.shape[0], generator=self.gen, dtype=torch.float64) * (t + 1)).long()
            hit = (j < self.cap).nonzero().flatten()
            if len(hit):
                # later rows overwrite earlier ones at the same slot (sequential Algorithm R); keep the last
                jh = j[hit].numpy()
                rev = jh[::-1]
                _, first_in_rev = np.unique(rev, return_index=True)
                keep = hit[torch.from_numpy(len(jh) - 1 - first_in_rev)]
                buf[j[keep]] = x[keep]
        self.rows[c] = buf


def select_pixels(feat: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, fractions: Sequence[float],
                  gen: torch.Generator) -> dict[int, torch.Tensor]:
    """Rows of feat [B,D,h,w] where resized label == argmax == c, each kept with prob fractions[c] (CPU rows)."""
    b, d, h, w = feat.shape
    lab = F.interpolate(labels[:, None].float(), size=(h, w), mode="nearest")[:, 0].long().to(feat.device)
    pred = logits.argmax(1)
    ok = (lab == pred) & (lab != IGNORE)
    flat_feat = feat.permute(0, 2, 3, 1).reshape(-1, d)
    flat_lab = torch.where(ok, lab, torch.full_like(lab, -1)).reshape(-1)
    out: dict[int, torch.Tensor] = {}
    for c in range(len(fractions)):
        idx = (flat_lab == c).nonzero().flatten().cpu()
        if len(idx) == 0:
            continue
        frac = float(fractions[c])
        if frac < 1.0:
            idx = idx[torch.rand(len(idx), generator=gen) < frac]
        if len(idx):
            out[c] = flat_feat[idx.to(feat.device)].cpu()
    return out


# ----------------------------------------------------------------------------- stage
def run(*, checkpoint: str | os.PathLike, source: dict, out_h5: str | os.PathLike, cfg: dict, data: dict,
        threads: int = 1) -> None:
    """Write `class_<c>` float32 [N_c, D] (all 19, maybe empty) to out_h5 (chunked, gzip, atomic)."""
    import h5py

    device = setup_device(threads, data, cfg)
    mean, std = mean_std(data, "source_features")
    fractions = list(cfg.get("class_fractions", [1.0] * NUM_CLASSES))
    if len(fractions) != NUM_CLASSES:
        raise InputError(f"config: `source_features.class_fractions` needs {NUM_CLASSES} values, got {len(fractions)}")
    cap = int(cfg.get("max_per_class", 1_000_000))
    seed = int(cfg.get("seed", 1))
    batch_size = int(cfg.get("batch_size", 4))
    flip = bool(cfg.get("flip", False))
    max_images = cfg.get("max_images")
    model = load_warmup(checkpoint, device)
    ds = open_spec(source, "source")
    if not getattr(ds, "has_labels", True):
        raise InputError(f"{source.get('root')}: source features need labelled source images")
    dim = int(getattr(model, "feature_dim", 0)) or None
    gen = torch.Generator().manual_seed(seed)
    res: ClassReservoir | None = None
    total = len(ds) if max_images is None else min(len(ds), int(max_images))
    done = 0
    for items in iter_batches(ds, batch_size, max_images):
        x = to_input(items, mean, std, device)
        feat, logits = forward(model, x, flip)
        if res is None:
            dim = feat.shape[1]
            res = ClassReservoir(NUM_CLASSES, dim, cap, seed + 1)
        labels = torch.from_numpy(np.stack([it["label"] for it in items]))
        for c, rows in select_pixels(feat, logits, labels, fractions, gen).items():
            res.add(c, rows)
        done += len(items)
        if done == total or done % max(1, 10 * batch_size) < len(items):
            print(f"source_features: {done}/{total} images", flush=True)
    assert res is not None and dim is not None
    with atomic_path(out_h5) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["feature_dim"] = dim
            f.attrs["images"] = total
            f.attrs["class_fractions"] = np.asarray(fractions, dtype=np.float64)
            f.attrs["max_per_class"] = cap
            f.attrs["seed"] = seed
            for c in range(NUM_CLASSES):
                rows = res.rows[c].numpy().astype(np.float32)
                f.create_dataset(f"class_{c}", data=rows, maxshape=(None, dim),
                                 chunks=(max(1, min(4096, len(rows))), dim), compression="gzip", compression_opts=4)
                f[f"class_{c}"].attrs["seen"] = res.seen[c]
                print(f"source_features: class {c}: kept {len(rows)} of {res.seen[c]} sampled pixels", flush=True)

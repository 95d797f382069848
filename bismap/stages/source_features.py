"""Stage: banks of decoder features of correctly classified source pixels (input of the GMMs).

For every source image the warm-up model gives the 256-d classifier input at stride 4; a
pixel joins the bank of class c when its (nearest-resized) label is c AND the model predicts
c, as in the original. Each class is thinned by its `class_fractions` entry (frequent stuff
classes would otherwise swamp memory) and capped at `max_per_class` rows by reservoir
sampling, so memory stays bounded and the kept rows are a uniform sample of the whole set.

The fractions were tuned for ~25k GTA5 images, where every class keeps far more rows than a GMM
needs; on a small data set they starve the GMMs (144 rows of a class in 128-d on the embedded
benchmark). `min_per_class` makes them mean the same at any data size: a class whose thinned
bank would hold fewer rows gets a uniform sample of min(min_per_class, all) of its correctly
predicted pixels instead (a second reservoir, unthinned; 0 = the original's thinning alone).

Also home of the small inference helpers the other D stages share (batching, forward pass).
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F

from bismap.data.labels import IGNORE_INDEX as IGNORE
from bismap.data.labels import NUM_CLASSES
from bismap.engine.inference import forward, iter_batches, to_input
from bismap.engine.stage_setup import load_warmup, mean_std, open_spec, setup_device
from bismap.io import InputError, atomic_path

# ----------------------------------------------------------------------------- shared helpers


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


def correct_pixels(feat: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> dict[int, torch.Tensor]:
    """Rows of feat [B,D,h,w] where the (nearest-resized) label == argmax == c, per class c (on feat's device)."""
    b, d, h, w = feat.shape
    lab = F.interpolate(labels[:, None].float(), size=(h, w), mode="nearest")[:, 0].long().to(feat.device)
    pred = logits.argmax(1)
    ok = (lab == pred) & (lab != IGNORE)
    flat_feat = feat.permute(0, 2, 3, 1).reshape(-1, d)
    flat_lab = torch.where(ok, lab, torch.full_like(lab, -1)).reshape(-1)
    out: dict[int, torch.Tensor] = {}
    for c in range(NUM_CLASSES):
        idx = (flat_lab == c).nonzero().flatten()
        if len(idx):
            out[c] = flat_feat[idx]
    return out


def thin(rows: torch.Tensor, fraction: float, gen: torch.Generator) -> torch.Tensor:
    """Each row kept with probability `fraction` (CPU rows; no random draw when fraction >= 1)."""
    if fraction < 1.0:
        rows = rows[(torch.rand(rows.shape[0], generator=gen) < fraction).to(rows.device)]
    return rows.cpu()


# ----------------------------------------------------------------------------- stage
def bank_rows(res: ClassReservoir, floor: ClassReservoir | None, c: int, min_rows: int) -> tuple[torch.Tensor, bool]:
    """Class c's bank: the thinned reservoir, or the unthinned one when thinning left fewer than
    `min_rows` rows and the unthinned sample is larger; (rows, whether the unthinned one was used)."""
    if floor is not None and res.rows[c].shape[0] < min_rows and floor.rows[c].shape[0] > res.rows[c].shape[0]:
        return floor.rows[c], True
    return res.rows[c], False


def run(*, checkpoint: str | os.PathLike, source: dict, out_h5: str | os.PathLike, cfg: dict, data: dict,
        runtime: dict, threads: int = 1) -> None:
    """Write `class_<c>` float32 [N_c, D] (all 19, maybe empty) to out_h5 (chunked, gzip, atomic)."""
    device = setup_device(threads, runtime)
    mean, std = mean_std(data)
    fractions = list(cfg["class_fractions"])
    if len(fractions) != NUM_CLASSES:
        raise InputError(f"config: `source_features.class_fractions` needs {NUM_CLASSES} values, got {len(fractions)}")
    cap = int(cfg["max_per_class"])
    seed = int(cfg["seed"])
    batch_size = int(cfg["batch_size"])
    flip = bool(cfg["flip"])
    max_images = cfg["max_images"]
    model = load_warmup(checkpoint, device)
    ds = open_spec(source, "source")
    if not getattr(ds, "has_labels", True):
        raise InputError(f"{source.get('root')}: source features need labelled source images")
    dim = int(getattr(model, "feature_dim", 0)) or None
    gen = torch.Generator().manual_seed(seed)
    floor_rows = int(cfg["min_per_class"])
    res: ClassReservoir | None = None
    floor: ClassReservoir | None = None
    total = len(ds) if max_images is None else min(len(ds), int(max_images))
    done = 0
    for items in iter_batches(ds, batch_size, max_images):
        x = to_input(items, mean, std, device)
        feat, logits = forward(model, x, flip)
        if res is None:
            dim = feat.shape[1]
            res = ClassReservoir(NUM_CLASSES, dim, cap, seed + 1)
            floor = ClassReservoir(NUM_CLASSES, dim, min(floor_rows, cap), seed + 2) if floor_rows else None
        labels = torch.from_numpy(np.stack([it["label"] for it in items]))
        for c, rows in correct_pixels(feat, logits, labels).items():
            kept = thin(rows, float(fractions[c]), gen)
            if len(kept):
                res.add(c, kept)
            if floor is not None:
                floor.add(c, rows.cpu())
        done += len(items)
        if done == total or done % max(1, 10 * batch_size) < len(items):
            print(f"source_features: {done}/{total} images", flush=True)
    assert res is not None and dim is not None
    write_banks(out_h5, res, floor, dim=dim, images=total, attrs={
        "class_fractions": np.asarray(fractions, dtype=np.float64), "max_per_class": cap,
        "min_per_class": floor_rows, "seed": seed})


def write_banks(out_h5: str | os.PathLike, res: ClassReservoir, floor: ClassReservoir | None, *, dim: int,
                images: int, attrs: dict) -> None:
    """The 19 `class_<c>` banks (bank_rows of each) with the settings as attributes, atomically."""
    import h5py

    with atomic_path(out_h5) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["feature_dim"] = dim
            f.attrs["images"] = images
            for key, value in attrs.items():
                f.attrs[key] = value
            for c in range(NUM_CLASSES):
                rows, unthinned = bank_rows(res, floor, c, int(attrs["min_per_class"]))
                rows = rows.numpy().astype(np.float32)
                f.create_dataset(f"class_{c}", data=rows, maxshape=(None, dim),
                                 chunks=(max(1, min(4096, len(rows))), dim), compression="gzip", compression_opts=4)
                f[f"class_{c}"].attrs["seen"] = res.seen[c]
                f[f"class_{c}"].attrs["unthinned"] = unthinned
                how = f"unthinned sample (thinning kept {len(res.rows[c])} < min_per_class)" if unthinned else "thinned"
                print(f"source_features: class {c}: kept {len(rows)} rows, {how}", flush=True)

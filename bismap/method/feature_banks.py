"""The source feature banks' sampling: which correctly classified source pixels the GMMs see.

A pixel joins the bank of class c when its (nearest-resized) label is c AND the warm-up model
predicts c, as in the original. Each class is thinned by its `class_fractions` entry (frequent
stuff classes would otherwise swamp memory) and capped at `max_per_class` rows by reservoir
sampling, so memory stays bounded and the kept rows are a uniform sample of the whole set. A class
thinned below `min_per_class` rows keeps an unthinned uniform sample of its correct pixels instead
(a second reservoir; 0 = the original's thinning alone).

Every random draw depends only on how many rows arrive, in which order: the same `BankSampler`
fed row ids instead of features picks exactly the rows it would keep of the features. That is how
a sharded stage (method.feature_shards) selects, after a counting pass, the very rows one job keeps.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from bismap.data.labels import IGNORE_INDEX, NUM_CLASSES
from bismap.io import atomic_path


class ClassReservoir:
    """Per-class uniform sample of at most `cap` rows from a stream (Algorithm R, vectorised, seeded)."""

    def __init__(self, num_classes: int, dim: int, cap: int, seed: int, dtype: torch.dtype = torch.float32) -> None:
        self.cap, self.dim = int(cap), int(dim)
        self.rows = [torch.empty(0, dim, dtype=dtype) for _ in range(num_classes)]
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


def rows_by_class(flat_feat: torch.Tensor, flat_lab: torch.Tensor) -> dict[int, torch.Tensor]:
    """{c: the rows of flat_feat [N, D] whose flat_lab [N] is c} for the classes present, ascending."""
    out: dict[int, torch.Tensor] = {}
    for c in range(NUM_CLASSES):
        idx = (flat_lab == c).nonzero().flatten()
        if len(idx):
            out[c] = flat_feat[idx]
    return out


def correct_pixels(feat: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> dict[int, torch.Tensor]:
    """Rows of feat [B,D,h,w] where the (nearest-resized) label == argmax == c, per class c in ascending
    order (on feat's device); within a class, image by image, row-major."""
    b, d, h, w = feat.shape
    lab = F.interpolate(labels[:, None].float(), size=(h, w), mode="nearest")[:, 0].long().to(feat.device)
    pred = logits.argmax(1)
    ok = (lab == pred) & (lab != IGNORE_INDEX)
    flat_feat = feat.permute(0, 2, 3, 1).reshape(-1, d)
    flat_lab = torch.where(ok, lab, torch.full_like(lab, -1)).reshape(-1)
    return rows_by_class(flat_feat, flat_lab)


def confident_pixels(feat: torch.Tensor, logits: torch.Tensor, threshold: float) -> dict[int, torch.Tensor]:
    """Rows of feat [B,D,h,w] whose softmax argmax is c with probability >= threshold, per class c in
    ascending order (the target banks: the network's confident pixels stand in for labels)."""
    b, d, h, w = feat.shape
    conf, pred = torch.softmax(logits.float(), 1).max(1)
    flat_feat = feat.permute(0, 2, 3, 1).reshape(-1, d)
    flat_lab = torch.where(conf >= float(threshold), pred, torch.full_like(pred, -1)).reshape(-1)
    return rows_by_class(flat_feat, flat_lab)


def thin(rows: torch.Tensor, fraction: float, gen: torch.Generator) -> torch.Tensor:
    """Each row kept with probability `fraction` (CPU rows; no random draw when fraction >= 1)."""
    if fraction < 1.0:
        rows = rows[(torch.rand(rows.shape[0], generator=gen) < fraction).to(rows.device)]
    return rows.cpu()


@dataclass
class Bank:
    """One class's bank: its rows, the correct pixels seen (after thinning), whether the unthinned
    sample replaced the thinned one, and how many rows the thinned reservoir held."""

    rows: torch.Tensor
    seen: int
    unthinned: bool
    thinned_rows: int


class BankSampler:
    """Thinning, the capped reservoir and the unthinned floor of every class, fed batch by batch."""

    def __init__(self, fractions: Sequence[float], cap: int, min_per_class: int, seed: int, dim: int,
                 dtype: torch.dtype = torch.float32) -> None:
        self.fractions = [float(f) for f in fractions]
        self.min_per_class = int(min_per_class)
        self.gen = torch.Generator().manual_seed(int(seed))
        self.res = ClassReservoir(NUM_CLASSES, dim, cap, seed + 1, dtype)
        self.floor = (ClassReservoir(NUM_CLASSES, dim, min(self.min_per_class, cap), seed + 2, dtype)
                      if self.min_per_class else None)

    def add(self, per_class: dict[int, torch.Tensor]) -> None:
        """One batch's correct pixels of each class (correct_pixels: ascending classes)."""
        for c, rows in per_class.items():
            kept = thin(rows, self.fractions[c], self.gen)
            if len(kept):
                self.res.add(c, kept)
            if self.floor is not None:
                self.floor.add(c, rows.cpu())

    def banks(self) -> list[Bank]:
        """Every class's bank: the thinned reservoir, or the unthinned one when thinning left fewer
        than min_per_class rows and the unthinned sample is larger."""
        out = []
        for c in range(NUM_CLASSES):
            thinned = self.res.rows[c]
            floor = None if self.floor is None else self.floor.rows[c]
            use_floor = (floor is not None and thinned.shape[0] < self.min_per_class
                         and floor.shape[0] > thinned.shape[0])
            out.append(Bank(floor if use_floor else thinned, self.res.seen[c], use_floor, thinned.shape[0]))
        return out


def write_banks(out_h5: str | os.PathLike, banks: Sequence[Bank], *, dim: int, images: int, attrs: dict,
                stage: str = "source_features") -> None:
    """The 19 `class_<c>` float32 [N_c, dim] banks with the settings as attributes (chunked, gzip, atomic)."""
    import h5py

    with atomic_path(out_h5) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["feature_dim"] = dim
            f.attrs["images"] = images
            for key, value in attrs.items():
                f.attrs[key] = value
            for c, bank in enumerate(banks):
                rows = bank.rows.numpy().astype(np.float32)
                f.create_dataset(f"class_{c}", data=rows, maxshape=(None, dim),
                                 chunks=(max(1, min(4096, len(rows))), dim), compression="gzip", compression_opts=4)
                f[f"class_{c}"].attrs["seen"] = bank.seen
                f[f"class_{c}"].attrs["unthinned"] = bank.unthinned
                how = (f"unthinned sample (thinning kept {bank.thinned_rows} < min_per_class)" if bank.unthinned
                       else "thinned")
                print(f"{stage}: class {c}: kept {len(rows)} rows" + (f", {how}" if stage == "source_features" else
                                                                      f" of {bank.seen}"), flush=True)

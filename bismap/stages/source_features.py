"""Stage: banks of decoder features of correctly classified source pixels (input of the GMMs).

For every source image the warm-up model gives the 256-d classifier input at stride 4; the sampling
(which correct pixels each class's bank keeps) is method.feature_banks. With
`resources.source_features.shards` > 1 the stage runs as shard jobs in two passes over the batches
(method.feature_shards) and writes the same file one job writes.

The fractions were tuned for ~25k GTA5 images, where every class keeps far more rows than a GMM
needs; on a small data set they starve the GMMs (144 rows of a class in 128-d on the embedded
benchmark). `min_per_class` makes them mean the same at any data size.
"""
from __future__ import annotations

import os
from typing import Iterator, Sequence

import numpy as np
import torch

from bismap.data.labels import NUM_CLASSES
from bismap.engine.inference import batch_bounds, forward, iter_batches, to_input
from bismap.engine.stage_setup import load_warmup, mean_std, open_spec, setup_device
from bismap.io import InputError
from bismap.method import feature_shards
from bismap.method.feature_banks import BankSampler, correct_pixels, write_banks


def class_fractions(cfg: dict) -> list[float]:
    fractions = [float(f) for f in cfg["class_fractions"]]
    if len(fractions) != NUM_CLASSES:
        raise InputError(f"config: `source_features.class_fractions` needs {NUM_CLASSES} values, got {len(fractions)}")
    return fractions


def bank_attrs(cfg: dict) -> dict:
    """The settings the HDF5 file records (fit_prototypes and the report read them back)."""
    return {"class_fractions": np.asarray(class_fractions(cfg), dtype=np.float64),
            "max_per_class": int(cfg["max_per_class"]), "min_per_class": int(cfg["min_per_class"]),
            "seed": int(cfg["seed"])}


class _Setup:
    """What every pass of the stage shares: the model, the data set, the sampler's settings."""

    def __init__(self, checkpoint, source: dict, cfg: dict, data: dict, runtime: dict, threads: int) -> None:
        self.device = setup_device(threads, runtime)
        self.mean, self.std = mean_std(data)
        self.fractions = class_fractions(cfg)
        self.cap, self.seed = int(cfg["max_per_class"]), int(cfg["seed"])
        self.min_per_class = int(cfg["min_per_class"])
        self.batch_size, self.flip = int(cfg["batch_size"]), bool(cfg["flip"])
        self.model = load_warmup(checkpoint, self.device)
        self.ds = open_spec(source, "source")
        if not getattr(self.ds, "has_labels", True):
            raise InputError(f"{source.get('root')}: source features need labelled source images")
        n = len(self.ds)
        self.total = n if cfg["max_images"] is None else min(n, int(cfg["max_images"]))
        self.same = {"checkpoint": os.path.basename(str(checkpoint)), "threads": int(threads)}

    def correct(self, items: list[dict]) -> tuple[dict[int, torch.Tensor], int]:
        """One batch's correct pixels per class, and the feature dimension."""
        feat, logits = forward(self.model, to_input(items, self.mean, self.std, self.device), self.flip)
        labels = torch.from_numpy(np.stack([it["label"] for it in items]))
        return correct_pixels(feat, logits, labels), int(feat.shape[1])

    def bounds(self) -> list[tuple[int, int]]:
        """One job's batches (iter_batches' grouping), from the image headers."""
        return batch_bounds([self.ds.image_shape(i) for i in range(self.total)], self.batch_size)

    def batches(self, bounds: Sequence[tuple[int, int]], which: range) -> Iterator[tuple[int, list[dict]]]:
        done, todo = 0, sum(int(bounds[b][1]) - int(bounds[b][0]) for b in which)
        for b in which:
            items = [self.ds[i] for i in range(int(bounds[b][0]), int(bounds[b][1]))]
            yield b, items
            done += len(items)
            self.progress(done, todo, len(items))

    def progress(self, done: int, todo: int, last: int) -> None:
        if done == todo or done % max(1, 10 * self.batch_size) < last:
            print(f"source_features: {done}/{todo} images", flush=True)


def run(*, checkpoint: str | os.PathLike, source: dict, out_h5: str | os.PathLike, cfg: dict, data: dict,
        runtime: dict, threads: int = 1) -> None:
    """Write `class_<c>` float32 [N_c, D] (all 19, maybe empty) to out_h5 (chunked, gzip, atomic)."""
    s = _Setup(checkpoint, source, cfg, data, runtime, threads)
    sampler: BankSampler | None = None
    dim, done = 0, 0
    for items in iter_batches(s.ds, s.batch_size, s.total):
        per_class, dim = s.correct(items)
        if sampler is None:
            sampler = BankSampler(s.fractions, s.cap, s.min_per_class, s.seed, dim)
        sampler.add(per_class)
        done += len(items)
        s.progress(done, s.total, len(items))
    if sampler is None:
        raise InputError(f"{source.get('root')}: no source images to take features from")
    write_banks(out_h5, sampler.banks(), dim=dim, images=s.total, attrs=bank_attrs(cfg))


# ----------------------------------------------------------------------------- sharded: two passes
def run_counts(*, checkpoint: str | os.PathLike, source: dict, cfg: dict, data: dict, runtime: dict,
               shard: int, shards: int, out_counts: str | os.PathLike, threads: int = 1) -> None:
    """Pass 1 of shard `shard`: the correct pixels per class of each of its batches."""
    s = _Setup(checkpoint, source, cfg, data, runtime, threads)
    bounds = s.bounds()
    which = feature_shards.shard_batches(len(bounds), shard, shards)
    counts, dim = [], None
    for _, items in s.batches(bounds, which):
        per_class, dim = s.correct(items)
        counts.append([0 if c not in per_class else int(per_class[c].shape[0]) for c in range(NUM_CLASSES)])
    feature_shards.write_counts(out_counts, shard=shard, shards=shards, bounds=bounds, batches=which,
                                counts=counts, feature_dim=dim, same=s.same)


def run_plan(*, counts: Sequence, cfg: dict, out_plan: str | os.PathLike) -> None:
    """The rows one job keeps, by id, from the shards' counts (no model, no images)."""
    bounds, per_batch, dim, same = feature_shards.read_counts(counts)
    banks, offsets = feature_shards.replay(per_batch, fractions=class_fractions(cfg), cap=int(cfg["max_per_class"]),
                                           min_per_class=int(cfg["min_per_class"]), seed=int(cfg["seed"]))
    feature_shards.write_plan(out_plan, bounds=bounds, counts=per_batch, offsets=offsets, banks=banks,
                              feature_dim=dim, images=int(bounds[-1][1]), same=same)
    print(f"source_features: plan of {len(bounds)} batches: "
          f"{sum(len(b.rows) for b in banks)} rows to keep", flush=True)


def run_shard(*, checkpoint: str | os.PathLike, source: dict, cfg: dict, data: dict, runtime: dict,
              plan: str | os.PathLike, shard: int, shards: int, out_rows: str | os.PathLike,
              threads: int = 1) -> None:
    """Pass 2 of shard `shard`: its batches again, keeping the planned rows."""
    s = _Setup(checkpoint, source, cfg, data, runtime, threads)
    p = feature_shards.read_plan(plan)
    bounds = s.bounds()
    if not np.array_equal(np.asarray(bounds, dtype=np.int64).reshape(-1, 2), p["bounds"]):
        raise InputError(f"{plan}: planned for other batches than the source now has (data changed?)")
    picked = []
    for b, items in s.batches(bounds, feature_shards.shard_batches(len(bounds), shard, shards)):
        per_class, _ = s.correct(items)
        picked.append(feature_shards.select(p, b, per_class, where=out_rows))
    feature_shards.write_rows(out_rows, shard=shard, shards=shards, picked=picked, feature_dim=int(p["feature_dim"]))


def gather(*, plan: str | os.PathLike, rows: Sequence, cfg: dict, out_h5: str | os.PathLike) -> None:
    """The shards' rows in one job's order, written as one job writes them."""
    p = feature_shards.read_plan(plan)
    banks = feature_shards.gather(p, rows, where=out_h5)
    write_banks(out_h5, banks, dim=int(p["feature_dim"]), images=int(p["images"]), attrs=bank_attrs(cfg))

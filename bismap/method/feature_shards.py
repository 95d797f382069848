"""The files that let the source feature stage run as shard jobs and still write one job's HDF5.

One job keeps a random sample of the correct pixels it streams past, and each draw depends on how
many rows came before it, so a shard cannot sample alone. The sharded stage takes two passes:

1. counts: each shard job counts, for each of its batches, the correct pixels of every class;
2. plan: one job replays the sampler (feature_banks.BankSampler) on row ids, from the counts alone:
   the same draws pick the ids of the rows one job keeps, in its slot order;
3. rows: each shard job runs its batches again and keeps the planned rows (with their ids);
4. gather: the rows go into the planned order and the banks are written as one job writes them.

Shards are contiguous blocks of one job's batches (the same images in the same batches, so the
same numbers); the rows pass checks that each batch has the counts the first pass saw.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from bismap.data.labels import NUM_CLASSES
from bismap.io import InputError, atomic_path, read_json, write_json
from bismap.method.feature_banks import Bank, BankSampler

COUNTS_FORMAT = "bismap-feature-counts/1"
PLAN_FORMAT = "bismap-feature-plan/1"
ROWS_FORMAT = "bismap-feature-rows/1"


def shard_batches(n_batches: int, shard: int, shards: int) -> range:
    """Batches [B * shard // shards, B * (shard + 1) // shards) of the B: the shard's contiguous block."""
    if not 0 <= int(shard) < int(shards):
        raise ValueError(f"shard {shard} of {shards}")
    return range(n_batches * int(shard) // int(shards), n_batches * (int(shard) + 1) // int(shards))


def write_counts(path, *, shard: int, shards: int, bounds: Sequence[tuple[int, int]], batches: range,
                 counts: Sequence[Sequence[int]], feature_dim: int | None, same: dict) -> None:
    """Per batch of the shard, the correct pixels of each class; `same`: what every shard must share."""
    write_json(path, {"format": COUNTS_FORMAT, "shard": int(shard), "shards": int(shards),
                      "batches": [batches.start, batches.stop], "bounds": [list(b) for b in bounds],
                      "counts": [[int(v) for v in row] for row in counts],
                      "feature_dim": feature_dim, "same": same})


def read_counts(paths: Sequence) -> tuple[np.ndarray, np.ndarray, int, dict]:
    """(bounds [B, 2], counts [B, 19], feature dim, shared record) of every shard's counts file, in order.
    Shards out of order, missing batches or from another shard count or batching are refused."""
    bounds = counts = None
    rows: list[list[int]] = []
    dims, same = set(), []
    for k, path in enumerate(paths):
        obj = read_json(path)
        if not isinstance(obj, dict) or obj.get("format") != COUNTS_FORMAT or obj.get("shard") != k \
                or obj.get("shards") != len(paths):
            raise InputError(f"{path}: not shard {k} of {len(paths)} of source_features ({COUNTS_FORMAT})")
        b = np.asarray(obj["bounds"], dtype=np.int64).reshape(-1, 2)
        if bounds is None:
            bounds = b
        elif not np.array_equal(b, bounds):
            raise InputError(f"{path}: other batches than shard 0's (another data set or batch size)")
        want = shard_batches(len(bounds), k, len(paths))
        if obj["batches"] != [want.start, want.stop] or len(obj["counts"]) != len(want):
            raise InputError(f"{path}: holds batches {obj['batches']}, shard {k} of {len(paths)} is "
                             f"[{want.start}, {want.stop})")
        rows.extend(obj["counts"])
        if obj["feature_dim"] is not None:
            dims.add(int(obj["feature_dim"]))
        same.append(obj["same"])
    if bounds is None or not len(bounds):
        raise InputError(f"{paths[0] if paths else 'source_features'}: no source images were counted")
    if len(dims) != 1:
        raise InputError(f"{paths[0]}: the shards saw feature dimensions {sorted(dims)}")
    if any(s != same[0] for s in same):
        raise InputError(f"{paths[0]}: the shards ran with other settings: {same}")
    counts = np.asarray(rows, dtype=np.int64).reshape(len(bounds), NUM_CLASSES)
    return bounds, counts, dims.pop(), same[0]


def replay(counts: np.ndarray, *, fractions: Sequence[float], cap: int, min_per_class: int,
           seed: int) -> tuple[list[Bank], np.ndarray]:
    """The banks one job keeps, as row ids (id = index among all correct pixels of the class, in
    stream order), and each batch's first id per class ([B, 19])."""
    sampler = BankSampler(fractions, cap, min_per_class, seed, dim=1, dtype=torch.int64)
    offsets = np.zeros_like(counts)
    start = np.zeros(NUM_CLASSES, dtype=np.int64)
    for b, row in enumerate(counts):
        offsets[b] = start
        sampler.add({c: torch.arange(start[c], start[c] + n, dtype=torch.int64)[:, None]
                     for c, n in enumerate(row.tolist()) if n})
        start += row
    return sampler.banks(), offsets


def write_plan(path, *, bounds: np.ndarray, counts: np.ndarray, offsets: np.ndarray, banks: Sequence[Bank],
               feature_dim: int, images: int, same: dict) -> None:
    arrays = {f"ids_{c}": bank.rows[:, 0].numpy() for c, bank in enumerate(banks)}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, format=np.array(PLAN_FORMAT), bounds=bounds, counts=counts, offsets=offsets,
                 seen=np.array([b.seen for b in banks], dtype=np.int64),
                 unthinned=np.array([b.unthinned for b in banks]),
                 thinned_rows=np.array([b.thinned_rows for b in banks], dtype=np.int64),
                 feature_dim=np.array(feature_dim), images=np.array(images), same=np.array(repr(same)), **arrays)


def read_plan(path) -> dict:
    """The plan's arrays, with each class's ids also sorted once (`sorted_<c>`, for select)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            plan = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: unreadable source feature plan ({e})") from None
    if str(plan.get("format")) != PLAN_FORMAT:
        raise InputError(f"{path}: not a {PLAN_FORMAT} file")
    for c in range(NUM_CLASSES):
        plan[f"sorted_{c}"] = np.sort(plan[f"ids_{c}"])
    return plan


def select(plan: dict, batch: int, per_class: dict[int, torch.Tensor], where) -> dict[int, tuple]:
    """The planned rows among one batch's correct pixels: {class: (ids, rows)}; a batch whose counts
    differ from the counting pass's is refused (the passes must see the same numbers)."""
    out = {}
    for c in range(NUM_CLASSES):
        rows = per_class.get(c)
        n = 0 if rows is None else rows.shape[0]
        if n != int(plan["counts"][batch, c]):
            raise InputError(f"{where}: batch {batch} has {n} correct pixels of class {c}, the counting pass "
                             f"saw {int(plan['counts'][batch, c])}: both passes must run on the same device "
                             "type, threads and data")
        if not n:
            continue
        lo = int(plan["offsets"][batch, c])
        ids = plan[f"sorted_{c}"]
        ids = ids[np.searchsorted(ids, lo): np.searchsorted(ids, lo + n)]
        if len(ids):
            out[c] = (ids, rows[torch.from_numpy(ids - lo).to(rows.device)].float().cpu().numpy())
    return out


def write_rows(path, *, shard: int, shards: int, picked: Sequence[dict[int, tuple]], feature_dim: int) -> None:
    """A shard's planned rows, class by class (uncompressed: a temporary file)."""
    import h5py

    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"], f.attrs["shard"], f.attrs["shards"] = ROWS_FORMAT, int(shard), int(shards)
            for c in range(NUM_CLASSES):
                parts = [p[c] for p in picked if c in p]
                ids = np.concatenate([i for i, _ in parts]) if parts else np.zeros(0, np.int64)
                rows = np.concatenate([r for _, r in parts]) if parts else np.zeros((0, feature_dim), np.float32)
                f.create_dataset(f"ids_{c}", data=ids.astype(np.int64))
                f.create_dataset(f"rows_{c}", data=rows.astype(np.float32).reshape(-1, feature_dim))


def gather(plan: dict, shard_files: Sequence, where) -> list[Bank]:
    """The banks in one job's slot order, from the shards' rows; a planned row no shard holds (or held
    twice) is refused."""
    import h5py

    files = []
    for k, path in enumerate(shard_files):
        f = h5py.File(path, "r")
        files.append(f)
        if f.attrs.get("format") != ROWS_FORMAT or int(f.attrs["shard"]) != k \
                or int(f.attrs["shards"]) != len(shard_files):
            raise InputError(f"{path}: not shard {k} of {len(shard_files)} of source_features ({ROWS_FORMAT})")
    try:
        banks = []
        for c in range(NUM_CLASSES):
            want = plan[f"ids_{c}"]
            ids = np.concatenate([f[f"ids_{c}"][()] for f in files])
            rows = np.concatenate([f[f"rows_{c}"][()] for f in files])
            order = np.argsort(ids, kind="stable")
            ids, rows = ids[order], rows[order]
            if not np.array_equal(ids, plan[f"sorted_{c}"]):
                raise InputError(f"{where}: the shards hold {len(ids)} rows of class {c}, the plan names "
                                 f"{len(want)} others (shards of another plan?)")
            in_slot_order = rows[np.searchsorted(ids, want)]
            banks.append(Bank(torch.from_numpy(in_slot_order), int(plan["seen"][c]), bool(plan["unthinned"][c]),
                              int(plan["thinned_rows"][c])))
        return banks
    finally:
        for f in files:
            f.close()

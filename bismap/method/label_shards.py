"""The files that let a label stage run as shard jobs and still write one job's folder and json.

A statistics file holds what a selection learns from every image before any label is final (the
prior alignment's logit offset, the per-class thresholds, the alignment's record); shard jobs read it
instead of passing over every image. A shard's counts file holds its quality counts (integers, so their
sum is exact) and what must be equal across shards. `join_shards` links the shard folders into the
stage's folder. Floats go through json as Python writes them (repr), which reads back to the same bits.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from bismap.evaluation.quality import QualityCounts
from bismap.io import InputError, atomic_dir, read_json, write_json
from bismap.method.labelling import check_coverage

STATISTICS_FORMAT = "bismap-label-statistics/1"
SHARD_FORMAT = "bismap-label-shard/1"


def write_statistics(path, *, stage: str, images: int, offset, class_thr: dict | None, record: dict,
                     threads: int) -> None:
    write_json(path, {"format": STATISTICS_FORMAT, "stage": stage, "images": int(images),
                      "prior_offset": None if offset is None else [float(v) for v in offset],
                      "class_thresholds": None if class_thr is None else
                      {str(c): float(t) for c, t in sorted(class_thr.items())},
                      "prior_alignment": record, "threads": int(threads)})


def read_statistics(path, stage: str) -> tuple[Any, dict[int, float] | None, dict]:
    """(offset tensor float64 or None, class thresholds or None, alignment record) of write_statistics."""
    import torch

    obj = read_json(path)
    if not isinstance(obj, dict) or obj.get("format") != STATISTICS_FORMAT or obj.get("stage") != stage:
        raise InputError(f"{path}: not a {STATISTICS_FORMAT} file of {stage}")
    offset = None if obj["prior_offset"] is None else torch.tensor(obj["prior_offset"], dtype=torch.float64)
    thr = None if obj["class_thresholds"] is None else {int(c): float(t) for c, t in obj["class_thresholds"].items()}
    return offset, thr, obj["prior_alignment"] or {}


def write_counts(path, *, stage: str, shard: int, shards: int, counts: QualityCounts, same: dict) -> None:
    """`same`: what every shard of the stage must share (the checkpoint, the thread count), for the json."""
    write_json(path, {"format": SHARD_FORMAT, "stage": stage, "shard": int(shard), "shards": int(shards),
                      "same": same, "counts": counts.to_json()})


def join_shards(shard_dirs: list, shard_counts: list, out_dir, *, stage: str,
                min_coverage: float) -> tuple[QualityCounts, dict]:
    """Link (or copy, across file systems) every shard's files into `out_dir`, atomically; returns the
    summed counts and the shards' shared record. Shards out of order, overlapping, from another shard
    count or labelled with other settings are refused before anything is written."""
    if len(shard_dirs) != len(shard_counts) or not shard_dirs:
        raise InputError(f"{out_dir}: {len(shard_dirs)} shard folders for {len(shard_counts)} count files")
    counts, same = QualityCounts(), []
    for k, path in enumerate(shard_counts):
        obj = read_json(path)
        if not isinstance(obj, dict) or obj.get("format") != SHARD_FORMAT or obj.get("stage") != stage \
                or obj.get("shard") != k or obj.get("shards") != len(shard_counts):
            raise InputError(f"{path}: not shard {k} of {len(shard_counts)} of {stage} ({SHARD_FORMAT})")
        counts.merge(QualityCounts.from_json(obj["counts"]))
        same.append(obj["same"])
    if any(s != same[0] for s in same):
        raise InputError(f"{out_dir}: the shards were labelled with other settings: {same}")
    seen: dict[str, Path] = {}
    with atomic_dir(out_dir) as tmp:
        for folder in map(Path, shard_dirs):
            for f in sorted(folder.iterdir()):
                if f.name.startswith("."):  # Snakemake's .snakemake_timestamp in a directory() output
                    continue
                if f.name in seen:
                    raise InputError(f"{f}: also in {seen[f.name]} (shards overlap)")
                seen[f.name] = folder
                try:
                    os.link(f, tmp / f.name)  # same file system: no copy
                except OSError:
                    shutil.copyfile(f, tmp / f.name)
        if len(seen) != counts.images:
            raise InputError(f"{out_dir}: the shard folders hold {len(seen)} files, their counts {counts.images}")
        check_coverage(counts.summary(), float(min_coverage), out_dir, stage)
    print(f"{stage}: joined {len(shard_dirs)} shards, {counts.images} images", flush=True)
    return counts, same[0]

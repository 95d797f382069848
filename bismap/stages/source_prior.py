"""Stage: the source label distribution (pixels per class), the target of prior alignment.

Counts every labelled pixel of the source label files at their own size (the images are not
read), over all source images or an evenly spaced `images` of them (the `source_prior` section).
"""
from __future__ import annotations

import os

import numpy as np

from bismap.data.labels import NUM_CLASSES
from bismap.engine.stage_setup import open_spec
from bismap.io import InputError, write_json
from bismap.method.prior_alignment import PRIOR_FORMAT


def run(*, source: dict, out_json: str | os.PathLike, cfg: dict) -> None:
    """Write {"format", "pixels": [19 counts], "prior": [19 shares], "images"} atomically."""
    ds = open_spec(source, "source")
    if not getattr(ds, "has_labels", False):
        raise InputError(f"{source.get('root')}: the source class prior needs labelled source images")
    limit = cfg["images"]
    n = len(ds) if limit is None else min(len(ds), int(limit))
    indices = np.linspace(0, len(ds) - 1, n).round().astype(int) if n < len(ds) else range(len(ds))
    pixels = np.zeros(NUM_CLASSES, dtype=np.int64)
    every = max(1, n // 10)
    for k, i in enumerate(indices):
        entry = ds.entries[int(i)]
        if entry.label is None:
            raise InputError(f"{source.get('root')}: source image {entry.file} has no label file")
        label = ds.label_reader(entry.label)
        pixels += np.bincount(label[label < NUM_CLASSES].ravel(), minlength=NUM_CLASSES)[:NUM_CLASSES]
        if (k + 1) % every == 0 or k + 1 == n:
            print(f"source_prior: {k + 1}/{n} label files", flush=True)
    if pixels.sum() == 0:
        raise InputError(f"{source.get('root')}: the source labels hold no pixel of the {NUM_CLASSES} classes")
    prior = pixels / pixels.sum()
    write_json(out_json, {"format": PRIOR_FORMAT, "pixels": pixels.tolist(), "prior": prior.tolist(), "images": n})

"""Stage: per-class mean prediction entropy of the warm-up model on the source (the STM class bonus).

The original adds a hard-coded, min-max normalised entropy per class to the STM weights so
hard classes keep weight near 1; it never says where the table came from. Here it is
measured: the mean softmax entropy (nats) of the upsampled logits over source pixels whose
ground truth is c. `mode: official_gta5 | official_synthia` writes the original tables.
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F

from bismap.data.labels import IGNORE_INDEX as IGNORE
from bismap.data.labels import NUM_CLASSES
from bismap.engine.inference import iter_batches, to_input
from bismap.engine.stage_setup import load_warmup, mean_std, open_spec, setup_device
from bismap.io import InputError, write_json

# H_c of the original's source_transferability_map.py (trainId order road..bicycle)
OFFICIAL = {
    "official_gta5": [0.1502, 0.2935, 0.1362, 0.4436, 0.4393, 0.2795, 0.3139, 0.3106, 0.1068, 0.3195, 0.0719,
                      0.2364, 0.4754, 0.0986, 0.3673, 0.4127, 0.4826, 0.5645, 0.6694],
    "official_synthia": [0.1039, 0.1333, 0.0960, 0.4322, 0.4646, 0.2801, 0.3994, 0.3480, 0.1437, 0.0, 0.1032,
                         0.2556, 0.4076, 0.1399, 0.0, 0.3501, 0.0, 0.5117, 0.4416],
}


def class_names() -> list[str]:
    from bismap.data.labels import CLASS_NAMES

    return list(CLASS_NAMES)


def minmax(values: dict[int, float]) -> dict[int, float]:
    """Min-max normalise over the given classes (all equal -> 0)."""
    if not values:
        return {}
    lo, hi = min(values.values()), max(values.values())
    return {c: (v - lo) / (hi - lo) if hi > lo else 0.0 for c, v in values.items()}


def entropy_sums(logits: torch.Tensor, labels: torch.Tensor, num_classes: int = NUM_CLASSES
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class (sum of pixel entropies, pixel count) for logits [B,C,h,w] upsampled to labels [B,H,W]."""
    up = F.interpolate(logits.float(), size=labels.shape[-2:], mode="bilinear", align_corners=True)
    logp = torch.log_softmax(up, 1)
    ent = -(logp.exp() * logp).sum(1).double()
    lab = labels.to(ent.device).long()
    valid = (lab != IGNORE) & (lab < num_classes)
    sums = torch.zeros(num_classes, dtype=torch.float64, device=ent.device)
    counts = torch.zeros(num_classes, dtype=torch.float64, device=ent.device)
    sums.index_add_(0, lab[valid], ent[valid])
    counts.index_add_(0, lab[valid], torch.ones_like(ent[valid]))
    return sums.cpu(), counts.cpu()


def table(mode: str, raw: dict[int, float], pixels: dict[int, int] | None, present: list[int]) -> dict:
    names = class_names()
    norm = minmax({c: raw[c] for c in present})
    return {
        "mode": mode,
        "entropy": {names[c]: (raw[c] if c in present else None) for c in range(NUM_CLASSES)},
        "normalised": {names[c]: norm.get(c, 0.0) for c in range(NUM_CLASSES)},
        "pixels": None if pixels is None else {names[c]: int(pixels.get(c, 0)) for c in range(NUM_CLASSES)},
        "absent": [names[c] for c in range(NUM_CLASSES) if c not in present],
    }


def run(*, checkpoint: str | os.PathLike, source: dict, out_json: str | os.PathLike, cfg: dict,
        data: dict, runtime: dict, threads: int = 1) -> None:
    """Write {"mode", "entropy": {name: nats|null}, "normalised": {name: [0,1]}, "pixels", "absent"}."""
    mode = str(cfg["mode"])
    if mode in OFFICIAL:
        # the original normalises over all 19 entries (SYNTHIA's missing classes count as 0)
        raw = dict(enumerate(OFFICIAL[mode]))
        write_json(out_json, table(mode, raw, None, list(range(NUM_CLASSES))))
        print(f"class_entropy: wrote the original's {mode} table", flush=True)
        return
    if mode != "data":
        raise InputError(f"config: class_entropy.mode must be data, official_gta5 or official_synthia, got {mode!r}")
    device = setup_device(threads, runtime)
    mean, std = mean_std(data)
    model = load_warmup(checkpoint, device)
    ds = open_spec(source, "source")
    if not getattr(ds, "has_labels", True):
        raise InputError(f"{source.get('root')}: class entropy needs labelled source images")
    max_images = cfg["max_images"]
    total = len(ds) if max_images is None else min(len(ds), int(max_images))
    sums = torch.zeros(NUM_CLASSES, dtype=torch.float64)
    counts = torch.zeros(NUM_CLASSES, dtype=torch.float64)
    done = 0
    with torch.no_grad():
        for items in iter_batches(ds, int(cfg["batch_size"]), max_images):
            _, logits = model(to_input(items, mean, std, device))
            s, n = entropy_sums(logits, torch.from_numpy(np.stack([it["label"] for it in items])))
            sums += s
            counts += n
            done += len(items)
            print(f"class_entropy: {done}/{total} images", flush=True)
    present = [c for c in range(NUM_CLASSES) if counts[c] > 0]
    raw = {c: float(sums[c] / counts[c]) for c in present}
    out = table(mode, raw, {c: int(counts[c]) for c in range(NUM_CLASSES)}, present)
    if out["absent"]:
        print(f"class_entropy: classes absent from the source (normalised value 0): {out['absent']}", flush=True)
    write_json(out_json, out)

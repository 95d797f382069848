"""Stage: banks of decoder features of confidently predicted TARGET pixels (an extension of the paper).

The paper fits the MAPs on source features alone, and on the embedded benchmark those label target
pixels less accurately than the network they are meant to correct (docs/differences.md). GMMs fitted on
the warm-up's own confident target pixels describe the target's features instead. This stage writes
such a bank in source_features' HDF5 layout, so that fit_prototypes fits the MAPs on the target
(`prototypes.fit_on: target`) or on both domains (`both`).

A stride-4 pixel joins class c's bank when the warm-up, with the pseudo labels' AdaBN statistics (so
the features are the ones pseudo_labels scores), predicts c with a softmax of at least `threshold`.
No thinning; each class is a uniform reservoir of at most `max_per_class` rows (method.feature_banks).
The logits are read without prior alignment: the bank only needs pixels the network is sure of.
"""
from __future__ import annotations

import os

from bismap.engine.inference import forward, iter_batches, to_input
from bismap.engine.stage_setup import mean_std, open_spec, setup_device
from bismap.io import InputError
from bismap.method.feature_banks import BankSampler, confident_pixels, write_banks
from bismap.method.labelling import prepare_model

STAGE = "target_features"


def run(*, checkpoint: str | os.PathLike, target: dict, out_h5: str | os.PathLike, cfg: dict, adabn: dict,
        data: dict, runtime: dict, threads: int = 1) -> None:
    """Write `class_<c>` float32 [N_c, D] (all 19, maybe empty) of the target's confident pixels to out_h5.

    `adabn` is `pseudo_labels.adabn`: the statistics the pseudo labels' features are computed with."""
    device = setup_device(threads, runtime)
    mean, std = mean_std(data)
    ds = open_spec(target, "target")
    total = len(ds) if cfg["max_images"] is None else min(len(ds), int(cfg["max_images"]))
    model = prepare_model(checkpoint, ds, {"adabn": adabn}, data, device, STAGE)
    threshold, batch_size = float(cfg["threshold"]), int(cfg["batch_size"])
    sampler: BankSampler | None = None
    dim, done = 0, 0
    for items in iter_batches(ds, batch_size, total):
        feat, logits = forward(model, to_input(items, mean, std, device), bool(cfg["flip"]))
        dim = int(feat.shape[1])
        if sampler is None:
            sampler = BankSampler([1.0] * len(logits[0]), int(cfg["max_per_class"]), 0, int(cfg["seed"]), dim)
        sampler.add(confident_pixels(feat, logits, threshold))
        done += len(items)
        if done == total or done % max(1, 10 * batch_size) < len(items):
            print(f"{STAGE}: {done}/{total} images", flush=True)
    if sampler is None:
        raise InputError(f"{target.get('root')}: no target images to take features from")
    banks = sampler.banks()
    if not any(len(b.rows) for b in banks):
        raise InputError(f"{target.get('root')}: no target pixel is predicted with softmax >= {threshold} "
                         f"(target_features.threshold); lower it or use prototypes.fit_on: source")
    write_banks(out_h5, banks, dim=dim, images=total, stage=STAGE,
                attrs={"threshold": threshold, "max_per_class": int(cfg["max_per_class"]), "seed": int(cfg["seed"])})

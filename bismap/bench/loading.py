"""Data loading: images/s of the readers with the training augmentation, against the step's consumption.

Synthetic scenes at config.yaml's size are written as PNGs, then read back by
`SegmentationFolder` through `TrainingView` with config.yaml's augmentation (scale, crop,
flip, colour jitter) and, for the target, the strong view (RandAugment + cutout), in one
process (one DataLoader worker's work). Consumption: the self-training iteration takes
batch source + batch target images; its s/iteration comes from the training part of the same
run (fp32 self-training iteration; without that part there is no ratio).
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from bismap.bench.common import default_config, table


def _write_images(root: Path, n: int, cfg: dict) -> list:
    from PIL import Image

    from bismap.data import synthetic
    from bismap.data.labels import save_label_png
    from bismap.data.readers import Entry

    scfg = {k: v for k, v in cfg["synthetic"].items() if k != "enabled"}
    entries = []
    for i in range(n):
        img, lab = synthetic.generate(scfg, "source", i)
        Image.fromarray(img).save(root / f"{i:04d}.png")
        save_label_png(root / f"{i:04d}_label.png", lab)
        entries.append(Entry(f"{i:04d}", f"{i:04d}.png", root / f"{i:04d}.png", root / f"{i:04d}_label.png"))
    return entries


def view_rates(ds, cfg: dict) -> list[dict[str, Any]]:
    """images/s of one process through the weak (source) and weak + strong (target) training views."""
    from bismap.data.training_view import TrainingView

    mean, std = cfg["data"]["normalize"]["mean"], cfg["data"]["normalize"]["std"]
    rows = []
    for view, strong in (("weak (source)", None), ("weak + strong (target)", cfg["self_training"]["strong"])):
        tv = TrainingView(ds, cfg["augment"], mean, std, strong=strong, seed=0)
        t0 = time.perf_counter()
        for i in range(len(tv)):
            tv[i]
        rows.append({"view": view, "images_s": len(tv) / (time.perf_counter() - t0)})
    return rows


def run(n_images: int = 32, step_s_per_it: float | None = None, batch: int | None = None) -> dict[str, Any]:
    from bismap.data.labels import read_trainid_png
    from bismap.data.readers import SegmentationFolder

    cfg = default_config()
    batch = int(batch or cfg["train"]["batch_size"])
    with tempfile.TemporaryDirectory() as tmp:
        ds = SegmentationFolder(_write_images(Path(tmp), n_images, cfg), read_trainid_png)
        for i in range(len(ds)):  # warm the file cache: reading, not the disk, is measured
            ds[i]
        rows = view_rates(ds, cfg)
    src, tgt = rows[0]["images_s"], rows[1]["images_s"]
    per_it = batch / src + batch / tgt  # seconds of one process to read one iteration's 2 batches
    out = {"rows": rows, "batch": batch, "size": [cfg["synthetic"]["height"], cfg["synthetic"]["width"]],
           "read_s_per_it": per_it, "step_s_per_it": step_s_per_it}
    if step_s_per_it:
        out["reader_vs_step"] = step_s_per_it / per_it
    print(f"bench loading: {src:.0f} / {tgt:.0f} images/s (weak / strong), one iteration's batches "
          f"{per_it * 1000:.1f} ms" + (f" against a {step_s_per_it:.3f} s step" if step_s_per_it else ""), flush=True)
    return out


def markdown(res: dict) -> str:
    s = (__doc__.split("\n\n", 1)[1].strip() + f"\n\nImages {res['size'][0]}x{res['size'][1]}, batch {res['batch']} "
         "+ " + str(res["batch"]) + ".\n\n" + table(res["rows"], [("view", "reader + augmentation"),
                                                                  ("images_s", "images/s (1 process)")]))
    s += f"\n\nReading one iteration's batches takes {res['read_s_per_it'] * 1000:.1f} ms in one process"
    if res.get("step_s_per_it"):
        s += (f"; the self-training step takes {res['step_s_per_it']:.3f} s, so one reader process supplies "
              f"{res['reader_vs_step']:.1f}x what the step consumes.")
    else:
        s += " (the training part was not run: no step time to compare with)."
    return s

"""Preflight: how long reading every file of a GTA5-layout set takes, against the paper's training.

Synthetic scenes (config.yaml's generator) are written in the GTA5 layout at each size, then the
preflight stage's own `check_dataset` reads every image and label with a thread pool, as the rule
does. Reference: the paper warm-up's image consumption (iterations x batch of configs/gta5.yaml),
so the last column says how many training iterations' worth of images the preflight reads in the
time it takes; the time the paper datasets would take is extrapolated per image at the largest size.
"""
from __future__ import annotations

import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bismap.bench.common import REPO, default_config, table

# The paper's splits (GTA5 + Cityscapes train + val), for the extrapolation.
PAPER_IMAGES = 24_966 + 2_975 + 500


def run(n_images: int, sizes: list[tuple[int, int]], threads: int = 1) -> dict[str, Any]:
    import yaml

    from bismap.data.synthetic import write_benchmark
    from bismap.stages.preflight import check_dataset

    rows = []
    for h, w in sizes:
        cfg = {**default_config()["synthetic"], "height": h, "width": w, "n_source": n_images,
               "n_target_train": 1, "n_target_val": 1, "workers": max(1, threads)}
        cfg.pop("enabled", None)
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "source"
            write_benchmark(str(src), str(Path(tmp) / "target"), cfg)
            spec = {"dataset": "gta5", "root": str(src), "size": [h, w]}
            with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
                t0 = time.perf_counter()
                result = check_dataset("source", spec, pool)
                seconds = time.perf_counter() - t0
        rows.append({"size": f"{h}x{w}", "images": result["images"], "threads": threads, "seconds": seconds,
                     "images_s": result["images"] / seconds, "problems": len(result["problems"])})
    paper = yaml.safe_load((REPO / "configs" / "gta5.yaml").read_text())
    warmup_images = int(paper["train"]["iterations"]) * int(paper["train"]["batch_size"])
    return {"rows": rows, "paper_images": PAPER_IMAGES, "warmup_images": warmup_images}


def markdown(r: dict[str, Any]) -> str:
    last = r["rows"][-1]
    est = r["paper_images"] / last["images_s"]
    text = [table(r["rows"], [("size", "image"), ("images", "images"), ("threads", "threads"),
                              ("seconds", "s"), ("images_s", "images/s"), ("problems", "problems")]), "",
            f"At {last['size']} with {last['threads']} thread(s) the paper's {r['paper_images']} images "
            f"(GTA5 + Cityscapes train + val) would take about {est / 60:.1f} min. Reading each once is "
            f"{r['paper_images'] / r['warmup_images']:.1%} of the reading the paper warm-up alone does "
            f"({r['warmup_images']} images: iterations x batch), before any of its compute; larger images "
            "scale both alike."]
    return "\n".join(text) + "\n"

"""One image per (seed, domain, index), and the benchmark written in GTA5 / Cityscapes layout."""
from __future__ import annotations

from typing import Any

import numpy as np

from bismap.data.labels import CLASS_NAMES, IGNORE_INDEX, TRAINID_TO_ID
from bismap.data.synthetic.appearance import domain_style, render
from bismap.data.synthetic.config import DOMAINS, EGO_VEHICLE_ID, resolve_config
from bismap.data.synthetic.scene import make_scene
from bismap.data.synthetic.suburb import make_suburb_scene


def generate(cfg: dict[str, Any], domain: str, index: int, style: dict[str, Any] | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """One image of `domain` ("source"|"train"|"val"): (uint8 RGB [H,W,3], uint8 trainIds [H,W], 255 void).

    The RNG depends only on (seed, domain, index): the same image comes out in any worker.
    """
    cfg = resolve_config(cfg)
    style = style or domain_style(cfg)
    target = domain != "source"
    rng = np.random.default_rng(np.random.SeedSequence([int(cfg["seed"]), DOMAINS[domain], int(index)]))
    h, w = int(cfg["height"]), int(cfg["width"])
    make = make_suburb_scene if cfg["preset"] == "suburb" else make_scene
    label, image, info = make(rng, h, w, style["target" if target else "source"], cfg, target)
    img = render(rng, label, image, cfg, target, info[0][2])
    return img, label


_ID_LUT = np.zeros(256, dtype=np.uint8)
for _t, _i in TRAINID_TO_ID.items():
    _ID_LUT[_t] = _i


def trainids_to_ids(label: np.ndarray, void_id: int = EGO_VEHICLE_ID) -> np.ndarray:
    """Synthetic trainIds -> Cityscapes label ids (the files use ids, like GTA5 and gtFine)."""
    lut = _ID_LUT.copy()
    lut[IGNORE_INDEX] = void_id
    return lut[label]




def _file_names(cfg: dict[str, Any], domain: str, index: int) -> tuple[str, str, str]:
    """(image relative path, label relative path, name) in GTA5 / Cityscapes layout."""
    if domain == "source":
        stem = f"{index + 1:05d}"
        return f"images/{stem}.png", f"labels/{stem}.png", stem
    cities = cfg["train_cities"] if domain == "train" else cfg["val_cities"]
    city = cities[index % len(cities)]
    seq = index // len(cities)
    prefix = f"{city}_{seq:06d}_{19:06d}"
    return (f"leftImg8bit/{domain}/{city}/{prefix}_leftImg8bit.png",
            f"gtFine/{domain}/{city}/{prefix}_gtFine_labelIds.png", prefix)


def _write_one(task: tuple[dict[str, Any], str, int, str]) -> None:
    from pathlib import Path

    from PIL import Image

    from bismap.data.labels import ID_PNG_PALETTE

    cfg, domain, index, root = task
    img, label = generate(cfg, domain, index)
    ids = trainids_to_ids(label)
    img_rel, lab_rel, _ = _file_names(cfg, domain, index)
    level = int(cfg["compress_level"])
    ip, lp = Path(root) / img_rel, Path(root) / lab_rel
    ip.parent.mkdir(parents=True, exist_ok=True)
    lp.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(ip, format="PNG", compress_level=level)
    lim = Image.frombytes("P", (ids.shape[1], ids.shape[0]), ids.tobytes())
    lim.putpalette(ID_PNG_PALETTE)
    lim.save(lp, format="PNG", compress_level=level)


def _run_tasks(tasks: list[tuple[dict[str, Any], str, int, str]], workers: int) -> None:
    import multiprocessing as mp
    import time

    t0 = time.perf_counter()
    done = 0
    step = max(1, len(tasks) // 10)
    if workers <= 1 or len(tasks) < 2:
        iterator = map(_write_one, tasks)
        for _ in iterator:
            done += 1
            if done % step == 0:
                print(f"synthetic: {done}/{len(tasks)} images ({time.perf_counter() - t0:.1f}s)", flush=True)
        return
    ctx = mp.get_context("spawn" if "fork" not in mp.get_all_start_methods() else "fork")
    with ctx.Pool(workers) as pool:
        for _ in pool.imap_unordered(_write_one, tasks, chunksize=8):
            done += 1
            if done % step == 0:
                print(f"synthetic: {done}/{len(tasks)} images ({time.perf_counter() - t0:.1f}s)", flush=True)


def write_benchmark(source_dir: str, target_dir: str, cfg: dict[str, Any] | None) -> dict[str, Any]:
    """Write the source (GTA5 layout) and target (Cityscapes layout, train + val) folders atomically.

    Returns the resolved config. Each folder also gets `synthetic.json` (resolved config + palettes)
    so a generated benchmark documents itself.
    """
    import json
    from pathlib import Path

    from bismap.io import atomic_dir

    cfg = resolve_config(cfg)
    style = domain_style(cfg)
    meta = {"config": cfg, "class_names": list(CLASS_NAMES),
            "palette_source": style["source"]["palette"].round(1).tolist(),
            "palette_target": style["target"]["palette"].round(1).tolist(),
            "rates_target": style["target"]["rates"]}
    workers = int(cfg["workers"])
    with atomic_dir(source_dir) as src_tmp, atomic_dir(target_dir) as tgt_tmp:
        tasks = [(cfg, "source", i, str(src_tmp)) for i in range(int(cfg["n_source"]))]
        tasks += [(cfg, "train", i, str(tgt_tmp)) for i in range(int(cfg["n_target_train"]))]
        tasks += [(cfg, "val", i, str(tgt_tmp)) for i in range(int(cfg["n_target_val"]))]
        for sub in ("images", "labels"):
            (Path(src_tmp) / sub).mkdir(parents=True, exist_ok=True)
        _run_tasks(tasks, workers)
        for root, role in ((src_tmp, "source (GTA5 layout)"), (tgt_tmp, "target (Cityscapes layout)")):
            (Path(root) / "synthetic.json").write_text(json.dumps({"role": role, **meta}, indent=1) + "\n")
    print(f"synthetic: wrote {cfg['n_source']} source images to {source_dir}, "
          f"{cfg['n_target_train']}+{cfg['n_target_val']} target images to {target_dir}", flush=True)
    return cfg

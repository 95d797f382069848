"""What a node needs for the paper setting: training compute per iteration, label stages at full resolution,
and the data loading a training step asks for.

Training (configs/gta5.yaml's model, crop and batch; configs/synthia.yaml shares them): one training
forward + backward of a batch of crops and one frozen (no-grad) forward are timed (median) and
counted (torch.utils.flop_counter: convolutions and matmuls); a stage's iteration is its training
forwards and frozen forwards (bench.memory.stages: warm-up 1 + 0, self-training 3 + 1 with the
consistency term, distillation 2 + 1 with a teacher). The trainer's own overhead beyond model compute
is the `training` part's figure (embedded setting). Label stages: the stage functions themselves
(bismap.stages), on images the bench writes at the real sizes in the GTA5 / Cityscapes layouts, with
a randomly initialised paper model and GMMs fitted on random features (the times do not depend on the
weights), every other value the config's: seconds per image after the first (which also loads the
model). Loading: one process reading and augmenting real-size images as the training views do (weak
source; weak + strong target), and the DataLoader workers a step of a given length needs so that it
never waits: ceil(reading one iteration's batches / step time).
"""
from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bismap.bench.common import median_time, table

SIZES = {"source": (1052, 1914), "target": (1024, 2048)}  # GTA5 and Cityscapes, HxW
STEP_S = (0.25, 0.5, 1.0)  # GPU step lengths (s) whose loader needs the table shows; not measurements


def _model_compute(model_cfg: dict, batch: int, crop: tuple[int, int], iters: int) -> dict[str, float]:
    from torch.utils.flop_counter import FlopCounterMode

    from bismap.models import build_model

    torch.manual_seed(0)
    model = build_model({**model_cfg, "weights": "none"}).train()
    x = torch.randn(batch, 3, *crop)

    def fb():
        _, logits = model(x)
        logits.float().mean().backward()

    def f():
        with torch.no_grad():
            model(x)

    with FlopCounterMode(display=False) as fc:
        fb()
    flops_fb = float(fc.get_total_flops())
    with FlopCounterMode(display=False) as fc:
        f()
    flops_f = float(fc.get_total_flops())
    return {"fb_s": median_time(fb, iters, warmup=0), "f_s": median_time(f, iters, warmup=0),
            "flops_fb": flops_fb, "flops_f": flops_f}


def training(cfg: dict, iters: int) -> list[dict[str, Any]]:
    from bismap.bench.memory import stages

    batch = int(cfg["train"]["batch_size"])
    crop = tuple(int(v) for v in cfg["augment"]["crop"])
    cache: dict[str, dict[str, float]] = {}
    rows = []
    for stage, model, forwards, frozen in stages(cfg):
        key = repr(sorted(model.items()))
        if key not in cache:
            cache[key] = _model_compute(model, batch, crop, iters)
            print(f"bench paper: {model['backbone']}: forward+backward {cache[key]['fb_s']:.2f} s, "
                  f"forward {cache[key]['f_s']:.2f} s", flush=True)
        mc = cache[key]
        # frozen copies are the trained network's architecture (EMA teacher) or the config's model
        f_s = sum(cache.get(repr(sorted(m.items())), mc)["f_s"] for m in frozen)
        f_flops = sum(cache.get(repr(sorted(m.items())), mc)["flops_f"] for m in frozen)
        s_it = forwards * mc["fb_s"] + f_s
        flops = forwards * mc["flops_fb"] + f_flops
        rows.append({"stage": stage, "backbone": model["backbone"], "forwards": f"{forwards} + {len(frozen)}",
                     "s_per_it": s_it, "tflops_it": flops / 1e12, "gflops_s": flops / s_it / 1e9,
                     "iterations": int(cfg["train_overrides"].get(stage, {}).get("iterations")
                                       or cfg["train"]["iterations"])})
        rows[-1]["hours"] = rows[-1]["iterations"] * s_it / 3600
    return rows


def _write_data(root: Path, n: int, sizes: dict[str, tuple[int, int]]) -> tuple[dict, dict]:
    """n source images at the source size and n + n target images at the target size."""
    from bismap.data.synthetic.writer import write_benchmark

    for role, (h, w) in sizes.items():
        counts = {"n_source": n if role == "source" else 0, "n_target_train": 0 if role == "source" else n,
                  "n_target_val": 0 if role == "source" else n}
        write_benchmark(str(root / f"{role}_src"), str(root / f"{role}_tgt"),
                        {"height": h, "width": w, "workers": 1, **counts})
    return {"dataset": "gta5", "root": str(root / "source_src"), "size": None}, \
        {"dataset": "cityscapes", "root": str(root / "target_tgt"), "size": None}


def _checkpoint(path: Path, model_cfg: dict) -> Path:
    from bismap.engine.checkpoint import FORMAT, save_checkpoint
    from bismap.models import build_model

    torch.manual_seed(1)
    cfg = {**model_cfg, "weights": "none"}
    save_checkpoint(path, {"format": FORMAT, "model_config": cfg, "model": build_model(cfg).state_dict(),
                           "ema": None, "iteration": 0})
    return path


def _prototypes(root: Path, cfg: dict, dim: int) -> Path:
    """GMMs of the config's components fitted (by the stage) on random features of every class."""
    import h5py
    import numpy as np

    from bismap.stages import fit_prototypes

    rng = np.random.default_rng(0)
    with h5py.File(root / "features.h5", "w") as f:
        f.attrs["feature_dim"] = dim
        for c in range(19):
            f.create_dataset(f"class_{c}", data=(rng.normal(size=(2000, dim)) + c).astype(np.float32))
    fit_prototypes.run(features_h5=root / "features.h5", out_path=root / "gmm.pt",
                       cfg={**cfg["prototypes"], "device": "cpu"})
    return root / "gmm.pt"


def label_stages(cfg: dict, images: int, sizes: dict[str, tuple[int, int]], threads: int) -> list[dict[str, Any]]:
    from bismap.stages import evaluate, pseudo_labels, source_features, teacher_labels

    runtime = {**cfg["runtime"], "device": "cpu", "workers": 0}
    data = cfg["data"]["normalize"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        specs = {n: _write_data(root / str(n), n, sizes) for n in (1, images + 1)}
        source = {n: s for n, (s, _) in specs.items()}
        train = {n: {**t, "split": "train", "labels": "none"} for n, (_, t) in specs.items()}
        val = {n: {**t, "split": "val"} for n, (_, t) in specs.items()}
        ckpt = _checkpoint(root / "model.pt", cfg["model"])
        gmm = _prototypes(root, cfg, int(cfg["model"]["decoder_channels"]))
        jobs = {
            "source_features": (sizes["source"], lambda n: source_features.run(
                checkpoint=ckpt, source=source[n], out_h5=root / f"f{n}.h5",
                cfg={**cfg["source_features"], "batch_size": 1}, data=data, runtime=runtime,
                threads=threads)),
            "pseudo_labels": (sizes["target"], lambda n: pseudo_labels.run(
                checkpoint=ckpt, prototypes=gmm, target=train[n], target_gt=None, out_dir=root / f"p{n}",
                out_quality=root / f"p{n}.json", cfg={**cfg["pseudo_labels"], "align_prior": False}, data=data,
                runtime={**runtime, "min_label_coverage": 0.0}, threads=threads)),
            "teacher_labels": (sizes["target"], lambda n: teacher_labels.run(
                checkpoint=ckpt, target=train[n], target_gt=None, out_dir=root / f"t{n}",
                out_quality=root / f"t{n}.json", cfg={**cfg["teacher_labels"], "align_prior": False}, data=data,
                runtime={**runtime, "min_label_coverage": 0.0}, threads=threads)),
            "evaluate": (sizes["target"], lambda n: evaluate.run(
                checkpoint=ckpt, target=val[n], out_json=root / f"e{n}.json",
                out_confusion_csv=root / f"e{n}.csv", cfg=cfg["evaluation"], data=data, runtime=runtime,
                threads=threads)),
        }
        for stage, (size, job) in jobs.items():
            t0 = time.perf_counter()
            job(1)
            first = time.perf_counter() - t0
            t0 = time.perf_counter()
            job(images + 1)
            per_image = max(time.perf_counter() - t0 - first, 1e-6) / images  # the setup cancels out
            rows.append({"stage": stage, "size": f"{size[0]}x{size[1]}", "s_per_image": per_image,
                         "images_s": 1 / per_image if per_image > 0 else float("inf"), "first_s": first})
            print(f"bench paper: {stage}: {per_image:.2f} s per image after the first ({first:.1f} s)", flush=True)
    return rows


def loading(cfg: dict, images: int, size: tuple[int, int]) -> dict[str, Any]:
    from bismap.bench.loading import view_rates
    from bismap.data import open_dataset
    from bismap.data.synthetic.writer import write_benchmark

    batch = int(cfg["train"]["batch_size"])
    with tempfile.TemporaryDirectory() as tmp:
        write_benchmark(f"{tmp}/src", f"{tmp}/tgt", {"height": size[0], "width": size[1], "n_source": images,
                                                     "n_target_train": 0, "n_target_val": 0, "workers": 1})
        ds = open_dataset({"dataset": "gta5", "root": f"{tmp}/src", "size": None})
        for i in range(len(ds)):  # warm the file cache: reading, not the disk, is measured
            ds[i]
        rows = view_rates(ds, cfg)
    read_s = batch / rows[0]["images_s"] + batch / rows[1]["images_s"]
    return {"rows": rows, "read_s_per_it": read_s, "batch": batch, "size": list(size)}


def run(config_file: str = "configs/gta5.yaml", *, iters: int = 2, images: int = 1, load_images: int = 8,
        sizes: dict[str, tuple[int, int]] | None = None, overrides: dict | None = None) -> dict[str, Any]:
    """`sizes` and `overrides` (config sections merged over the config's) shrink the setting for the
    suite's own test; the defaults are the paper's."""
    from bismap.bench.memory import merged_config

    cfg = merged_config(config_file)
    for section, values in (overrides or {}).items():
        cfg[section] = {**cfg[section], **values}
    sizes = sizes or SIZES
    threads = torch.get_num_threads()  # every part at the machine's threads (the stages' default is 1)
    train_rows = training(cfg, iters)
    label_rows = label_stages(cfg, images, sizes, threads)
    load = loading(cfg, load_images, sizes["source"])
    step = next(r["s_per_it"] for r in train_rows if r["stage"] == "self_training")
    load["workers"] = [{"step": f"{s:.2f} s" + (" (this machine, measured)" if s == step else ""),
                        "workers": max(1, math.ceil(load["read_s_per_it"] / s))} for s in (step, *STEP_S)]
    return {"config": config_file, "threads": threads, "batch": int(cfg["train"]["batch_size"]),
            "crop": list(cfg["augment"]["crop"]), "training": train_rows, "labels": label_rows, "loading": load,
            "sizes": {k: list(v) for k, v in sizes.items()}}


def markdown(res: dict[str, Any]) -> str:
    head = __doc__.split("\n\n", 1)[1].strip()
    tr = [{**r, "s_per_it": f"{r['s_per_it']:.3g}", "tflops_it": f"{r['tflops_it']:.3g}",
           "gflops_s": f"{r['gflops_s']:.0f}", "hours": f"{r['hours']:.0f}"} for r in res["training"]]
    s = (f"{head}\n\n`{res['config']}`, {res['batch']} + {res['batch']} crops of {res['crop'][0]}x{res['crop'][1]}, "
         f"{res['threads']} threads (CPU, fp32).\n\n" + table(tr, [
             ("stage", "training stage"), ("backbone", "backbone"), ("forwards", "training + frozen forwards"),
             ("s_per_it", "s/iteration"), ("tflops_it", "TFLOPs/iteration"), ("gflops_s", "GFLOP/s"),
             ("iterations", "iterations"), ("hours", "hours at this rate")]))
    lr = [{**r, "s_per_image": f"{r['s_per_image']:.1f}", "images_s": f"{r['images_s']:.3f}",
           "first_s": f"{r['first_s']:.0f}"} for r in res["labels"]]
    s += f"\n\nLabel stages at full resolution, {res['threads']} threads:\n\n" + table(lr, [
        ("stage", "stage"), ("size", "image"), ("s_per_image", "s/image"), ("images_s", "images/s"),
        ("first_s", "first image incl. setup, s")])
    ld = res["loading"]
    s += (f"\n\nLoading {ld['size'][0]}x{ld['size'][1]} images, one process:\n\n"
          + table(ld["rows"], [("view", "reader + augmentation"), ("images_s", "images/s per worker")])
          + f"\n\nOne iteration's {ld['batch']} + {ld['batch']} images take {ld['read_s_per_it']:.2f} s to read; "
          "DataLoader workers (`runtime.workers`) a step needs so that it never waits:\n\n"
          + table(ld["workers"], [("step", "step time"), ("workers", "workers")]))
    return s

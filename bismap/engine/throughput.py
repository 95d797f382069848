"""Training throughput and peak memory of the self-training step, for docs/internals.md.

Not a test. Runs bismap.engine.trainer.fit (optimizer, schedule, EMA, AMP exactly as the stages
use them) on in-memory random crops with the self-training step's shape: student forward +
backward on the source batch and on the weak target batch, an EMA teacher forward on the weak
view, a student forward on the strong view, CE + CE + KL. Prints iterations/s measured over
`--iters` iterations after `--warmup` iterations, and the peak memory.

  python -m bismap.engine.throughput --setting embedded --device cpu --iters 5
  python -m bismap.engine.throughput --setting paper --device cpu --iters 2 --warmup 1
  python -m bismap.engine.throughput --setting paper --device cuda --iters 30
"""
from __future__ import annotations

import argparse
import contextlib
import json
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bismap.engine import device as dev
from bismap.engine import stream, trainer

REPO = Path(__file__).resolve().parents[2]


def config_model(config_file: str, **overrides: Any) -> dict[str, Any]:
    """The complete `model` slice of a config file of the repository (build_model takes nothing less)."""
    import yaml

    return {**yaml.safe_load((REPO / config_file).read_text())["model"], **overrides}


SETTINGS = {
    # DeepLabV3+ R101 OS16 of configs/gta5.yaml (no pretrained weights), 4 source + 4 target crops of
    # 512x896 (the original's gta5_st.yml)
    "paper": {"model": config_model("configs/gta5.yaml", weights="none"), "crop": (512, 896), "batch": 4},
    # config.yaml's embedded default: its ResNet-18 DeepLabV3+, 64x128 crops
    "embedded": {"model": config_model("config.yaml"), "crop": (64, 128), "batch": 4},
}


class RandomCrops(torch.utils.data.Dataset):
    """A few fixed random crops (data loading is not what is measured)."""

    def __init__(self, n: int, crop: tuple[int, int], classes: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, *crop, generator=g)
        self.labels = torch.randint(0, classes, (n, *crop), generator=g)
        self.keep = torch.rand(n, *crop, generator=g) > 0.05

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "strong": self.images[i].flip(-1), "label": self.labels[i],
                "keep": self.keep[i]}


def self_training_loss(times: list, device: torch.device):
    def up(logits, size):
        return F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=True)

    def loss_fn(ctx):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter())
        src, tgt = ctx.batches["source"], ctx.batches["target"]
        size = src["label"].shape[-2:]
        with ctx.autocast():
            _, s_logits = ctx.model(src["image"])
            _, t_logits = ctx.model(tgt["image"])
        losses = {"source": F.cross_entropy(up(s_logits, size), src["label"], ignore_index=255),
                  "target": F.cross_entropy(up(t_logits, size), tgt["label"], ignore_index=255)}
        with torch.no_grad(), ctx.autocast():
            _, teacher = ctx.ema(tgt["image"])
        with ctx.autocast():
            _, strong = ctx.model(tgt["strong"])
        kl = F.kl_div(F.log_softmax(up(strong, size), 1), F.softmax(up(teacher, size), 1), reduction="none").sum(1)
        losses["consistency"] = (kl * tgt["keep"]).sum() / tgt["keep"].sum().clamp(min=1)
        return losses

    return loss_fn


def bare_loss(times: list, device: torch.device):
    """The bare step: one student forward + CE on the source batch (then the trainer's backward and update)."""
    def loss_fn(ctx):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter())
        src = ctx.batches["source"]
        with ctx.autocast():
            _, logits = ctx.model(src["image"])
        up = F.interpolate(logits.float(), size=src["label"].shape[-2:], mode="bilinear", align_corners=True)
        return {"source": F.cross_entropy(up, src["label"], ignore_index=255)}

    return loss_fn


LOSSES = {"self_training": self_training_loss, "bare": bare_loss}


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run(setting: str, device_name: str, iters: int, warmup: int, amp: str, threads: int | None,
        channels_last: bool, batch: int | None = None, crop: tuple[int, int] | None = None,
        step: str = "self_training", checkpointing: bool = False) -> dict:
    from bismap.models import build_model

    spec = dict(SETTINGS[setting])
    if batch is not None:
        spec["batch"] = batch
    if crop is not None:
        spec["crop"] = tuple(crop)
    n_threads = dev.set_threads(threads)
    device = dev.resolve_device(device_name)
    torch.manual_seed(0)
    model = build_model(spec["model"])
    classes = int(spec["model"]["num_classes"])
    bs = spec["batch"]
    streams = {name: stream.InfiniteStream(RandomCrops(2 * bs, spec["crop"], classes, seed=i), bs, seed=i,
                                           pin_memory=device.type == "cuda")
               for i, name in enumerate(("source", "target"))}
    times: list[float] = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    total = warmup + iters + 1
    cfg = {"iterations": total, "lr": 5e-4, "head_lr_mult": 10.0, "momentum": 0.9, "weight_decay": 5e-4,
           "warmup_iters": 0, "poly_power": 0.9, "min_lr": 1e-7, "amp": amp, "channels_last": channels_last,
           "seed": 0}
    with tempfile.TemporaryDirectory() as tmp:
        trainer.fit(model=model, loss_fn=LOSSES[step](times, device), streams=streams, train_cfg=cfg,
                    out_checkpoint=Path(tmp) / "bench.pt", fingerprint="benchmark", log_every=total,
                    checkpoint_every=0, ema_decay=0.999, device=device,
                    model_config=spec["model"], tensorboard_dir=None, activation_checkpointing=checkpointing)
    rate = iters / (times[warmup + iters] - times[warmup])
    steps = sorted(b - a for a, b in zip(times[warmup:warmup + iters], times[warmup + 1:warmup + iters + 1]))
    median = steps[len(steps) // 2] if len(steps) % 2 else (steps[len(steps) // 2 - 1] + steps[len(steps) // 2]) / 2
    return {"setting": setting, "step": step, "device": str(device), "gpu": torch.cuda.get_device_name(device)
            if device.type == "cuda" else None, "threads": n_threads,
            "amp": dev.resolve_amp(amp, device).name, "channels_last": channels_last and device.type == "cuda",
            "activation_checkpointing": checkpointing, "crop": list(spec["crop"]), "batch": f"{bs}+{bs}",
            "iters": iters, "warmup": warmup, "it_per_s": round(rate, 4), "s_per_it": round(1 / rate, 3),
            "s_per_it_median": median, "peak_memory_mb": round(peak_memory_mb(device)),
            "peak_reserved_mb": (round(torch.cuda.max_memory_reserved(device) / 2**20)
                                 if device.type == "cuda" else None)}


@contextlib.contextmanager
def _profiled(rows: int):
    """torch.profiler around a run when rows > 0: the operators with the most self CPU time."""
    if rows <= 0:
        yield
        return
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        yield
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in ops) or 1.0
    for e in ops[:rows]:
        print(f"PROFILE {e.key:36s} {e.self_cpu_time_total / 1e3:9.1f} ms {e.self_cpu_time_total / total:6.1%} "
              f"calls {e.count}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--setting", choices=sorted(SETTINGS) + ["all"], default="all")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (auto: both CPU and, if present, CUDA)")
    p.add_argument("--iters", type=int, default=5, help="measured iterations (2-3 for the paper setting on CPU)")
    p.add_argument("--warmup", type=int, default=2, help="unmeasured iterations first")
    p.add_argument("--amp", default="auto", help="auto | off | bf16 | fp16 (CUDA only)")
    p.add_argument("--no-channels-last", action="store_true")
    p.add_argument("--checkpointing", action="store_true", help="activation checkpointing of the backbone")
    p.add_argument("--batch", type=int, default=None, help="override the per-domain batch size (CPU memory)")
    p.add_argument("--crop", type=int, nargs=2, default=None, metavar=("H", "W"), help="override the crop size")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: CPU affinity)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="print the N operators with the most self CPU time (torch.profiler) of each run")
    a = p.parse_args(argv)
    settings = sorted(SETTINGS) if a.setting == "all" else [a.setting]
    devices = [a.device] if a.device != "auto" else (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    results = []
    for d in devices:
        for s in settings:
            with _profiled(a.profile):
                r = run(s, d, a.iters, a.warmup, a.amp, a.threads, not a.no_channels_last, a.batch, a.crop,
                        checkpointing=a.checkpointing)
            results.append(r)
            print("RESULT " + json.dumps(r), flush=True)
    if a.json:
        from bismap.io import write_json

        write_json(a.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

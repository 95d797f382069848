"""Training step: achieved FLOP/s against the machine's matmul FLOP/s, and the overhead beyond model compute.

Model compute is timed alone: a plain loop of student forward + backward (no optimizer) and of a
no-grad forward, on one domain's batch (setting `embedded`: config.yaml's model and crop; 4 + 4 crops unless
`--train-batch`).
The bare step (one student forward + backward + the trainer's optimizer/EMA/schedule) and the full
self-training iteration (student on source and weak target, EMA teacher on weak, student on the
strong view, CE + CE + KL, via `bismap.engine.throughput`, data in memory) are timed by the trainer
itself. Times are medians over the iterations (the machine is shared: a burst of another job
hits one iteration, not the median). Overhead = step time / its model compute (bare: 1 \
forward+backward; full: 3 forward+backward
+ 1 forward) - 1. FLOPs are counted by torch.utils.flop_counter (convolutions and matmuls only);
the share is of the fp32 matmul rate (under bf16 autocast it can exceed 1).
Augmentation and reading are measured separately (data loading).
"""
from __future__ import annotations

import time
from typing import Any

import torch

from bismap.bench.common import best_time, median_time, table


def matmul_flops(n: int = 2048, dtype: torch.dtype = torch.float32, repeats: int = 10) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return 2 * n ** 3 / best_time(lambda: a @ b, repeats, warmup=1)


def model_compute(setting: str, batch: int | None, iters: int, amp: str) -> dict[str, float]:
    """Seconds of one forward+backward and one no-grad forward, and their FLOPs."""
    from torch.utils.flop_counter import FlopCounterMode

    from bismap.engine import device as dev
    from bismap.engine.throughput import SETTINGS
    from bismap.models import build_model

    spec = SETTINGS[setting]
    bs = batch or spec["batch"]
    torch.manual_seed(0)
    model = build_model(spec["model"]).train()
    x = torch.randn(bs, 3, *spec["crop"])
    autocast = dev.resolve_amp(amp, torch.device("cpu")).autocast

    def fb():
        with autocast():
            _, logits = model(x)
        logits.float().mean().backward()

    def f():
        with torch.no_grad(), autocast():
            model(x)

    with FlopCounterMode(display=False) as fc:
        fb()
    flops_fb = fc.get_total_flops()
    with FlopCounterMode(display=False) as fc:
        f()
    flops_f = fc.get_total_flops()
    return {"fb_s": median_time(fb, iters, warmup=1), "f_s": median_time(f, iters, warmup=1),
            "flops_fb": float(flops_fb), "flops_f": float(flops_f)}


def run(setting: str = "embedded", iters: int = 5, warmup: int = 2, batch: int | None = None,
        bf16: bool = True) -> dict[str, Any]:
    from bismap.engine import throughput
    from bismap.engine.device import cpu_has_native_bf16

    peak = matmul_flops()
    rows = []
    amps = ["off"] + (["bf16"] if bf16 and cpu_has_native_bf16() else [])
    for amp in amps:
        mc = model_compute(setting, batch, iters, amp)
        for step, compute_s, flops in (("bare", mc["fb_s"], mc["flops_fb"]),
                                       ("self_training", 3 * mc["fb_s"] + mc["f_s"],
                                        3 * mc["flops_fb"] + mc["flops_f"])):
            t0 = time.perf_counter()
            r = throughput.run(setting, "cpu", iters, warmup, amp, None, False, batch=batch, step=step)
            s_it = r["s_per_it_median"]
            rows.append({"step": step, "amp": amp, "s_per_it": s_it, "model_s": compute_s,
                         "overhead": s_it / compute_s - 1.0, "gflops": flops / s_it / 1e9,
                         "share_of_matmul": flops / s_it / peak, "wall_s": time.perf_counter() - t0})
            print(f"bench training: {step} amp={amp}: {s_it:.3f} s/it, model compute {compute_s:.3f} s, "
                  f"overhead {rows[-1]['overhead']:+.1%}, {rows[-1]['share_of_matmul']:.1%} of matmul FLOP/s",
                  flush=True)
    return {"setting": setting, "matmul_gflops": peak / 1e9, "threads": torch.get_num_threads(), "rows": rows,
            "native_bf16": cpu_has_native_bf16()}


def markdown(res: dict) -> str:
    head = (__doc__.split("\n\n", 1)[1].strip() + f"\n\nSetting `{res['setting']}`, {res['threads']} threads; machine "
            f"fp32 matmul (2048^3): {res['matmul_gflops']:.1f} GFLOP/s; native bf16: {res['native_bf16']}.\n\n")
    return head + table(res["rows"], [
        ("step", "step"), ("amp", "autocast"), ("s_per_it", "s/iteration"), ("model_s", "model compute s"),
        ("overhead", "overhead beyond model compute"), ("gflops", "GFLOP/s"),
        ("share_of_matmul", "share of matmul FLOP/s")])

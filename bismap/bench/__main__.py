"""Benchmark suite of the hot paths, each against a reference measured in the same run.

  python -m bismap.bench all                 # everything; writes docs/performance.md
  python -m bismap.bench all --quick         # small sizes, about 2 minutes
  python -m bismap.bench gmm --gmm-n 100000  # one part; prints its markdown (--out FILE to write it)

Parts: gmm (fit vs scikit-learn), scoring (pseudo-label GMM scoring vs the network forward),
training (FLOP/s and overhead of the step), loading (readers + augmentation vs the step),
workflow (snakemake -n, critical path of a finished run), preflight (reading every file before training),
memory (each training stage's memory at the paper configs, from the autograd graph on the meta device),
paper (training s/iteration and FLOPs, label stages at full resolution, loader workers at the paper setting;
about 15 minutes on 2 cores, so not part of `all`: `python -m bismap.bench paper --out docs/performance.md`
replaces its section in place). Not tests: nothing here asserts a time.
"""
from __future__ import annotations

import argparse
import datetime
import platform
import shlex
import subprocess
import sys
from pathlib import Path

import torch

from bismap.bench.common import REPO

PARTS = ("gmm", "scoring", "training", "loading", "workflow", "preflight", "memory")
SLOW_PARTS = ("paper",)  # run only when named
TITLES = {"gmm": "GMM fit against scikit-learn", "scoring": "GMM scoring against the network forward",
          "training": "Training step", "loading": "Data loading", "workflow": "Workflow",
          "preflight": "Preflight", "memory": "Training memory at the paper settings",
          "paper": "What a GPU node needs at the paper settings"}


def machine() -> str:
    try:
        info = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        model = next(line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("Model name"))
        flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("Flags")), [])
    except (OSError, StopIteration, subprocess.SubprocessError):
        model, flags = platform.processor() or "unknown CPU", []
    import os

    simd = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return (f"{len(os.sched_getaffinity(0))}-core {model} ({', '.join(simd) or 'no AVX flags found'}), "
            f"{torch.get_num_threads()} torch threads, torch {torch.__version__}, Python {platform.python_version()}")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bismap.bench", description=__doc__.splitlines()[0])
    p.add_argument("part", choices=("all",) + PARTS + SLOW_PARTS)
    p.add_argument("--quick", action="store_true", help="small sizes (about 2 minutes in all)")
    p.add_argument("--tiny", action="store_true", help="smallest sizes (the suite's own test)")
    p.add_argument("--out", type=Path, default=None, help="markdown output (default for all: docs/performance.md)")
    p.add_argument("--gmm-n", type=int, nargs="+", default=None, help="GMM rows (default 100000 300000)")
    p.add_argument("--gmm-d", type=int, default=256)
    p.add_argument("--gmm-iters", type=int, default=20)
    p.add_argument("--repeats", type=int, default=None, help="timings are the best of this many (default 2, quick 1)")
    p.add_argument("--scoring", nargs="+", default=None, metavar="HxWxD",
                   help="image sizes and feature dims (default 96x192x128 1024x2048x256)")
    p.add_argument("--train-iters", type=int, default=None, help="measured training iterations (default 5)")
    p.add_argument("--train-batch", type=int, default=None, help="per-domain batch (default: the setting's, 4)")
    p.add_argument("--no-bf16", action="store_true", help="skip the CPU bf16 autocast measurement")
    p.add_argument("--images", type=int, default=None, help="images read by the loading part (default 64)")
    p.add_argument("--workflow-experiment", default=None, metavar="NAME",
                   help="finished run of config.yaml whose stage times give the critical path "
                        "(default: its experiment)")
    p.add_argument("--preflight-images", type=int, default=None, help="images per size (default 3000)")
    p.add_argument("--preflight-sizes", nargs="+", default=None, metavar="HxW",
                   help="image sizes of the preflight part (default 96x192 512x1024)")
    p.add_argument("--preflight-threads", type=int, default=1, help="threads of the preflight part (default 1)")
    a = p.parse_args(argv)
    tiny, quick = a.tiny, a.quick or a.tiny
    a.gmm_n = a.gmm_n or ([2000] if tiny else [20_000] if quick else [100_000, 300_000])
    if tiny:
        a.gmm_d = min(a.gmm_d, 16)
    a.repeats = a.repeats or (1 if quick else 2)
    a.scoring = a.scoring or (["32x64x16"] if tiny else ["96x192x128", "256x512x256"] if quick
                              else ["96x192x128", "1024x2048x256"])
    a.train_iters = a.train_iters or (1 if quick else 5)
    a.train_batch = a.train_batch or (2 if tiny else None)
    a.images = a.images or (4 if tiny else 16 if quick else 64)
    a.preflight_images = a.preflight_images or (4 if tiny else 300 if quick else 3000)
    a.preflight_sizes = a.preflight_sizes or (["32x64"] if tiny else ["96x192"] if quick else ["96x192", "512x1024"])
    return a


def run_part(part: str, a: argparse.Namespace, results: dict) -> dict:
    from bismap.bench import gmm, loading, memory, paper, preflight, scoring, training, workflow

    if part == "paper":
        if a.tiny:  # the suite's own test: tiny model, crops and images, the paper config's stages
            small = {"backbone": "resnet18", "aspp_channels": 16, "decoder_channels": 16, "low_level_channels": 8}
            return paper.run(iters=1, images=1, load_images=2, sizes={"source": (40, 72), "target": (32, 64)},
                             overrides={"model": small, "augment": {"crop": [32, 64]}, "train": {"batch_size": 2},
                                        "distillation": {"student_backbone": None}})
        return paper.run()
    if part == "memory":
        return memory.run(["configs/gta5.yaml"] if a.tiny else ["configs/gta5.yaml", "configs/synthia.yaml"])
    if part == "preflight":
        return preflight.run(a.preflight_images,
                             [tuple(int(v) for v in s.lower().split("x")) for s in a.preflight_sizes],
                             threads=a.preflight_threads)
    if part == "gmm":
        return gmm.run(a.gmm_n, d=a.gmm_d, iters=a.gmm_iters, repeats=a.repeats)
    if part == "scoring":
        return scoring.run([tuple(int(v) for v in s.lower().split("x")) for s in a.scoring], repeats=a.repeats)
    if part == "training":
        return training.run(iters=a.train_iters, warmup=1, batch=a.train_batch, bf16=not a.no_bf16)
    if part == "loading":
        step = next((r["s_per_it"] for r in results.get("training", {}).get("rows", [])
                     if r["step"] == "self_training" and r["amp"] == "off"), None)
        return loading.run(a.images, step, batch=a.train_batch)
    return workflow.run(a.workflow_experiment)


def goals(results: dict) -> str:
    """The issue's targets, checked against this run's figures."""
    lines = []
    for r in results.get("gmm", {}).get("rows", []):
        ok = r["speedup"] >= 10 and r["ll_rel_diff"] <= 1e-4
        lines.append(f"- GMM fit N={r['n']}: {r['speedup']:.1f}x scikit-learn (target >= 10x), mean log-likelihood "
                     f"within {r['ll_rel_diff']:.1e} (target 1e-4): **{'met' if ok else 'not met'}**")
    for r in results.get("scoring", {}).get("rows", []):
        ok = r["share"] <= 0.25 and r["mismatch"] == 0
        lines.append(f"- Scoring {r['size']} D={r['d']}: {r['share']:.0%} of the stage (target <= 25 %), "
                     f"{r['mismatch']} labels differ outside the tolerance: **{'met' if ok else 'not met'}**")
    for r in results.get("training", {}).get("rows", []):
        if r["step"] == "self_training":
            lines.append(f"- Self-training iteration ({r['amp']}): overhead beyond model compute {r['overhead']:.0%} "
                         f"(target <= 15 %): **{'met' if r['overhead'] <= 0.15 else 'not met'}**")
    return "## Goals\n\n" + "\n".join(lines) + "\n" if lines else ""


def section(text: str, title: str) -> str | None:
    """The `## title` section of a markdown text (up to the next `## ` heading), or None."""
    start = text.find(f"## {title}\n")
    if start < 0:
        return None
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end + 1]


def replace_section(text: str, title: str, new: str) -> str:
    """text with its `## title` section replaced by `new` (appended when there is none)."""
    old = section(text, title)
    return text.replace(old, new) if old else text.rstrip("\n") + "\n\n" + new


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    parts = PARTS if a.part == "all" else (a.part,)
    cmd = "python -m bismap.bench " + " ".join(shlex.quote(v) for v in (sys.argv[1:] if argv is None else argv))
    results: dict = {}
    for part in parts:
        results[part] = run_part(part, a, results)
    from bismap.bench import gmm, loading, memory, paper, preflight, scoring, training, workflow

    mods = {"gmm": gmm, "scoring": scoring, "training": training, "loading": loading, "workflow": workflow,
            "preflight": preflight, "memory": memory, "paper": paper}
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out = a.out or (REPO / "docs" / "performance.md" if a.part == "all" else None)
    old = out.read_text() if out is not None and out.is_file() else None
    if a.part == "all" or old is None:
        doc = [f"# Performance\n\nMeasured by `{cmd}` on {now}.\n\nMachine: {machine()}. Every figure is a ratio "
               "against a reference measured in the same run on the same machine; the machine was shared with other "
               "jobs, so absolute times are upper bounds (timings are the best of the repeats; training steps "
               "the median of the iterations).\n"]
        doc += [goals(results)] if goals(results) else []
        doc += [f"## {TITLES[p]}\n\n{mods[p].markdown(results[p])}\n" for p in parts]
        text = "\n".join(doc)
        for p in SLOW_PARTS:  # `all` keeps the sections of the parts it does not run
            kept = old and section(old, TITLES[p])
            text += f"\n{kept}" if kept else ""
    else:  # one part into an existing file: its section only, with its own command, date and machine
        text = replace_section(old, TITLES[a.part], f"## {TITLES[a.part]}\n\nMeasured by `{cmd}` on {now}; "
                               f"machine: {machine()}.\n\n{mods[a.part].markdown(results[a.part])}\n")
    if out is None:
        print(text)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"wrote {out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

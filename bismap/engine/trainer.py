"""The one training loop every stage uses (warm-up, oracle, self-training, distillation).

Iteration based, as the original: each iteration draws one batch from every stream, the
stage's `loss_fn` returns named losses, their sum is back-propagated once, then optimizer,
scheduler and (optionally) the EMA teacher step. The whole state is checkpointed to
`<out>.resume.pt` so rerunning a killed job with the same fingerprint continues exactly.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Mapping

import torch
from torch import nn

from bismap.engine import checkpoint as ckpt_io
from bismap.engine import distributed as ddp
from bismap.engine.device import resolve_amp
from bismap.engine.ema import create_ema, update_ema
from bismap.engine.optim import from_train_cfg
from bismap.engine.stream import InfiniteStream, mix_seed

# Every key of the `train` slice the trainer reads, with the value used when it is absent.
TRAIN_DEFAULTS: dict[str, Any] = {
    "iterations": 1000,       # optimizer steps in total
    "lr": 5e-4,               # backbone learning rate (the original's)
    "head_lr_mult": 10.0,     # ASPP + decoder learning rate = lr * head_lr_mult
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "warmup_iters": 400,      # linear warm-up from 0
    "poly_power": 0.9,        # poly decay after warm-up
    "min_lr": 1e-7,           # absolute floor of the poly decay (both groups)
    "amp": "auto",            # auto | off | bf16 | fp16 (CUDA only; CPU always fp32)
    "channels_last": True,    # NHWC tensors on CUDA (faster convolutions with AMP)
    "checkpoint_every": 1000, # write <out>.resume.pt every N iterations (0 = never)
    "log_every": 50,          # progress line every N iterations
    "seed": 0,                # seeds torch / numpy / random at a fresh start
    "grad_clip": None,        # max global grad norm (None = off; the original does not clip)
}
# Keys the trainer accepts but that belong to the caller (e.g. the streams' batch size).
_PASSTHROUGH_KEYS = {"batch_size"}
_RESERVED = {"format", "model_config", "model", "ema", "iteration", "fingerprint", "train_cfg", "optimizer",
             "scheduler", "scaler", "rng", "streams", "world_size", "fingerprint_parts"}


@dataclass
class StepContext:
    """What loss_fn sees at one iteration."""

    model: nn.Module                      # the (possibly DDP-wrapped) student, train mode
    ema: nn.Module | None                 # the EMA teacher (eval mode unless loss_fn changes it), or None
    batches: dict[str, Any]               # stream name -> batch, tensors on `device`
    iteration: int                        # 0-based index of this optimizer step
    device: torch.device
    autocast: Callable[[], ContextManager]  # `with ctx.autocast(): ...` around forwards
    total_iterations: int = 0
    state: dict = field(default_factory=dict)  # free scratch space for loss_fn (not checkpointed)


def resolve_train_cfg(train_cfg: Mapping[str, Any]) -> dict:
    """TRAIN_DEFAULTS overlaid with `train_cfg`; unknown keys are reported (a typo must not pass silently)."""
    unknown = set(train_cfg) - set(TRAIN_DEFAULTS) - _PASSTHROUGH_KEYS
    if unknown and ddp.is_main():
        print(f"note: train config key(s) {sorted(unknown)} are not used by the trainer "
              f"(known: {sorted(TRAIN_DEFAULTS)})", flush=True)
    cfg = dict(TRAIN_DEFAULTS)
    cfg.update({k: v for k, v in train_cfg.items() if k in TRAIN_DEFAULTS})
    if int(cfg["iterations"]) < 1:
        raise ValueError(f"train.iterations must be >= 1, got {cfg['iterations']}")
    return cfg


def _to_device(batch: Any, device: torch.device, channels_last: bool) -> Any:
    if isinstance(batch, torch.Tensor):
        t = batch.to(device, non_blocking=True)
        if channels_last and t.dim() == 4 and t.is_floating_point():
            t = t.contiguous(memory_format=torch.channels_last)
        return t
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device, channels_last) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device, channels_last) for v in batch)
    return batch


def _format_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _seed_everything(seed: int, rank: int) -> None:
    import random

    import numpy as np

    s = mix_seed(seed, rank, 1)
    random.seed(s)
    np.random.seed(s % (2**32))
    torch.manual_seed(s)


def _tensorboard_writer(folder: Path | None):
    if folder is None:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard is optional
        return None
    return SummaryWriter(log_dir=str(folder))


def _model_config(model: nn.Module, given: dict | None) -> dict | None:
    if given is not None:
        return dict(given)
    for attr in ("model_config", "config", "cfg"):
        value = getattr(model, attr, None)
        if isinstance(value, Mapping):
            return dict(value)
    return None


def fit(*, model: nn.Module, loss_fn: Callable[[StepContext], Mapping[str, torch.Tensor]],
        streams: Mapping[str, InfiniteStream], train_cfg: Mapping[str, Any], out_checkpoint: str | os.PathLike,
        fingerprint: str, ema_decay: float | None = None, device: torch.device | str = "cpu",
        extra_state: Mapping[str, Any] | None = None, model_config: dict | None = None,
        tensorboard_dir: str | os.PathLike | None = "auto") -> Path:
    """Train `model` for train_cfg["iterations"] steps and write the final checkpoint; returns its path.

    Resumes from `<out_checkpoint>.resume.pt` when its fingerprint equals `fingerprint`.
    extra_state: JSON-like entries stored at the top level of both checkpoint files.
    model_config: the `model` slice load_model rebuilds from (default: model.model_config/.config/.cfg).
    tensorboard_dir: "auto" = `<out_checkpoint>.tb/`, None = no TensorBoard (skipped anyway when
    tensorboard is not installed).
    """
    ddp.init_distributed()  # joins the process group under torchrun / multi-task srun; no-op otherwise
    cfg = resolve_train_cfg(train_cfg)
    out_checkpoint = Path(out_checkpoint)
    resume_file = ckpt_io.resume_path(out_checkpoint)
    device = torch.device(device)
    info = ddp.current_info()
    main = info.rank == 0
    total = int(cfg["iterations"])
    extra = dict(extra_state or {})
    clash = _RESERVED & set(extra)
    if clash:
        raise ValueError(f"extra_state uses reserved checkpoint key(s) {sorted(clash)}")
    mcfg = _model_config(model, model_config)
    if mcfg is None:  # fail now, not after hours of training with a checkpoint nobody can load
        raise ValueError("trainer.fit: pass model_config= (the `model` slice the network was built from) "
                         "or set model.config; load_model rebuilds the network from it")

    amp = resolve_amp(cfg["amp"], device)
    channels_last = bool(cfg["channels_last"]) and device.type == "cuda"
    memory_format = torch.channels_last if channels_last else torch.preserve_format
    model = model.to(device=device, memory_format=memory_format)
    model.train()
    ema = create_ema(model) if ema_decay is not None else None
    net = ddp.wrap_model(model, device)  # DDP (+ SyncBatchNorm on CUDA) when world > 1
    optimizer, scheduler = from_train_cfg(model, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=amp.use_scaler)

    start = 0
    if resume_file.exists():
        state = None
        try:
            state = ckpt_io.load_checkpoint(resume_file, map_location="cpu", formats=(ckpt_io.RESUME_FORMAT,))
        except Exception as e:
            if main:
                print(f"note: ignoring unreadable resume file {resume_file} ({e})", flush=True)
        if state is not None and state.get("fingerprint") != fingerprint:
            if main:
                from bismap.engine.fingerprint import changed_parts

                changed = changed_parts(state.get("fingerprint_parts"), getattr(fingerprint, "parts", None))
                what = ", ".join(changed) if changed else "configuration or inputs"
                print(f"note: not resuming from {resume_file}: {what} changed since it was written (fingerprint "
                      f"{str(state.get('fingerprint'))[:12]} != {fingerprint[:12]}); starting fresh", flush=True)
            state = None
        if state is not None and int(state.get("world_size", 1)) != info.world_size:
            if main:
                print(f"note: {resume_file} was written by {state.get('world_size')} process(es), this run has "
                      f"{info.world_size}; starting fresh", flush=True)
            state = None
        if state is not None:
            start = _restore(state, model, ema, optimizer, scheduler, scaler, streams, info.rank)
            if main:
                print(f"resuming from {resume_file} at iteration {start}/{total}", flush=True)
    if start == 0:
        _seed_everything(int(cfg["seed"]), info.rank)

    writer = None
    if main and tensorboard_dir is not None:
        tb = Path(str(out_checkpoint) + ".tb") if tensorboard_dir == "auto" else Path(tensorboard_dir)
        writer = _tensorboard_writer(tb)
    if main:
        print(f"training {total} iterations on {device} (world {info.world_size}, amp {amp.name}, "
              f"channels_last {channels_last}, ema {ema_decay}) -> {out_checkpoint}", flush=True)

    log_every = max(int(cfg["log_every"]), 1)
    ckpt_every = int(cfg["checkpoint_every"])
    grad_clip = cfg["grad_clip"]
    sums: dict[str, torch.Tensor] = {}
    window = 0
    t_window = time.perf_counter()
    for it in range(start, total):
        batches = {name: _to_device(next(s), device, channels_last) for name, s in streams.items()}
        ctx = StepContext(model=net, ema=ema, batches=batches, iteration=it, device=device,
                          autocast=amp.autocast, total_iterations=total)
        losses = loss_fn(ctx)
        if not losses:
            raise ValueError("loss_fn returned no losses")
        loss = sum(v.float() for v in losses.values())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if grad_clip is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), float(grad_clip))
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        if ema is not None:
            update_ema(ema, model, float(ema_decay))

        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + v.detach().float()
        sums["total"] = sums.get("total", 0.0) + loss.detach()
        window += 1
        done = it + 1
        if done % log_every == 0 or done == total:
            means = {k: float(v) / window for k, v in sums.items()}  # the only host sync per window
            now = time.perf_counter()
            rate = window / max(now - t_window, 1e-9)
            lrs = [g["lr"] for g in optimizer.param_groups]
            if main:
                parts = " ".join(f"{k} {v:.4f}" for k, v in means.items())
                print(f"[{done}/{total}] {rate:.2f} it/s ETA {_format_eta((total - done) / rate)} | {parts} | "
                      f"lr {lrs[0]:.3g}", flush=True)
                if writer is not None:
                    for k, v in means.items():
                        writer.add_scalar(f"loss/{k}", v, done)
                    writer.add_scalar("lr", lrs[0], done)
                    writer.add_scalar("it_per_s", rate, done)
            if not math.isfinite(means["total"]) and not amp.use_scaler:
                raise FloatingPointError(f"{out_checkpoint}: training loss became {means['total']} at iteration "
                                         f"{done}; lower train.lr or check the inputs")
            sums, window, t_window = {}, 0, time.perf_counter()
        if ckpt_every > 0 and done % ckpt_every == 0 and done < total:
            ddp.broadcast_buffers(model)
            ddp.broadcast_buffers(ema)
            _save_resume(resume_file, done, fingerprint, model, ema, optimizer, scheduler, scaler, streams, info,
                         mcfg, cfg, extra)

    ddp.broadcast_buffers(model)
    ddp.broadcast_buffers(ema)
    if main:
        final = {"format": ckpt_io.FORMAT, "model_config": mcfg, "model": model.state_dict(),
                 "ema": ema.state_dict() if ema is not None else None, "iteration": total,
                 "train_cfg": cfg, **extra}
        # No fingerprint here: it hashes input paths and mtimes, and the final file must be
        # a function of config and seed only (byte-identical across working folders and hosts).
        ckpt_io.save_checkpoint(out_checkpoint, final)
        resume_file.unlink(missing_ok=True)
        if writer is not None:
            writer.close()
        print(f"wrote {out_checkpoint}", flush=True)
    ddp.barrier()
    return out_checkpoint


def _save_resume(path: Path, iteration: int, fingerprint: str, model: nn.Module, ema: nn.Module | None,
                 optimizer, scheduler, scaler, streams: Mapping[str, InfiniteStream], info, mcfg, cfg, extra) -> None:
    """All ranks contribute their RNG and stream states; rank 0 writes (atomically)."""
    rank_state = {"rng": ckpt_io.capture_rng_state(), "streams": {k: s.state_dict() for k, s in streams.items()}}
    gathered = ddp.all_gather_object(rank_state)
    if info.rank == 0:
        state = {"format": ckpt_io.RESUME_FORMAT, "fingerprint": str(fingerprint),
                 "fingerprint_parts": dict(getattr(fingerprint, "parts", {})), "iteration": iteration,
                 "world_size": info.world_size, "model_config": mcfg, "train_cfg": cfg,
                 "model": model.state_dict(), "ema": ema.state_dict() if ema is not None else None,
                 "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "scaler": scaler.state_dict(), "rng": [g["rng"] for g in gathered],
                 "streams": [g["streams"] for g in gathered], **extra}
        ckpt_io.save_checkpoint(path, state)
    ddp.barrier()


def _restore(state: dict, model, ema, optimizer, scheduler, scaler, streams, rank: int) -> int:
    model.load_state_dict(state["model"])
    if ema is not None:
        if state.get("ema") is None:
            raise ValueError("resume file has no EMA weights but this run uses an EMA teacher")
        ema.load_state_dict(state["ema"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    stream_states = state["streams"][rank]
    missing = set(streams) - set(stream_states)
    if missing:
        raise ValueError(f"resume file has no state for stream(s) {sorted(missing)}")
    for name, s in streams.items():
        s.load_state_dict(stream_states[name])
    ckpt_io.restore_rng_state(state["rng"][rank])
    return int(state["iteration"])

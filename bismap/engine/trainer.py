"""The one training loop every stage uses (warm-up, oracle, self-training, distillation).

Iteration based, as the original: each iteration draws one batch from every stream, the
stage's `loss_fn` returns named losses, their sum is back-propagated once, then optimizer,
scheduler and (optionally) the EMA teacher step. The whole state is checkpointed to
`<out>.resume.pt` so rerunning a killed job with the same fingerprint continues exactly.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from bismap.engine import checkpoint as ckpt_io
from bismap.engine import distributed as ddp
from bismap.engine.device import resolve_amp, to_device
from bismap.engine.divergence import Diverged, DivergenceGuard, nonfinite_tensor
from bismap.engine.ema import create_ema, update_ema
from bismap.engine.fingerprint import changed_parts
from bismap.engine.optim import from_train_cfg
from bismap.engine.preemption import Preempted, StopSignals, slurm_time_limits, submissions_note
from bismap.engine.progress import format_eta, seed_everything, tensorboard_writer
from bismap.engine.side_thread import SideThread, run_step
from bismap.engine.step_context import Step, StepContext, as_step
from bismap.engine.stream import InfiniteStream
from bismap.models.checkpointing import set_activation_checkpointing

# Every key of the `train` config slice the trainer reads (configs/schema.yaml holds their defaults).
TRAIN_KEYS = ("iterations", "lr", "head_lr_mult", "momentum", "weight_decay", "warmup_iters", "poly_power",
              "min_lr", "amp", "seed")
# Trainer options that are not config keys (callers such as the throughput benchmark set them).
ENGINE_OPTIONS: dict[str, Any] = {
    "channels_last": True,    # NHWC tensors on CUDA (faster convolutions with AMP)
    "grad_clip": None,        # max global grad norm (None = off; the original does not clip)
}
# Keys the trainer accepts but that belong to the caller (e.g. the streams' batch size).
_PASSTHROUGH_KEYS = {"batch_size"}
_RESERVED = {"format", "model_config", "model", "ema", "iteration", "fingerprint", "train_cfg", "optimizer",
             "scheduler", "scaler", "rng", "streams", "world_size", "fingerprint_parts", "guard"}


def resolve_train_cfg(train_cfg: Mapping[str, Any]) -> dict:
    """The `train` slice checked: every TRAIN_KEYS present (the schema fills them), ENGINE_OPTIONS
    where absent; unknown keys are reported (a typo must not pass silently)."""
    missing = [k for k in TRAIN_KEYS if k not in train_cfg]
    if missing:
        raise ValueError(f"train config lacks key(s) {missing} (configs/schema.yaml gives their defaults)")
    known = set(TRAIN_KEYS) | set(ENGINE_OPTIONS)
    unknown = set(train_cfg) - known - _PASSTHROUGH_KEYS
    if unknown and ddp.is_main():
        print(f"note: train config key(s) {sorted(unknown)} are not used by the trainer "
              f"(known: {sorted(known)})", flush=True)
    cfg = dict(ENGINE_OPTIONS)
    cfg.update({k: v for k, v in train_cfg.items() if k in known})
    if int(cfg["iterations"]) < 1:
        raise ValueError(f"train.iterations must be >= 1, got {cfg['iterations']}")
    return cfg


def runtime_options(runtime: Mapping[str, Any]) -> dict:
    """fit's keyword arguments that come from the config's `runtime` section (they change no result)."""
    return {"log_every": int(runtime["log_every"]), "checkpoint_every": int(runtime["checkpoint_every"]),
            "max_loss_growth": float(runtime["max_loss_growth"]),
            "max_weight_growth": float(runtime["max_weight_growth"]),
            "activation_checkpointing": bool(runtime.get("activation_checkpointing", False))}


@dataclass
class _Run:
    """Everything one training run holds between its steps (built by _setup)."""

    cfg: dict
    model: nn.Module                 # the bare student (checkpointed)
    net: nn.Module                   # what loss_fn calls: `model`, DDP-wrapped when world > 1
    ema: nn.Module | None
    ema_decay: float | None
    optimizer: Any
    scheduler: Any
    scaler: Any
    amp: Any
    device: torch.device
    channels_last: bool
    streams: Mapping[str, InfiniteStream]
    info: Any                        # ddp.current_info()
    out_checkpoint: Path
    resume_file: Path
    fingerprint: str
    model_config: dict
    extra: dict
    log_every: int
    checkpoint_every: int
    side: SideThread = field(default_factory=lambda: SideThread(False))
    trainable: list = field(default_factory=list)  # the parameters the side thread differentiates
    writer: Any = None
    guard: DivergenceGuard = field(default_factory=DivergenceGuard)

    @property
    def main(self) -> bool:
        return self.info.rank == 0

    @property
    def total(self) -> int:
        return int(self.cfg["iterations"])


@dataclass
class _LossWindow:
    """Loss sums since the last progress line (kept on the device: one host sync per line)."""

    sums: dict = field(default_factory=dict)
    count: int = 0
    started: float = field(default_factory=time.perf_counter)

    def add(self, losses: Mapping[str, torch.Tensor], loss: torch.Tensor) -> None:
        for k, v in losses.items():
            self.sums[k] = self.sums.get(k, 0.0) + v.detach().float()
        self.sums["total"] = self.sums.get("total", 0.0) + loss.detach()
        self.count += 1


def fit(*, model: nn.Module, loss_fn: Step | Callable[[StepContext], Mapping[str, torch.Tensor]],
        streams: Mapping[str, InfiniteStream], train_cfg: Mapping[str, Any], out_checkpoint: str | os.PathLike,
        fingerprint: str, log_every: int, checkpoint_every: int, ema_decay: float | None = None,
        device: torch.device | str = "cpu", extra_state: Mapping[str, Any] | None = None,
        model_config: dict | None = None, tensorboard_dir: str | os.PathLike | None = "auto",
        side_thread: bool = False, max_loss_growth: float = 0.0, max_weight_growth: float = 0.0,
        activation_checkpointing: bool = False) -> Path:
    """Train `model` for train_cfg["iterations"] steps and write the final checkpoint; returns its path.

    Resumes from `<out_checkpoint>.resume.pt` when its fingerprint equals `fingerprint`.
    log_every / checkpoint_every: iterations between progress lines / resume files (0 = never);
    they come from the config's `runtime` section and change nothing in the result.
    extra_state: JSON-like entries stored at the top level of both checkpoint files.
    model_config: the `model` slice load_model rebuilds from (default: model.model_config/.config/.cfg).
    tensorboard_dir: "auto" = `<out_checkpoint>.tb/`, None = no TensorBoard (skipped anyway when
    tensorboard is not installed).
    loss_fn: a Step (teacher forwards, then loss terms) or any `ctx -> losses` function (one term).
    side_thread: a Step's teacher forwards and term backwards on a second thread (engine.side_thread;
    used on a CPU, in one process, without a gradient scaler): the same numbers, faster with a free core.
    max_loss_growth / max_weight_growth: the divergence guard's limits (engine.divergence; 0 = off): the
    run stops with a one-line error at the first progress line or checkpoint where it has diverged.
    activation_checkpointing: recompute the backbone blocks' activations in the backward
    (models.checkpointing): less memory, the same numbers; not with the side thread.
    """
    run = _setup(model, streams, train_cfg, out_checkpoint, fingerprint, ema_decay, device, extra_state,
                 model_config, log_every, checkpoint_every)
    run.side = SideThread(side_thread and run.device.type == "cpu" and run.info.world_size == 1
                          and not run.amp.use_scaler and not activation_checkpointing)
    run.trainable = [p for p in run.model.parameters() if p.requires_grad]
    run.guard = DivergenceGuard(float(max_loss_growth), float(max_weight_growth))
    if activation_checkpointing and not set_activation_checkpointing(model, True):
        print("note: runtime.activation_checkpointing: this backbone does not support it", flush=True)
    try:
        _train(run, loss_fn, tensorboard_dir)
    finally:
        run.side.close()
    return run.out_checkpoint


def _train(run: _Run, loss_fn, tensorboard_dir) -> None:
    """The iterations from the resume point on, progress lines, resume files, the final checkpoint."""
    if _restored_finished(run):
        return
    start = _resume(run)
    if start == 0:
        seed_everything(int(run.cfg["seed"]), run.info.rank)
    _open_log(run, tensorboard_dir)
    run.guard.start(run.model)
    window = _LossWindow()
    started, noted = time.perf_counter(), False
    with StopSignals() as stop:
        for it in range(start, run.total):
            losses, loss = _step(run, loss_fn, it)
            run.guard.record_first_loss(loss)  # a host sync at the first iteration only
            window.add(losses, loss)
            done = it + 1
            if done % run.log_every == 0 or done == run.total:
                _log_progress(run, window, done)  # checks for divergence (also the final state's)
                window = _LossWindow()
            periodic = run.checkpoint_every > 0 and done % run.checkpoint_every == 0
            stopping = done < run.total and stop.requested()  # every rank asks, every iteration
            if done < run.total and (periodic or stopping):
                _checkpoint(run, window, done)
                if stopping:
                    _note(run, f"stopped by {stop.name} after iteration {done}/{run.total}: wrote "
                               f"{run.resume_file}; the next run of this stage continues from there")
                    raise Preempted(f"{run.out_checkpoint}: stopped by {stop.name} at iteration {done}/{run.total}")
                if not noted:  # the first checkpoint of this job: will the job's time limit cut the stage?
                    noted = True
                    note = submissions_note((done - start) / (time.perf_counter() - started), run.total - done,
                                            slurm_time_limits() if run.main else None)
                    if note:
                        _note(run, note)
    _save_final(run)
    ddp.barrier()


def _checkpoint(run: _Run, window: _LossWindow, done: int) -> None:
    """The resume file after iteration `done` (same buffers on every rank; never a diverged state)."""
    ddp.broadcast_buffers(run.model)
    ddp.broadcast_buffers(run.ema)
    partial = float(window.sums["total"]) / window.count if window.count else None
    _check_divergence(run, done, partial)
    _save_resume(run, done)


def _setup(model, streams, train_cfg, out_checkpoint, fingerprint, ema_decay, device, extra_state, model_config,
           log_every, checkpoint_every) -> _Run:
    """Process group, checked config, model on its device, EMA, DDP wrapper, optimizer, scaler."""
    ddp.init_distributed()  # joins the process group under torchrun / multi-task srun; no-op otherwise
    cfg = resolve_train_cfg(train_cfg)
    out_checkpoint = Path(out_checkpoint)
    device = torch.device(device)
    extra = dict(extra_state or {})
    clash = _RESERVED & set(extra)
    if clash:
        raise ValueError(f"extra_state uses reserved checkpoint key(s) {sorted(clash)}")
    mcfg = ckpt_io.model_config_of(model, model_config)
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
    return _Run(cfg=cfg, model=model, net=net, ema=ema, ema_decay=ema_decay, optimizer=optimizer,
                scheduler=scheduler, scaler=scaler, amp=amp, device=device, channels_last=channels_last,
                streams=streams, info=ddp.current_info(), out_checkpoint=out_checkpoint,
                resume_file=ckpt_io.resume_path(out_checkpoint), fingerprint=fingerprint, model_config=mcfg,
                extra=extra, log_every=max(int(log_every), 1), checkpoint_every=int(checkpoint_every))


def _resume(run: _Run) -> int:
    """The iteration to start from: the resume file's when it is readable and was written by this
    fingerprint, by any number of processes (its state then restored), else 0."""
    if not run.resume_file.exists():
        return 0
    state = None
    try:
        state = ckpt_io.load_checkpoint(run.resume_file, map_location="cpu", formats=(ckpt_io.RESUME_FORMAT,))
    except Exception as e:
        _note(run, f"note: ignoring unreadable resume file {run.resume_file} ({e})")
    if state is not None and state.get("fingerprint") != run.fingerprint:
        changed = changed_parts(state.get("fingerprint_parts"), getattr(run.fingerprint, "parts", None))
        what = ", ".join(changed) if changed else "configuration or inputs"
        _note(run, f"note: not resuming from {run.resume_file}: {what} changed since it was written (fingerprint "
                   f"{str(state.get('fingerprint'))[:12]} != {run.fingerprint[:12]}); starting fresh")
        state = None
    if state is not None and int(state.get("world_size", 1)) != run.info.world_size:
        _note(run, f"note: {run.resume_file} was written by {state.get('world_size')} process(es), this run has "
                   f"{run.info.world_size}: continuing with the same global batches (not bit-identical to a run "
                   f"at one world size)")
    bad = None if state is None else nonfinite_tensor(state["model"]) or nonfinite_tensor(state.get("ema") or {})
    if bad is not None:
        _note(run, f"note: not resuming from {run.resume_file}: its {bad} holds NaN or inf (written by a diverged "
                   f"run); starting fresh")
        state = None
    if state is None:
        return 0
    run.guard.load_state_dict(state.get("guard"))
    start = ckpt_io.restore_training_state(state, run.model, run.ema, run.optimizer, run.scheduler, run.scaler,
                                           run.streams, run.info.rank)
    _note(run, f"resuming from {run.resume_file} at iteration {start}/{run.total}")
    return start


def _restored_finished(run: _Run) -> bool:
    """True when this very run (same fingerprint) had finished and only its output was lost (a Ctrl-C
    just after the final write, then Snakemake's --rerun-incomplete): the output is put back from the
    kept link (ckpt_io.keep_finished) instead of training again."""
    restored = False
    if run.main and not run.out_checkpoint.exists():
        restored = ckpt_io.restore_finished(run.out_checkpoint, run.fingerprint)
    restored = bool(ddp.all_gather_object(restored)[0])  # rank 0 decides for every rank
    if restored:
        _note(run, f"{run.out_checkpoint}: this stage had finished (same config and inputs) and its output was "
                   f"removed; restored from {ckpt_io.finished_paths(run.out_checkpoint)[0]} without training")
    return restored


def _note(run: _Run, text: str) -> None:
    if run.main:
        print(text, flush=True)


def _open_log(run: _Run, tensorboard_dir) -> None:
    """TensorBoard writer (rank 0, when wanted and installed) and the run's first log line."""
    if run.main and tensorboard_dir is not None:
        tb = Path(str(run.out_checkpoint) + ".tb") if tensorboard_dir == "auto" else Path(tensorboard_dir)
        run.writer = tensorboard_writer(tb)
    _note(run, f"training {run.total} iterations on {run.device} (world {run.info.world_size}, amp {run.amp.name}, "
               f"channels_last {run.channels_last}, ema {run.ema_decay}) -> {run.out_checkpoint}")


def _step(run: _Run, loss_fn, it: int) -> tuple[Mapping[str, torch.Tensor], torch.Tensor]:
    """One iteration: a batch from every stream, the losses, one backward (or the branches' backwards
    on the side thread), optimizer/scheduler/EMA steps."""
    batches = {name: to_device(next(s), run.device, run.channels_last) for name, s in run.streams.items()}
    ctx = StepContext(model=run.net, ema=run.ema, batches=batches, iteration=it, device=run.device,
                      autocast=run.amp.autocast, total_iterations=run.total)
    losses, branches = run_step(as_step(loss_fn), ctx, run.side, run.trainable)
    if not losses:
        raise ValueError("loss_fn returned no losses")
    loss = sum(v.float() for v in losses.values())
    run.optimizer.zero_grad(set_to_none=True)
    if branches is not None:
        branches.set_grads(losses)
    else:
        run.scaler.scale(loss).backward()
    if run.cfg["grad_clip"] is not None:
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), float(run.cfg["grad_clip"]))
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    if run.ema is not None:
        update_ema(run.ema, run.model, float(run.ema_decay))
    return losses, loss


def _log_progress(run: _Run, window: _LossWindow, done: int) -> None:
    """The progress line (and TensorBoard scalars) of the window ending at iteration `done`; a
    non-finite mean loss stops the run (unless the AMP scaler is there to skip such steps)."""
    sums = ddp.mean_over_ranks(window.sums)  # the global batch's losses under DDP (each rank's mean, averaged)
    means = {k: float(v) / window.count for k, v in sums.items()}  # the only host sync per window
    rate = window.count / max(time.perf_counter() - window.started, 1e-9)
    lr = run.optimizer.param_groups[0]["lr"]
    if run.main:
        parts = " ".join(f"{k} {v:.4f}" for k, v in means.items())
        print(f"[{done}/{run.total}] {rate:.2f} it/s ETA {format_eta((run.total - done) / rate)} | {parts} | "
              f"lr {lr:.3g}", flush=True)
        if run.writer is not None:
            for k, v in means.items():
                run.writer.add_scalar(f"loss/{k}", v, done)
            run.writer.add_scalar("lr", lr, done)
            run.writer.add_scalar("it_per_s", rate, done)
    _check_divergence(run, done, means["total"])


def _check_divergence(run: _Run, done: int, loss_mean: float | None) -> None:
    """Raise Diverged (one line) when any rank sees a sign of divergence at iteration `done`. A
    non-finite loss passes under AMP's gradient scaler, which skips such steps."""
    problem = run.guard.problem(run.model, run.ema, loss_mean, loss_must_be_finite=not run.amp.use_scaler)
    problems = [p for p in ddp.all_gather_object(problem) if p]
    if problems:
        raise Diverged.at(run.out_checkpoint, done, run.total, problems[0], run.resume_file, float(run.cfg["lr"]))


def _save_final(run: _Run) -> None:
    """The final checkpoint (rank 0), written atomically; the resume file is then removed."""
    ddp.broadcast_buffers(run.model)
    ddp.broadcast_buffers(run.ema)
    if not run.main:
        return
    final = {"format": ckpt_io.FORMAT, "model_config": run.model_config, "model": run.model.state_dict(),
             "ema": run.ema.state_dict() if run.ema is not None else None, "iteration": run.total,
             "train_cfg": run.cfg, **run.extra}
    # No fingerprint here: it hashes input paths and mtimes, and the final file must be
    # a function of config and seed only (byte-identical across working folders and hosts).
    ckpt_io.save_checkpoint(run.out_checkpoint, final)
    ckpt_io.keep_finished(run.out_checkpoint, run.fingerprint)  # before the resume file goes
    run.resume_file.unlink(missing_ok=True)
    if run.writer is not None:
        run.writer.close()
    print(f"wrote {run.out_checkpoint}", flush=True)


def _save_resume(run: _Run, iteration: int) -> None:
    """All ranks contribute their RNG and stream states; rank 0 writes (atomically)."""
    rank_state = {"rng": ckpt_io.capture_rng_state(), "streams": {k: s.state_dict() for k, s in run.streams.items()}}
    gathered = ddp.all_gather_object(rank_state)
    if run.main:
        state = {"format": ckpt_io.RESUME_FORMAT, "fingerprint": str(run.fingerprint),
                 "fingerprint_parts": dict(getattr(run.fingerprint, "parts", {})), "iteration": iteration,
                 "world_size": run.info.world_size, "model_config": run.model_config, "train_cfg": run.cfg,
                 "model": run.model.state_dict(), "ema": run.ema.state_dict() if run.ema is not None else None,
                 "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
                 "scaler": run.scaler.state_dict(), "rng": [g["rng"] for g in gathered],
                 "streams": [g["streams"] for g in gathered], "guard": run.guard.state_dict(), **run.extra}
        ckpt_io.save_checkpoint(run.resume_file, state)
    ddp.barrier()

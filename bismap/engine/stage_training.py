"""What every training stage (warm-up, oracle, self-training, naive self-training, distillation) shares.

A training stage's `run()` builds its model, streams and loss; everything around that is here:
the stage's effective `train` slice (shared `train` + the stage's `train_overrides`), its device,
and the fit with a resume fingerprint derived from the stage's own arguments, so no stage lists
what its resume depends on by hand (a new argument is part of the fingerprint without an edit).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from bismap.engine.fingerprint import Fingerprint, fingerprint, path_signature, spec_signature
from bismap.engine.stage_setup import normalisation, setup_device

# Arguments of a stage's run() that change no result: left out of its fingerprint.
NOT_FINGERPRINTED = frozenset({"runtime", "threads", "out_checkpoint"})


def effective_train(train: Mapping[str, Any], overrides: Mapping[str, Any] | None) -> dict:
    """`train` with the stage's non-null overrides applied (a null override inherits the shared value)."""
    merged = dict(train)
    merged.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return merged


def begin(args: Mapping[str, Any]) -> tuple[torch.device, dict, int]:
    """(device, effective train slice, seed) of a training stage from its run() arguments."""
    device = setup_device(int(args.get("threads", 1)), args["runtime"])
    train = effective_train(args["train"], args.get("train_overrides"))
    return device, train, int(train["seed"])


def _signature(value: Any) -> Any:
    """A config slice as it is; a dataset spec or an input path with the stat of what it names."""
    if isinstance(value, Mapping) and "root" in value and "dataset" in value:
        return spec_signature(dict(value))
    if isinstance(value, (str, os.PathLike)):
        return path_signature(value)
    return value


def stage_fingerprint(stage: str, args: Mapping[str, Any]) -> Fingerprint:
    """The resume fingerprint of `stage` from every run() argument that can change its result."""
    parts = {name: _signature(value) for name, value in args.items() if name not in NOT_FINGERPRINTED}
    parts["train"] = effective_train(args["train"], args.get("train_overrides"))
    parts.pop("train_overrides", None)
    return fingerprint(stage=stage, **parts)


def train_stage(stage: str, args: Mapping[str, Any], *, net: torch.nn.Module, loss_fn: Callable,
                streams: Mapping[str, Any], device: torch.device, ema_decay: float | None = None,
                model_config: Mapping[str, Any] | None = None, side_thread: bool = False) -> Path:
    """trainer.fit for a stage's `net`, `loss_fn` and `streams`, configured from its run() `args`
    (train slice, runtime knobs, fingerprint, normalisation kept in the checkpoint)."""
    from bismap.engine import trainer

    runtime = args["runtime"]
    return trainer.fit(model=net, loss_fn=loss_fn, streams=streams,
                       train_cfg=effective_train(args["train"], args.get("train_overrides")),
                       out_checkpoint=Path(args["out_checkpoint"]), fingerprint=stage_fingerprint(stage, args),
                       **trainer.runtime_options(runtime), ema_decay=ema_decay, device=device,
                       model_config=dict(model_config if model_config is not None else args["model"]),
                       extra_state={"data": normalisation(args["data"])},
                       side_thread=bool(side_thread and runtime["side_thread"]))

"""Checkpoint files: the final model file every later stage reads, and the resume file.

The resume file holds the whole training state (model, EMA teacher, optimizer, scheduler,
AMP scaler, iteration, every RNG state, the streams' positions) so a killed job continues
bit-for-bit on CPU. Everything is stored as tensors / plain Python so files load with
`torch.load(weights_only=True)`: loading a checkpoint never executes code.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from bismap.io import InputError, save_torch

FORMAT = "bismap-checkpoint/1"
RESUME_FORMAT = "bismap-resume/1"


def resume_path(out_checkpoint: str | os.PathLike) -> Path:
    """`<out_checkpoint>.resume.pt`: next to the final file, so it is on the same filesystem."""
    return Path(str(out_checkpoint) + ".resume.pt")


def finished_paths(out_checkpoint: str | os.PathLike) -> tuple[Path, Path]:
    """`<out>.finished.pt` (a hard link to the final file) and `<out>.finished.json` (the fingerprint of
    the run that wrote it): a finished stage survives the loss of its output (see keep_finished)."""
    return Path(str(out_checkpoint) + ".finished.pt"), Path(str(out_checkpoint) + ".finished.json")


def keep_finished(out_checkpoint: str | os.PathLike, fingerprint: str) -> None:
    """Keep the final checkpoint under a second name, with the fingerprint of its run.

    Snakemake marks a job's outputs incomplete until the job has exited, and `--rerun-incomplete`
    deletes them: a Ctrl-C in the second between the final write and the exit threw the finished
    stage away (and its resume file was gone). A hard link costs no space while the output exists;
    where links are not supported, a copy.
    """
    import shutil

    from bismap.io import atomic_path, write_json

    kept, meta = finished_paths(out_checkpoint)
    with atomic_path(kept) as tmp:
        tmp.unlink()
        try:
            os.link(out_checkpoint, tmp)
        except OSError:
            shutil.copy2(out_checkpoint, tmp)
    write_json(meta, {"fingerprint": str(fingerprint), "size": kept.stat().st_size})


def restore_finished(out_checkpoint: str | os.PathLike, fingerprint: str) -> bool:
    """Put a kept final checkpoint of the same fingerprint back as the output (True), or drop a kept one
    of another run (False). Only for a missing output."""
    from bismap.io import atomic_path, read_json

    out = Path(out_checkpoint)
    kept, meta = finished_paths(out)
    if not meta.is_file() or not kept.is_file():
        return False
    try:
        record = read_json(meta)
    except InputError:
        record = {}
    if record.get("fingerprint") != str(fingerprint) or record.get("size") != kept.stat().st_size:
        kept.unlink(missing_ok=True)
        meta.unlink(missing_ok=True)
        return False
    with atomic_path(out) as tmp:
        tmp.unlink()
        os.link(kept, tmp)
    return True


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """torch.save(state) atomically (temporary file renamed into place)."""
    save_torch(path, state)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    formats: tuple[str, ...] = (FORMAT,)) -> dict:
    """Read a bismap checkpoint; InputError (naming the file) for anything else."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint file not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated, not a torch file, or pickles code
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"{path}: not a readable bismap checkpoint ({first[:200]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") not in formats:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise InputError(f"{path}: not a bismap checkpoint (format {found!r}, expected one of {list(formats)})")
    return ckpt


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu", which: str = "model") -> nn.Module:
    """Rebuild the network from ckpt["model_config"] and load its "model" or "ema" weights; eval mode."""
    from bismap.models import build_model  # lazy: the models package is heavy and optional for tests

    if which not in ("model", "ema"):
        raise ValueError(f"which must be 'model' or 'ema', got {which!r}")
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt.get("model_config"), dict):
        raise InputError(f"{path}: checkpoint has no model_config")
    weights = ckpt.get(which)
    if weights is None:
        raise InputError(f"{path}: checkpoint has no {which!r} weights (trained without EMA?)")
    from bismap.engine.divergence import nonfinite_tensor

    bad = nonfinite_tensor(weights)
    if bad is not None:  # a model written before the divergence guard, or by another tool
        raise InputError(f"{path}: its {which} weight {bad} holds NaN or inf (training diverged): rerun the "
                         f"stage that wrote it with a lower train.lr")
    cfg = dict(ckpt["model_config"])
    cfg["weights"] = "none"  # the stored weights replace any pretrained initialisation
    model = build_model(cfg)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise InputError(f"{path}: weights do not match model_config ({str(e).splitlines()[0]})") from None
    return model.to(device).eval()


def restore_training_state(state: dict, model, ema, optimizer, scheduler, scaler, streams, rank: int) -> int:
    """Load a resume file's state into a run's objects (this rank's RNG and stream positions); its iteration."""
    model.load_state_dict(state["model"])
    if ema is not None:
        if state.get("ema") is None:
            raise ValueError("resume file has no EMA weights but this run uses an EMA teacher")
        ema.load_state_dict(state["ema"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    # Stream positions count global batches, so any saved rank's state serves any rank of any
    # world size; RNG streams are per rank (rank r continues saved rank r mod the saved world).
    stream_states = state["streams"][rank % len(state["streams"])]
    missing = set(streams) - set(stream_states)
    if missing:
        raise ValueError(f"resume file has no state for stream(s) {sorted(missing)}")
    for name, s in streams.items():
        s.load_state_dict(stream_states[name])
    restore_rng_state(state["rng"][rank % len(state["rng"])])
    return int(state["iteration"])


# ---------------------------------------------------------------------------------------------
# RNG state, as tensors and plain Python (weights_only-loadable)


def capture_rng_state() -> dict:
    """Every RNG a training step may touch: torch CPU, all CUDA devices, numpy global, python random."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "python": _to_lists(random.getstate()),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    return state


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    random.setstate(_to_tuples(state["python"]))
    if state.get("cuda") is not None and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            print(f"note: resume file has {len(cuda)} CUDA RNG states, this machine has "
                  f"{torch.cuda.device_count()} GPUs; CUDA RNG not restored", flush=True)


def _to_lists(x: Any) -> Any:
    return [_to_lists(v) for v in x] if isinstance(x, (tuple, list)) else x


def _to_tuples(x: Any) -> Any:
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x


def model_config_of(model: nn.Module, given: dict | None) -> dict | None:
    """The `model` slice a checkpoint stores for load_model: `given`, else model.model_config/.config/.cfg."""
    if given is not None:
        return dict(given)
    for attr in ("model_config", "config", "cfg"):
        value = getattr(model, attr, None)
        if isinstance(value, Mapping):
            return dict(value)
    return None

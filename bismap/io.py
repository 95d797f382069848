"""Atomic output helpers: a killed job must never leave a half-written file behind.

Every writer goes to a temporary name in the destination folder and is renamed
into place only once complete (rename is atomic on POSIX within one filesystem).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping


class InputError(ValueError):
    """Bad user input (a file, a folder, a value). Its message is one line that names the culprit."""


def check_keys(section: str, cfg: Mapping[str, Any], keys: Iterable[str]) -> None:
    """A config slice must hold exactly `keys`: defaults live in configs/schema.yaml only, so a
    missing key is an error (not a second, silent default) and an unknown one is a typo."""
    keys = set(keys)
    missing, unknown = sorted(keys - set(cfg)), sorted(set(cfg) - keys)
    if unknown:
        raise InputError(f"{section}: unknown key(s) {unknown} (known: {sorted(keys)})")
    if missing:
        raise InputError(f"{section}: missing key(s) {missing} (configs/schema.yaml has their defaults)")


def _tmp_sibling(path: Path, suffix: str = "") -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + suffix, dir=path.parent)
    os.close(fd)
    return Path(name)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path next to `path`; rename it onto `path` on success.

    The temporary keeps the destination's suffix so libraries that dispatch on it
    (Pillow, h5py, torch) behave. On error the temporary is removed and `path` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path, path.suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder next to `path`; on success it replaces `path` as a whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / "x")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    import torch

    # Through a file object, not the path: torch names the zip archive after the file, and the
    # temporary name would then make identical checkpoints differ byte for byte.
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


def load_torch_file(path: str | os.PathLike, fmt: str, what: str) -> dict:
    """A dict saved by save_torch with `"format": fmt`; InputError naming the file otherwise."""
    import torch

    if not os.path.isfile(path):
        raise InputError(f"{path}: {what} not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the same to the user
        raise InputError(f"{path}: not a readable {what} ({type(e).__name__})") from None
    if not isinstance(obj, dict) or obj.get("format") != fmt:
        raise InputError(f"{path}: not a {fmt} {what}")
    return obj

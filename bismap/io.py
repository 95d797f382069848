"""Atomic output helpers: a killed job must never leave a half-written file behind.

Every writer goes to a temporary name in the destination folder and is renamed
into place only once complete (rename is atomic on POSIX within one filesystem).
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
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
# What _tmp_sibling / atomic_dir name their temporaries: `.<name>.<8 random chars>.tmp[.suffix]` and
# `.<name>.<8 random chars>.old`; the resume file's are `.<name>.resume.pt.<8 chars>.tmp.pt`.
def _stale_pattern(name: str) -> re.Pattern:
    return re.compile(rf"^\.{re.escape(name)}\.(?:resume\.pt\.)?[a-z0-9_]{{8}}\.(?:tmp(?:\.[A-Za-z0-9]+)?|old)$")


def stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Temporary siblings of `path` that a killed writer of ours left (our naming pattern only)."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    pattern = _stale_pattern(path.name)
    return sorted(p for p in path.parent.iterdir() if pattern.match(p.name))


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete what stale_temporaries(path) finds (files or folders); returns what was removed.

    Call only while nothing else writes `path` (a Snakemake job owns its outputs)."""
    removed = stale_temporaries(path)
    for p in removed:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return removed


# errno -> what the user should do; anything else gets the generic advice.
_OS_ERROR_ADVICE = {
    errno.ENOSPC: "free space on that filesystem (temporaries of killed runs, .<name>.*.tmp*, are safe to "
                  "delete; see docs/troubleshooting.md) and rerun: training resumes from its last resume file",
    errno.EDQUOT: "the disk quota is exhausted: free space or raise the quota, then rerun",
    errno.EACCES: "make the path readable/writable for this user (or write results elsewhere), then rerun",
    errno.EPERM: "make the path readable/writable for this user (or write results elsewhere), then rerun",
    errno.EROFS: "the filesystem is mounted read-only: run from a writable folder, then rerun",
    errno.EIO: "the disk or network filesystem reported an I/O error: check it (dmesg, storage status), then rerun",
}


def os_error_in(exc: BaseException | None) -> OSError | None:
    """The OSError behind `exc` (itself, or in its cause/context chain); torch's zip writer reports a full
    disk as a RuntimeError whose text mentions it, which counts as ENOSPC."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno is not None and not isinstance(exc, InputError):
            return exc
        if isinstance(exc, RuntimeError) and "No space left on device" in str(exc):
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        exc = exc.__cause__ or exc.__context__
    return None


def os_error_message(e: OSError) -> str:
    """One line: the path, the errno text and what to do."""
    where = e.filename if e.filename is not None else "(path unknown)"
    if getattr(e, "filename2", None):
        where = f"{where} -> {e.filename2}"
    name = errno.errorcode.get(e.errno, str(e.errno)) if e.errno is not None else "?"
    text = e.strerror or os.strerror(e.errno or 0)
    advice = _OS_ERROR_ADVICE.get(e.errno, "fix the cause above, then rerun")
    return f"{where}: {text} ({name}); {advice}"


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
    needed = _tensor_bytes(obj)
    check_free_space(path, needed)
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            torch.save(obj, f)
    except RuntimeError as e:
        raise _write_failure(e, path, needed) from None


def _write_failure(e: RuntimeError, path: str | os.PathLike, needed: int) -> BaseException:
    """The real cause of a failed torch.save: its zip writer turns whatever the file's write raised (an
    interrupt, a full disk, an I/O error) into "unexpected pos ..." and keeps the cause as the context."""
    cause = e.__context__
    while cause is not None and not isinstance(cause, (KeyboardInterrupt, SystemExit, OSError)):
        cause = cause.__context__
    if isinstance(cause, (KeyboardInterrupt, SystemExit)):
        return cause  # Ctrl-C or a stop while writing: an interrupt, not a disk problem
    if isinstance(cause, OSError) and cause.errno is not None:
        return OSError(cause.errno, cause.strerror or os.strerror(cause.errno), str(path))
    if "No space left on device" in str(e) or _free_bytes(path) < needed:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return RuntimeError(f"{path}: writing the file failed ({first[:200]})")


def _free_bytes(path: str | os.PathLike) -> int:
    folder = Path(path).parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return 2 ** 62


def _tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in a nested dict/list: what torch.save will write, give or take metadata."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def check_free_space(path: str | os.PathLike, needed: int) -> None:
    """OSError(ENOSPC) naming `path` when its filesystem has less than `needed` bytes free: a checkpoint
    then fails before writing instead of after filling the disk."""
    free = _free_bytes(path)
    if needed > free:
        raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (needs about {needed / 2**20:.0f} MiB, "
                                    f"{free / 2**20:.0f} MiB free)", str(path))


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

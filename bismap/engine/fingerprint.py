"""Fingerprints of a stage's configuration and inputs: a resume is valid only when they match.

The trainer resumes from `<checkpoint>.resume.pt` only when the fingerprint stored there equals
the one computed from the current config slices and inputs, so a changed value or input file
never continues a stale run.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def path_signature(path: Any) -> Any:
    """Identify an input by path, size and modification time, so changed content invalidates a resume."""
    if path is None:
        return None
    p = Path(path)
    try:
        st = p.stat()
    except OSError:
        return str(p)
    if p.is_dir():
        return [str(p), st.st_mtime_ns, sum(1 for _ in p.iterdir())]
    return [str(p), st.st_size, st.st_mtime_ns]


def spec_signature(spec: dict | None) -> Any:
    """A dataset spec plus the signatures of the folders it names (root, images, labels)."""
    if spec is None:
        return None
    sig = dict(spec)
    for key in ("root", "images", "labels"):
        value = spec.get(key)
        if value is not None and value != "none":
            sig[f"{key}__stat"] = path_signature(value)
    return sig


def fingerprint(**parts: Any) -> str:
    """sha256 of the JSON of every config slice and input that determines a stage's result.

    The trainer resumes from `<checkpoint>.resume.pt` only when this matches, so a changed
    config value or input never continues a stale run.
    """
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()

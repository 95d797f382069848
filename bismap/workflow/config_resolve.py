"""Config values that follow from other keys, resolved once after validation (rules/config.smk).

A key whose right value depends on another one (the evaluation protocol on the source dataset) takes
`auto` as its default; the workflow replaces it by the concrete value before any rule reads it, so
rule params, logs and results hold the value actually used, and a run that names the value itself
has the same params as one that lets `auto` choose it.
"""
from __future__ import annotations

from typing import Any


def evaluation_protocol(config: dict[str, Any]) -> str:
    """`synthia` (mIoU-16 headline) for a SYNTHIA source, else `cityscapes19`, unless set explicitly.

    The synthetic benchmark's source is in the GTA5 layout with all 19 classes, whatever
    data.source.dataset says (it is not read then)."""
    protocol = config["evaluation"]["protocol"]
    if protocol != "auto":
        return protocol
    synthetic = config["synthetic"]["enabled"]
    return "synthia" if not synthetic and config["data"]["source"]["dataset"] == "synthia" else "cityscapes19"


def resolve_auto(config: dict[str, Any]) -> None:
    """Replace every `auto` value by what it resolves to, in place."""
    config["evaluation"]["protocol"] = evaluation_protocol(config)

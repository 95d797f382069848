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


# pseudo_labels.threshold: null stands for the threshold on the scale of the selection's score.
LOGLIK_THRESHOLD = 100.0      # the original's tau on the GMM log-likelihood
CONFIDENCE_THRESHOLD = 0.9    # a softmax probability


def pseudo_label_threshold(config: dict[str, Any]) -> float:
    """`pseudo_labels.threshold`, or when null the default of its selection's scale: 100 for `loglik`
    (the original's), 0.9 for the softmax-confidence selections (`percentile` ignores it)."""
    cfg = config["pseudo_labels"]
    if cfg["threshold"] is not None:
        return float(cfg["threshold"])
    return LOGLIK_THRESHOLD if cfg["selection"] in ("loglik", "percentile") else CONFIDENCE_THRESHOLD


def resolve_auto(config: dict[str, Any]) -> None:
    """Replace every `auto` (or null-means-derived) value by what it resolves to, in place."""
    config["evaluation"]["protocol"] = evaluation_protocol(config)
    config["pseudo_labels"]["threshold"] = pseudo_label_threshold(config)

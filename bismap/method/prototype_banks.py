"""Which feature banks the MAPs are fitted on; rules import it at parse time, so it imports nothing (no torch)."""
from __future__ import annotations


def bank_names(cfg: dict) -> list[str]:
    """The banks `prototypes.fit_on` reads, in the order fit_prototypes receives them (source first):
    `target_min_rows` > 0 also reads the source bank, for the classes with too few target rows."""
    fit_on, min_rows = str(cfg.get("fit_on", "source")), int(cfg.get("target_min_rows", 0))
    if fit_on == "target":
        return ["source", "target"] if min_rows > 0 else ["target"]
    return ["source", "target"] if fit_on == "both" else ["source"]

"""`resources.<stage>.gpus: 2` on a local run: the warm-up trains on 2 CPU ranks (engine.launch) and
gives the one-process checkpoint up to float rounding (global batch split 2 x 2, synchronised BN)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "configs" / "tiny.yaml"
# Dropout masks are drawn per rank, and CE is a mean per rank (equal only when every rank's crops hold
# as many labelled pixels: no scale jitter padding): without both, N ranks differ from 1 by design.
EQUAL = ("train: {batch_size: 4}\ntrain_overrides:\n  warmup: {iterations: 4}\nmodel: {dropout: 0.0}\n"
         "augment: {scale: [1.0, 1.0]}\n")
TOLERANCE = 1e-4  # absolute, on every weight and BN statistic after 4 iterations (measured: ~1e-6)


def warmup(workdir: Path, gpus: int) -> subprocess.CompletedProcess:
    overlay = workdir.parent / f"gpus{gpus}.yaml"
    overlay.write_text(EQUAL + f"resources:\n  warmup: {{gpus: {gpus}}}\n")
    return subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "-d", str(workdir), "--configfile",
                           str(TINY), str(overlay), "--until", "warmup"], cwd=REPO, capture_output=True, text=True,
                          timeout=600)


def max_difference(a: Path, b: Path) -> float:
    x, y = (torch.load(p, weights_only=True)["model"] for p in (a, b))
    assert x.keys() == y.keys()
    return max(float((x[k].float() - y[k].float()).abs().max()) for k in x if x[k].is_floating_point())


@pytest.mark.slow  # two tiny warm-ups, ~40 s
def test_two_rank_warmup_equals_one_process(tmp_path):
    one, two = warmup(tmp_path / "one", 1), warmup(tmp_path / "two", 2)
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.returncode == 0, two.stderr[-3000:]
    log = (tmp_path / "two" / "logs" / "tiny" / "warmup.log").read_text()
    assert "started 2 ranks (local processes" in log and "rank 0/2" in log and "[rank 1] rank 1/2" in log, log
    assert "(world 2," in log and log.count("wrote results/tiny/models/warmup.pt") == 1, log  # rank 0 writes
    rel = Path("results") / "tiny" / "models" / "warmup.pt"
    assert max_difference(tmp_path / "one" / rel, tmp_path / "two" / rel) < TOLERANCE
    # the logged losses are the global batch's (the ranks' means averaged), as one process logs them
    losses = [re.findall(r"^\[\d+/4\] .* ce (\d+\.\d+)", (tmp_path / d / "logs" / "tiny" / "warmup.log").read_text(),
                         re.M) for d in ("one", "two")]
    assert len(losses[0]) == 4 and losses[0] == losses[1], losses

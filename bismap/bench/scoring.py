"""GMM scoring in the pseudo-label stage against the network forward of the same image.

One image through the stage's own code (`pseudo_labels.gmm_predictor`): the forward, and,
timed apart, everything after it (`label_features`: upsampling of the stride-4 features to the
image size, float32 class scores of 19 classes x K components, float64 re-scoring of near ties).
Share = scoring / (forward + scoring), the stage's per-image time less PNG writing; best of
the repeats (at least 2e6 / pixels of them, at most 20). GMMs: per class, K feature vectors of the \
image as means, the feature
variance x U(0.5, 2) as variances. Labels are compared with a float64 reference (float64
upsampling and float64 scores of the same stride-4 features): `ties` pixels had their two best
classes within prototypes.TIE_RTOL and were re-scored; `mismatch` must be 0.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from bismap.bench.common import PROFILE_COLUMNS, best_time, default_config, profile_top, table
from bismap.data.labels import NUM_CLASSES
from bismap.method.prototypes import TIE_RTOL, DiagonalGMM, class_log_likelihood


def synthetic_gmms(feat: torch.Tensor, k: int, seed: int = 0) -> dict[int, DiagonalGMM]:
    """Class GMMs around the image's own features [D, h, w] (so classes compete as real ones do)."""
    g = torch.Generator().manual_seed(seed)
    rows = feat.flatten(1).T.double()
    var = rows.var(0, unbiased=False).clamp_min(1e-6)
    out = {}
    for c in range(NUM_CLASSES):
        m = DiagonalGMM(k)
        m.means_ = rows[torch.randint(rows.shape[0], (k,), generator=g)]
        m.variances_ = var * (0.5 + 1.5 * torch.rand(k, rows.shape[1], generator=g, dtype=torch.float64))
        m.weights_ = torch.full((k,), 1.0 / k, dtype=torch.float64)
        out[c] = m
    return out


def reference_labels(feat: torch.Tensor, gmms: dict, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 upsampling and scoring: (labels [H*W], gap between the two best classes [H*W])."""
    from bismap.stages.pseudo_labels import upsampled_rows

    labels, gaps = [], []
    for _, f in upsampled_rows(feat.double(), size, max(1, 100_000 // size[1])):
        top, arg = class_log_likelihood(gmms, f, NUM_CLASSES, dtype=torch.float64).topk(2, dim=1)
        labels.append(arg[:, 0])
        gaps.append((top[:, 0] - top[:, 1]) / (1.0 + top[:, 0].abs()))
    return torch.cat(labels), torch.cat(gaps)


def run_one(size: tuple[int, int], feature_dim: int, k: int = 8, repeats: int = 1, seed: int = 0,
            profile: bool = False) -> dict[str, Any]:
    from bismap.engine.inference import forward, to_input
    from bismap.models import build_model
    from bismap.stages.pseudo_labels import gmm_predictor

    cfg = default_config()
    mcfg = {**cfg["model"], "decoder_channels": int(feature_dim)}
    torch.manual_seed(seed)
    model = build_model(mcfg).eval()
    mean, std = cfg["data"]["normalize"]["mean"], cfg["data"]["normalize"]["std"]
    rng = np.random.default_rng(seed)
    item = {"image": rng.integers(0, 256, (*size, 3), dtype=np.uint8)}
    x = to_input([item], mean, std, torch.device("cpu"))
    feat, _ = forward(model, x)
    gmms = synthetic_gmms(feat[0], k, seed)
    chunk = int(cfg["pseudo_labels"]["chunk_pixels"])
    predict = gmm_predictor(model, gmms, mean=mean, std=std, device=torch.device("cpu"), flip=False,
                            chunk_pixels=chunk, classes=None, rule="gmm", score="loglik")
    reps = max(repeats, min(20, int(2e6 // (size[0] * size[1]))))  # small images: more repeats
    t_fwd = best_time(lambda: forward(model, to_input([item], mean, std, torch.device("cpu"))), reps, warmup=1)
    feat_logits = forward(model, x)
    t_score = best_time(lambda: predict.label_features(*feat_logits, size), reps,
                        warmup=1 if size[0] * size[1] < 1e6 else 0)
    label, _ = predict(item)
    ref, gap = reference_labels(feat[0], gmms, size)
    got = torch.from_numpy(label.reshape(-1).astype(np.int64))
    ties = gap <= TIE_RTOL
    diff = got != ref
    prof = profile_top(lambda: predict(item), rows=8) if profile else None
    px = size[0] * size[1]
    return {"size": f"{size[0]}x{size[1]}", "d": feature_dim, "k": k, "pixels": px,
            "forward_s": t_fwd, "scoring_s": t_score, "share": t_score / (t_fwd + t_score),
            "scoring_px_s": px / t_score, "forward_px_s": px / t_fwd,
            "ties": int(ties.sum()), "differ": int(diff.sum()), "mismatch": int((diff & ~ties).sum()),
            "profile": prof}


def run(sizes: list[tuple[int, int, int]], repeats: int = 1) -> dict:
    rows = []
    for i, (h, w, d) in enumerate(sizes):
        r = run_one((h, w), d, repeats=repeats, profile=i == len(sizes) - 1)
        print(f"bench scoring: {r['size']} D={d}: forward {r['forward_s']:.3f} s, scoring {r['scoring_s']:.3f} s, "
              f"share {r['share']:.1%}, ties {r['ties']}, mismatches {r['mismatch']}", flush=True)
        rows.append(r)
    return {"rows": rows, "tie_rtol": TIE_RTOL, "profile": rows[-1].pop("profile"),
            "profile_size": rows[-1]["size"]}


def markdown(res: dict) -> str:
    return (__doc__.split("\n\n", 1)[1].strip() + f" TIE_RTOL = {res['tie_rtol']:g} (relative to 1 + |best|)."
            "\n\n" + table(res["rows"], [
                ("size", "image"), ("d", "D"), ("k", "K"), ("forward_s", "forward s"),
                ("scoring_s", "scoring s"), ("share", "scoring share of the stage"),
                ("scoring_px_s", "scoring pixels/s"), ("forward_px_s", "forward pixels/s"),
                ("ties", "near-tie pixels (re-scored)"), ("differ", "labels != float64"),
                ("mismatch", "of which outside the tolerance")])
            + f"\n\nProfile of the predictor on one {res['profile_size']} image (torch.profiler, self CPU time; "
            "the forward's convolutions are part of it):\n\n" + table(res["profile"], PROFILE_COLUMNS))

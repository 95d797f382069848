"""GMM fit: bismap's DiagonalGMM against scikit-learn's GaussianMixture(diag), same data, same start.

Both start from the same parameters (means: k seeded random rows; weights and variances
from the nearest-mean hard assignment, given to scikit-learn as weights_init/precisions_init with
the trivial init_params="random_from_data") and run exactly `iters` EM iterations (tol 0).
scikit-learn gets the data in float64 (its precision of reference). Reported: time ratio
(scikit-learn / bismap) and the final mean log-likelihood of both (both scored in float64).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from bismap.bench.common import PROFILE_COLUMNS, best_time, profile_top, table
from bismap.method.prototypes import DiagonalGMM


def synthetic_bank(n: int, d: int, k: int, seed: int = 0) -> np.ndarray:
    """Anisotropic blobs shaped like a decoder-feature bank (non-negative offset, mixed scales), float32."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(1.0, 1.0, size=(k, d))
    scales = rng.uniform(0.2, 1.5, size=(k, d))
    lab = rng.integers(0, k, size=n)
    out = np.empty((n, d), np.float32)
    for s in range(0, n, 50_000):
        lb = lab[s:s + 50_000]
        out[s:s + 50_000] = centres[lb] + rng.normal(size=(len(lb), d)) * scales[lb]
    return out


def start(x: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(weights, means, variances) of the shared start: k random rows, hard assignment, reg_covar 1e-6."""
    rng = np.random.default_rng(seed)
    means = x[rng.choice(len(x), k, replace=False)].astype(np.float64)
    xt, mt = torch.from_numpy(x).double(), torch.from_numpy(means)
    lab = torch.cdist(xt, mt).argmin(1).numpy()
    nk = np.bincount(lab, minlength=k) + 10 * np.finfo(np.float64).eps
    var = np.stack([x[lab == j].astype(np.float64).var(0) if (lab == j).any() else x.var(0) for j in range(k)])
    return nk / nk.sum(), means, var + 1e-6


def run_one(n: int, d: int = 256, k: int = 8, iters: int = 20, threads: int | None = None, seed: int = 0,
        repeats: int = 1) -> dict:
    from sklearn.mixture import GaussianMixture

    if threads:
        torch.set_num_threads(threads)
    x = synthetic_bank(n, d, k, seed)
    w0, m0, v0 = start(x, k, seed)
    xd = x.astype(np.float64)  # what scikit-learn works on (it converts float32 to float64 itself)
    ref = GaussianMixture(k, covariance_type="diag", tol=0.0, max_iter=iters, reg_covar=1e-6, weights_init=w0,
                          means_init=m0, precisions_init=1.0 / v0, init_params="random_from_data", random_state=0)
    t_ref = best_time(lambda: ref.fit(xd), repeats)
    ll_ref = float(ref.score(xd))
    g = DiagonalGMM(k, tol=0.0, max_iter=iters, reg_covar=1e-6)
    xt = torch.from_numpy(x)
    t_ours = best_time(lambda: g.fit(xt, means_init=torch.from_numpy(m0)), repeats)
    ll_ours = float(DiagonalGMM(dtype=torch.float64).load_state_dict(g.state_dict()).score(xt))
    return {"n": n, "d": d, "k": k, "iters": iters, "threads": torch.get_num_threads(),
            "sklearn_s": round(t_ref, 3), "bismap_s": round(t_ours, 3), "speedup": t_ref / t_ours,
            "ll_sklearn": ll_ref, "ll_bismap": ll_ours, "ll_rel_diff": abs(ll_ours - ll_ref) / abs(ll_ref),
            "iters_sklearn": int(ref.n_iter_), "iters_bismap": int(g.n_iter_)}


def run(sizes: Sequence[int], d: int = 256, k: int = 8, iters: int = 20, repeats: int = 1) -> dict:
    rows = [run_one(n, d, k, iters, repeats=repeats) for n in sizes]
    x = torch.from_numpy(synthetic_bank(sizes[0], d, k))
    m0 = torch.from_numpy(start(x.numpy(), k, 0)[1])
    prof = profile_top(lambda: DiagonalGMM(k, tol=0.0, max_iter=iters).fit(x, means_init=m0))
    for r in rows:
        print(f"bench gmm: N={r['n']}: scikit-learn {r['sklearn_s']} s, bismap {r['bismap_s']} s, "
              f"x{r['speedup']:.1f}, mean loglik rel. diff {r['ll_rel_diff']:.1e}", flush=True)
    return {"rows": rows, "profile": prof, "profile_n": sizes[0]}


def markdown(res: dict) -> str:
    return (__doc__.split("\n\n", 1)[1].strip() + " Both with all the process's threads; time = best of the "
            "repeats.\n\n" + table(res["rows"], [
                ("n", "N"), ("d", "D"), ("k", "K"), ("iters", "EM iterations"), ("sklearn_s", "scikit-learn s"),
                ("bismap_s", "bismap s"), ("speedup", "speed-up (scikit-learn / bismap)"),
                ("ll_sklearn", "mean loglik scikit-learn"), ("ll_bismap", "mean loglik bismap"),
                ("ll_rel_diff", "relative difference")])
            + f"\n\nProfile of one bismap fit (N={res['profile_n']}, torch.profiler, self CPU time):\n\n"
            + table(res["profile"], PROFILE_COLUMNS))

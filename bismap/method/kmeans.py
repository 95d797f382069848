"""Seeded k-means in torch, batched so memory stays bounded (the GMM initialiser and the STM's target prototypes)."""
from __future__ import annotations

import math

import torch

__all__ = ["kmeans", "kmeans_best_draw"]


def _device(name: str | torch.device) -> torch.device:
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _batched_sq_dist_min(x: torch.Tensor, c: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centre (index, squared distance) for every row of x, batch by batch."""
    c2 = (c * c).sum(1)
    idx = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    dist = torch.empty(x.shape[0], dtype=c.dtype, device=x.device)
    for s in range(0, x.shape[0], batch_size):
        xb = x[s:s + batch_size].to(c.dtype)
        d = (xb * xb).sum(1, keepdim=True) - 2.0 * xb @ c.T + c2[None]
        dmin, imin = d.min(1)
        idx[s:s + batch_size] = imin
        dist[s:s + batch_size] = dmin.clamp_min(0)
    return idx, dist


def _kmeans_pp_init(x: torch.Tensor, k: int, gen: torch.Generator, batch_size: int) -> torch.Tensor:
    """k-means++ seeding (D^2 sampling); random numbers drawn on the CPU so results do not depend on the device."""
    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=gen))
    centres = [x[first].double()]
    _, best = _batched_sq_dist_min(x, centres[0][None], batch_size)
    for _ in range(1, k):
        p = best.double().cpu()
        total = float(p.sum())
        if total <= 0:
            j = int(torch.randint(n, (1,), generator=gen))
        else:
            j = int(torch.multinomial(p / total, 1, generator=gen))
        centres.append(x[j].double())
        _, d = _batched_sq_dist_min(x, centres[-1][None], batch_size)
        best = torch.minimum(best, d)
    return torch.stack(centres)


def _lloyd(x: torch.Tensor, c: torch.Tensor, gen: torch.Generator, max_iter: int, tol: float,
           batch_size: int) -> tuple[torch.Tensor, float, int]:
    """Lloyd iterations until the largest centre shift is below tol (absolute, in x's units).

    One pass per iteration: assignment and per-batch sums (one-hot matmul) in x's precision, accumulated in float64.
    """
    k, d = c.shape
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007  (the iteration count, returned after the loop)
        sums = torch.zeros(k, d, dtype=torch.float64, device=x.device)
        counts = torch.zeros(k, dtype=torch.float64, device=x.device)
        cx = c.to(x.dtype)
        c2 = (cx * cx).sum(1)
        for s in range(0, x.shape[0], batch_size):
            xb = x[s:s + batch_size]
            idx = (c2[None] - 2.0 * xb @ cx.T).argmin(1)  # ||x||^2 does not change the argmin
            onehot = torch.zeros(xb.shape[0], k, dtype=x.dtype, device=x.device).scatter_(1, idx[:, None], 1.0)
            sums += (onehot.T @ xb).double()  # exact for float64 x; float32 partial sums per batch otherwise
            counts += onehot.sum(0).double()  # exact: a batch has < 2^24 rows
        new = c.clone()
        full = counts > 0
        new[full] = sums[full] / counts[full, None]
        empty = (~full).nonzero().flatten()
        if len(empty):  # re-seed empty clusters on random points (seeded) rather than leaving them dead
            picks = torch.randint(x.shape[0], (len(empty),), generator=gen).to(x.device)
            new[empty] = x[picks].double()
        shift = float((new - c).norm(dim=1).max())
        c = new
        if shift < tol and len(empty) == 0:
            break
    _, dist = _batched_sq_dist_min(x, c, batch_size)
    return c, float(dist.sum()), it


def kmeans(x: torch.Tensor, k: int, seed: int = 0, n_init: int = 1, max_iter: int = 300, tol: float = 1e-4,
           init: str = "k-means++", batch_size: int = 65536, device: str | torch.device = "cpu"
           ) -> tuple[torch.Tensor, float]:
    """Seeded k-means: `n_init` restarts, keep the lowest sum of squared distances.

    `init` is "k-means++" (as scikit-learn's KMeans, used by the original STM) or "random"
    (k distinct data points, as the original GMM initialiser). Returns (centres [k, D] float64 on CPU, cost).
    """
    if x.ndim != 2:
        raise ValueError(f"kmeans expects [N, D], got {tuple(x.shape)}")
    n = x.shape[0]
    if n < k:
        raise ValueError(f"kmeans: {n} samples < k={k}")
    if not bool(torch.isfinite(x).all()):  # NaN distances would end in a bare multinomial or assert error
        raise ValueError("kmeans: the samples hold NaN or inf")
    if init not in ("k-means++", "random"):
        raise ValueError(f"kmeans: unknown init {init!r}")
    dev = _device(device)
    x = x.to(dev)
    gen = torch.Generator().manual_seed(int(seed))
    best_c, best_cost = None, math.inf
    for _ in range(max(1, int(n_init))):
        if init == "random":
            c0 = x[torch.randperm(n, generator=gen)[:k].to(dev)].double()
        else:
            c0 = _kmeans_pp_init(x, k, gen, batch_size)
        c, cost, _ = _lloyd(x, c0, gen, max_iter, tol, batch_size)
        if cost < best_cost:
            best_c, best_cost = c, cost
    assert best_c is not None
    return best_c.cpu(), best_cost


def kmeans_best_draw(x: torch.Tensor, k: int, seed: int, n_draws: int, max_iter: int, tol: float,
                     batch_size: int) -> torch.Tensor:
    """The original GMM initialiser: `n_draws` random sets of k distinct rows scored by their k-means
    cost; Lloyd iterations from the cheapest only. Returns centres [k, D] float64 on CPU."""
    n = x.shape[0]
    if n < k:
        raise ValueError(f"kmeans: {n} samples < k={k}")
    if not bool(torch.isfinite(x).all()):  # NaN distances would end in a bare multinomial or assert error
        raise ValueError("kmeans: the samples hold NaN or inf")
    gen = torch.Generator().manual_seed(int(seed))
    best, best_cost = None, math.inf
    for _ in range(max(1, int(n_draws))):
        c0 = x[torch.randperm(n, generator=gen)[:k].to(x.device)].double()
        _, dist = _batched_sq_dist_min(x, c0.to(x.dtype), batch_size)
        cost = float(dist.sum(dtype=torch.float64))
        if cost < best_cost:
            best, best_cost = c0, cost
    assert best is not None
    c, _, _ = _lloyd(x, best, gen, max_iter, tol, batch_size)
    return c.cpu()

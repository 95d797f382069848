"""Prototype models in torch: seeded k-means and a diagonal-covariance Gaussian mixture.

Why our own code rather than scikit-learn: the feature banks are large (300k x 256 per
class in the paper setting) and the pseudo-label stage scores millions of pixels per
image; both run on the GPU here, with every pass over the data done in fixed-size batches
so memory stays bounded. The EM loop follows scikit-learn's GaussianMixture(diag) step
for step (same M-step, same stopping rule) so the two can be compared in tests.
"""
from __future__ import annotations

import math
import os
from typing import Any

import torch

from bismap.io import InputError, load_torch_file

__all__ = ["kmeans", "DiagonalGMM", "class_log_likelihood"]

_LOG_2PI = math.log(2.0 * math.pi)


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

    One pass per iteration: assignment (in x's precision) and float64 sums (one-hot matmul) together.
    """
    k, d = c.shape
    it = 0
    for it in range(1, max_iter + 1):
        sums = torch.zeros(k, d, dtype=torch.float64, device=x.device)
        counts = torch.zeros(k, dtype=torch.float64, device=x.device)
        cx = c.to(x.dtype)
        c2 = (cx * cx).sum(1)
        for s in range(0, x.shape[0], batch_size):
            xb = x[s:s + batch_size]
            idx = (c2[None] - 2.0 * xb @ cx.T).argmin(1)  # ||x||^2 does not change the argmin
            onehot = torch.zeros(xb.shape[0], k, dtype=torch.float64, device=x.device)
            onehot[torch.arange(xb.shape[0], device=x.device), idx] = 1.0
            sums += onehot.T @ xb.double()
            counts += onehot.sum(0)
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


class DiagonalGMM:
    """Gaussian mixture with diagonal covariances ("anisotropic prototypes"), fitted by batched EM.

    Memory per pass is O(batch_size * (D + K)); statistics are accumulated in float64.
    """

    def __init__(self, n_components: int = 8, tol: float = 1e-3, max_iter: int = 100, reg_covar: float = 1e-6,
                 seed: int = 0, batch_size: int = 65536, device: str | torch.device = "cpu", n_init: int = 20,
                 kmeans_tol: float = 1e-3, kmeans_max_iter: int = 300) -> None:
        self.n_components = int(n_components)
        self.tol = float(tol)
        self.max_iter = int(max_iter)
        self.reg_covar = float(reg_covar)
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self.device = _device(device)
        self.n_init = int(n_init)
        self.kmeans_tol = float(kmeans_tol)
        self.kmeans_max_iter = int(kmeans_max_iter)
        self.weights_: torch.Tensor | None = None
        self.means_: torch.Tensor | None = None
        self.variances_: torch.Tensor | None = None
        self.converged_ = False
        self.n_iter_ = 0
        self.lower_bound_ = -math.inf

    # ------------------------------------------------------------------ fitting
    def _init_means(self, x: torch.Tensor) -> torch.Tensor:
        """k-means on min-max normalised data (as the original), mapped back to the data scale."""
        lo = x.min(0).values.double()
        span = x.max(0).values.double() - lo
        span[span <= 0] = 1.0
        xn = ((x.double() - lo) / span).float()
        c, _ = kmeans(xn, self.n_components, seed=self.seed, n_init=self.n_init, max_iter=self.kmeans_max_iter,
                      tol=self.kmeans_tol, init="random", batch_size=self.batch_size, device=self.device)
        return c.to(self.device) * span + lo

    def _init_from_hard_assignment(self, x: torch.Tensor, means: torch.Tensor) -> None:
        """Weights and variances from the nearest-mean hard assignment (what scikit-learn does)."""
        k, d = means.shape
        eps10 = 10 * torch.finfo(torch.float64).eps
        idx, _ = _batched_sq_dist_min(x, means, self.batch_size)
        nk = torch.zeros(k, dtype=torch.float64, device=self.device)
        sx = torch.zeros(k, d, dtype=torch.float64, device=self.device)
        sxx = torch.zeros(k, d, dtype=torch.float64, device=self.device)
        for s in range(0, x.shape[0], self.batch_size):
            xb = x[s:s + self.batch_size].double()
            ib = idx[s:s + self.batch_size]
            nk.index_add_(0, ib, torch.ones_like(ib, dtype=torch.float64))
            sx.index_add_(0, ib, xb)
            sxx.index_add_(0, ib, xb * xb)
        nk = nk + eps10
        mu_r = sx / nk[:, None]
        var = sxx / nk[:, None] - 2 * mu_r * sx / nk[:, None] + mu_r ** 2 + self.reg_covar
        empty = nk < 0.5
        if bool(empty.any()):  # a dead component would stay dead; give it the global variance instead
            gvar = x.double().var(0, unbiased=False) + self.reg_covar
            var[empty] = gvar
        w = nk / nk.sum()
        self.weights_, self.means_, self.variances_ = w, means.clone(), var.clamp_min(self.reg_covar)

    def _log_prob_components(self, xb: torch.Tensor) -> torch.Tensor:
        """log(pi_k) + log N(x; mu_k, diag var_k) for a batch: [B, K] (matmul form, float64)."""
        assert self.means_ is not None and self.variances_ is not None and self.weights_ is not None
        prec = 1.0 / self.variances_
        xb = xb.double()
        quad = (xb * xb) @ prec.T - 2.0 * xb @ (self.means_ * prec).T + (self.means_ ** 2 * prec).sum(1)[None]
        logdet = torch.log(self.variances_).sum(1)
        d = self.means_.shape[1]
        return -0.5 * (d * _LOG_2PI + logdet[None] + quad) + torch.log(self.weights_)[None]

    def fit(self, x: torch.Tensor, means_init: torch.Tensor | None = None) -> "DiagonalGMM":
        """EM until the mean log-likelihood changes by less than tol, or max_iter iterations."""
        if x.ndim != 2 or x.shape[0] == 0:
            raise ValueError(f"DiagonalGMM.fit expects non-empty [N, D], got {tuple(x.shape)}")
        x = x.to(self.device)
        n, d = x.shape
        if means_init is None:
            if n < self.n_components:
                raise ValueError(f"DiagonalGMM: {n} samples < n_components={self.n_components}")
            means = self._init_means(x)
        else:
            means = torch.as_tensor(means_init, dtype=torch.float64, device=self.device)
            if means.shape != (self.n_components, d):
                raise ValueError(f"means_init shape {tuple(means.shape)} != {(self.n_components, d)}")
        self._init_from_hard_assignment(x, means)
        k = self.n_components
        eps10 = 10 * torch.finfo(torch.float64).eps
        lower_bound = -math.inf
        self.converged_ = False
        for it in range(1, self.max_iter + 1):
            prev = lower_bound
            nk = torch.zeros(k, dtype=torch.float64, device=self.device)
            sx = torch.zeros(k, d, dtype=torch.float64, device=self.device)
            sxx = torch.zeros(k, d, dtype=torch.float64, device=self.device)
            total = 0.0
            for s in range(0, n, self.batch_size):
                xb = x[s:s + self.batch_size].double()
                lp = self._log_prob_components(xb)
                norm = torch.logsumexp(lp, 1)
                r = torch.exp(lp - norm[:, None])
                total += float(norm.sum())
                nk += r.sum(0)
                sx += r.T @ xb
                sxx += r.T @ (xb * xb)
            lower_bound = total / n
            nk = nk + eps10
            mu = sx / nk[:, None]
            var = sxx / nk[:, None] - 2.0 * mu * sx / nk[:, None] + mu ** 2 + self.reg_covar
            self.weights_ = nk / nk.sum()
            self.means_ = mu
            self.variances_ = var.clamp_min(self.reg_covar)
            self.n_iter_ = it
            if lower_bound - prev < self.tol:
                self.converged_ = True
                break
        self.lower_bound_ = lower_bound
        return self

    # ------------------------------------------------------------------ scoring
    def _check_fitted(self) -> None:
        if self.means_ is None:
            raise RuntimeError("DiagonalGMM is not fitted")

    def score_samples(self, x: torch.Tensor) -> torch.Tensor:
        """Per-row log-likelihood log p(x) (float64, on x's device), computed in batches."""
        self._check_fitted()
        out = torch.empty(x.shape[0], dtype=torch.float64, device=self.device)
        for s in range(0, x.shape[0], self.batch_size):
            xb = x[s:s + self.batch_size].to(self.device)
            out[s:s + self.batch_size] = torch.logsumexp(self._log_prob_components(xb), 1)
        return out.to(x.device)

    def score(self, x: torch.Tensor) -> float:
        return float(self.score_samples(x).mean())

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Most responsible component per row."""
        self._check_fitted()
        out = torch.empty(x.shape[0], dtype=torch.long, device=self.device)
        for s in range(0, x.shape[0], self.batch_size):
            out[s:s + self.batch_size] = self._log_prob_components(x[s:s + self.batch_size].to(self.device)).argmax(1)
        return out.to(x.device)

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        self._check_fitted()
        assert self.means_ is not None and self.variances_ is not None and self.weights_ is not None
        return {
            "n_components": self.n_components, "n_features": int(self.means_.shape[1]),
            "weights": self.weights_.cpu(), "means": self.means_.cpu(), "variances": self.variances_.cpu(),
            "converged": bool(self.converged_), "n_iter": int(self.n_iter_), "lower_bound": float(self.lower_bound_),
            "tol": self.tol, "max_iter": self.max_iter, "reg_covar": self.reg_covar, "seed": self.seed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> "DiagonalGMM":
        try:
            self.n_components = int(state["n_components"])
            self.weights_ = torch.as_tensor(state["weights"], dtype=torch.float64).to(self.device)
            self.means_ = torch.as_tensor(state["means"], dtype=torch.float64).to(self.device)
            self.variances_ = torch.as_tensor(state["variances"], dtype=torch.float64).to(self.device)
        except KeyError as e:
            raise ValueError(f"DiagonalGMM state lacks {e}") from None
        if self.means_.shape != self.variances_.shape or self.weights_.shape != (self.means_.shape[0],):
            raise ValueError("DiagonalGMM state has inconsistent shapes")
        self.converged_ = bool(state.get("converged", False))
        self.n_iter_ = int(state.get("n_iter", 0))
        self.lower_bound_ = float(state.get("lower_bound", -math.inf))
        for key in ("tol", "max_iter", "reg_covar", "seed"):
            if key in state:
                setattr(self, key, type(getattr(self, key))(state[key]))
        return self

    def save(self, path: str | os.PathLike) -> None:
        from bismap.io import save_torch

        save_torch(path, {"format": "bismap-gmm-single/1", "state": self.state_dict()})

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> "DiagonalGMM":
        from bismap.io import InputError

        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
            state = obj["state"]
        except FileNotFoundError:
            raise InputError(f"{path}: file not found") from None
        except Exception as e:  # noqa: BLE001 - any unreadable file is a user input problem
            raise InputError(f"{path}: not a saved DiagonalGMM ({type(e).__name__})") from None
        return cls(device=device).load_state_dict(state)


def class_log_likelihood(gmms: dict[int, DiagonalGMM], x: torch.Tensor, num_classes: int,
                         batch_size: int = 65536) -> torch.Tensor:
    """[N, num_classes] mixture log-likelihood per class; classes without a GMM get -inf.

    All classes' components are stacked into one matmul per batch (what makes scoring
    millions of pixels per image affordable).
    """
    if not gmms:
        raise ValueError("class_log_likelihood: no GMMs")
    dev = next(iter(gmms.values())).device
    kmax = max(g.n_components for g in gmms.values())
    d = x.shape[1]
    classes = sorted(gmms)
    means = torch.zeros(len(classes), kmax, d, dtype=torch.float64, device=dev)
    var = torch.ones(len(classes), kmax, d, dtype=torch.float64, device=dev)
    logw = torch.full((len(classes), kmax), -math.inf, dtype=torch.float64, device=dev)
    for i, c in enumerate(classes):
        g = gmms[c]
        g._check_fitted()
        assert g.means_ is not None and g.variances_ is not None and g.weights_ is not None
        if g.means_.shape[1] != d:
            raise ValueError(f"class {c}: GMM has {g.means_.shape[1]} features, data has {d}")
        kc = g.n_components
        means[i, :kc], var[i, :kc], logw[i, :kc] = g.means_, g.variances_, torch.log(g.weights_)
    m = means.reshape(-1, d)
    prec = 1.0 / var.reshape(-1, d)
    const = -0.5 * (d * _LOG_2PI + torch.log(var.reshape(-1, d)).sum(1) + (m ** 2 * prec).sum(1)) + logw.reshape(-1)
    mp = (m * prec).T
    out = torch.full((x.shape[0], num_classes), -math.inf, dtype=torch.float64, device=x.device)
    idx = torch.tensor(classes, device=x.device)
    for s in range(0, x.shape[0], batch_size):
        xb = x[s:s + batch_size].to(dev).double()
        lp = -0.5 * ((xb * xb) @ prec.T) + xb @ mp + const[None]
        ll = torch.logsumexp(lp.reshape(xb.shape[0], len(classes), kmax), 2)
        out[s:s + batch_size, idx] = ll.to(x.device)
    return out


PROTOTYPES_FORMAT = "bismap-gmm/1"  # the file fit_prototypes writes


def load_prototypes(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[dict[int, DiagonalGMM], dict]:
    """Read a prototypes file written by run(): ({class: fitted GMM}, the raw dict)."""
    obj = load_torch_file(path, PROTOTYPES_FORMAT, "prototypes file")
    gmms = {int(c): DiagonalGMM(device=device).load_state_dict(s) for c, s in obj["classes"].items()}
    if not gmms:
        raise InputError(f"{path}: prototypes file holds no class GMM")
    return gmms, obj

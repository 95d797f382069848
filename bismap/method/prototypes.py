"""Prototype models in torch: a diagonal-covariance Gaussian mixture and the stacked class scorer.

Why our own code rather than scikit-learn: the feature banks are large (300k x 256 per class in the
paper setting) and the pseudo-label stage scores millions of pixels per image; both run on the GPU here,
with every pass in fixed-size batches so memory stays bounded. The EM loop follows scikit-learn's
GaussianMixture(diag) step for step (same M-step, same stopping rule) so the two can be compared in tests.
Passes run in float32 with float64 statistics (docs/performance.md). k-means: bismap.method.kmeans (re-exported).
"""
from __future__ import annotations

import math
import os
from typing import Any

import torch

from bismap.io import InputError, load_torch_file
from bismap.method.kmeans import _device, kmeans, kmeans_best_draw

__all__ = ["kmeans", "kmeans_best_draw", "DiagonalGMM", "ClassScorer", "best_class", "class_log_likelihood",
           "load_prototypes"]

_LOG_2PI = math.log(2.0 * math.pi)
PROTOTYPES_FORMAT = "bismap-gmm/1"  # the file fit_prototypes writes
TIE_RTOL = 1e-4  # best_class: float32 class scores closer than this (relative) are re-scored in float64


def _log_normalise(lp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-sum-exp over the last dim, exp(lp - that)): lp's responsibilities, in place of lp.

    Differences are clamped at -80 before exp: no subnormal results (exp is ~7x slower on them
    on this CPU); e^-80 ~ 2e-35 is far below either precision's resolution of a sum of 1.
    """
    m = lp.amax(-1, keepdim=True)
    e = lp.sub_(m).clamp_min_(-80.0).exp_()
    total = e.sum(-1, keepdim=True)
    return (total.log() + m).squeeze(-1), e.div_(total)


def _column_sums(x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """float64 column sums of [N, D]: per-batch sums in x's dtype (vectorised), accumulated in float64.

    (`x.sum(0, dtype=torch.float64)` takes a slow non-vectorised path: 3x a whole EM pass here.)
    """
    total = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    for s in range(0, x.shape[0], batch_size):
        total += x[s:s + batch_size].sum(0).double()
    return total


def _padded(k: int) -> int:
    """Columns of the E-step matmul: k rounded up to a multiple of 16."""
    return 16 * math.ceil(k / 16)


class DiagonalGMM:
    """Gaussian mixture with diagonal covariances ("anisotropic prototypes"), fitted by batched EM.

    Names mean what they mean in scikit-learn's GaussianMixture(covariance_type="diag"):
    `n_init` EM restarts (the best lower bound is kept), `reg_covar` added to every variance,
    `tol` on the absolute change of the mean log-likelihood. `kmeans_n_init` is the number of
    random k-means draws scored by their cost; only the best is iterated (the original's init).

    Speed: every pass works on the augmented rows [x - s, (x - s)^2] (s: the data mean), built
    once per fit in `dtype` (float32 by default); one fused pass per EM iteration computes the
    E-step as one matmul and the sufficient statistics as a second matmul on the same cached
    batch, accumulated in float64. Memory: the augmented copy (N x 2D) plus O(batch_size * K).
    """

    def __init__(self, n_components: int = 8, tol: float = 1e-3, max_iter: int = 100, reg_covar: float = 1e-6,
                 seed: int = 0, batch_size: int = 8192, device: str | torch.device = "cpu", n_init: int = 1,
                 kmeans_n_init: int = 20, kmeans_tol: float = 1e-3, kmeans_max_iter: int = 300,
                 dtype: torch.dtype = torch.float32) -> None:
        self.n_components = int(n_components)
        self.tol = float(tol)
        self.max_iter = int(max_iter)
        self.reg_covar = float(reg_covar)
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self.device = _device(device)
        self.n_init = int(n_init)
        self.kmeans_n_init = int(kmeans_n_init)
        self.kmeans_tol = float(kmeans_tol)
        self.kmeans_max_iter = int(kmeans_max_iter)
        self.dtype = dtype
        self.weights_: torch.Tensor | None = None
        self.means_: torch.Tensor | None = None
        self.variances_: torch.Tensor | None = None
        self.converged_ = False
        self.n_iter_ = 0
        self.lower_bound_ = -math.inf

    # ------------------------------------------------------------------ fitting
    def _init_means(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        """k-means on min-max normalised data (as the original), mapped back to the data scale."""
        lo = x.min(0).values.double()
        span = x.max(0).values.double() - lo
        span[span <= 0] = 1.0
        xn = (x.to(self.dtype) - lo.to(self.dtype)) / span.to(self.dtype)  # no float64 copy of the bank
        c = kmeans_best_draw(xn, self.n_components, seed=seed, n_draws=self.kmeans_n_init,
                             max_iter=self.kmeans_max_iter, tol=self.kmeans_tol, batch_size=self.batch_size)
        return c.to(self.device) * span + lo

    def _m_step(self, nk: torch.Tensor, sx: torch.Tensor, sxx: torch.Tensor,
                fallback_var: torch.Tensor | None = None) -> None:
        """Weights, means and variances from float64 sufficient statistics (scikit-learn's M-step).

        Statistics are in the centred coordinates of the fit; `fallback_var` (the data variance)
        replaces the variance of components with no hard-assigned row (only at initialisation).
        """
        nk = nk + 10 * torch.finfo(torch.float64).eps
        mu = sx / nk[:, None]
        var = sxx / nk[:, None] - mu * mu + self.reg_covar
        if fallback_var is not None:
            empty = nk < 0.5
            var[empty] = fallback_var + self.reg_covar
        self.weights_ = nk / nk.sum()
        self.means_ = mu
        self.variances_ = var.clamp_min(self.reg_covar)

    def _linear_form(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W [2D, K], c [K]) with log(pi_k N(x; mu_k, var_k)) = [x, x^2] @ W + c, in float64."""
        assert self.means_ is not None and self.variances_ is not None and self.weights_ is not None
        prec = 1.0 / self.variances_
        d = self.means_.shape[1]
        w = torch.cat([self.means_ * prec, -0.5 * prec], 1).T
        c = -0.5 * (d * _LOG_2PI + torch.log(self.variances_).sum(1) + (self.means_ ** 2 * prec).sum(1))
        return w, c + torch.log(self.weights_)

    def _stats_pass(self, xa: torch.Tensor, means: torch.Tensor | None = None
                    ) -> tuple[float, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One pass over the augmented rows [x - s, (x - s)^2]: (mean log-likelihood, nk, sx, sxx) in float64.

        With `means`, responsibilities are the nearest-mean hard assignment (initialisation);
        otherwise the E-step of the current parameters (and the log-likelihood is computed).
        Both matmuls of a batch read it while it is in the cache (squaring and copying each batch
        instead of storing x^2 was slower here: the strided writes cost more than the extra reads).
        """
        n, d = xa.shape[0], xa.shape[1] // 2
        k = self.n_components
        nk = torch.zeros(k, dtype=torch.float64, device=xa.device)
        s = torch.zeros(k, 2 * d, dtype=torch.float64, device=xa.device)
        total = torch.zeros((), dtype=torch.float64, device=xa.device)
        if means is None:
            w, c = self._linear_form()
        else:
            w = torch.cat([2.0 * means, -torch.ones_like(means)], 1).T  # -||x - m||^2 + ||m||^2
            c = -(means * means).sum(1)
        # MKL's fp32 GEMM is ~3x slower for 8 output columns than for 16 on this kind of CPU: pad
        # (padded components have log-probability -inf, so responsibility ~0, and are dropped)
        w = torch.nn.functional.pad(w, (0, _padded(k) - k)).to(xa.dtype)
        c = torch.nn.functional.pad(c, (0, _padded(k) - k), value=-math.inf).to(xa.dtype)
        for s0 in range(0, n, self.batch_size):
            xb = xa[s0:s0 + self.batch_size]
            lp = torch.addmm(c[None], xb, w)
            if means is None:
                norm, r = _log_normalise(lp)
                total += norm.sum().double()  # per-batch sums in dtype, accumulated in float64
            else:
                r = torch.zeros_like(lp).scatter_(1, lp.argmax(1, keepdim=True), 1.0)
            r = r[:, :k]
            nk += r.sum(0).double()
            s += (r.T @ xb).double()
        return float(total) / n, nk, s[:, :d], s[:, d:]

    def _augmented(self, x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        """[x - shift, (x - shift)^2] in self.dtype, built batch by batch."""
        n, d = x.shape
        xa = torch.empty(n, 2 * d, dtype=self.dtype, device=self.device)
        sh = shift.to(self.dtype)
        for s0 in range(0, n, self.batch_size):
            xb = xa[s0:s0 + self.batch_size, :d]
            torch.sub(x[s0:s0 + self.batch_size].to(self.device, self.dtype), sh, out=xb)
            torch.mul(xb, xb, out=xa[s0:s0 + self.batch_size, d:])
        return xa

    def _em(self, xa: torch.Tensor, means: torch.Tensor, var0: torch.Tensor) -> tuple[float, bool, int]:
        """Initial M-step from hard assignment to `means` (centred), then EM: (lower bound, converged, iterations)."""
        _, nk, sx, sxx = self._stats_pass(xa, means=means)
        self._m_step(nk, sx, sxx, fallback_var=var0)
        self.means_ = means.clone()
        lower_bound = -math.inf
        for it in range(1, self.max_iter + 1):
            prev = lower_bound
            lower_bound, nk, sx, sxx = self._stats_pass(xa)
            self._m_step(nk, sx, sxx)
            if abs(lower_bound - prev) < self.tol:
                return lower_bound, True, it
        return lower_bound, False, self.max_iter

    def fit(self, x: torch.Tensor, means_init: torch.Tensor | None = None) -> "DiagonalGMM":
        """EM until the mean log-likelihood changes by less than tol, or max_iter iterations; best of n_init."""
        if x.ndim != 2 or x.shape[0] == 0:
            raise ValueError(f"DiagonalGMM.fit expects non-empty [N, D], got {tuple(x.shape)}")
        x = x.to(self.device)
        n, d = x.shape
        if means_init is None and n < self.n_components:
            raise ValueError(f"DiagonalGMM: {n} samples < n_components={self.n_components}")
        if means_init is not None:
            means_init = torch.as_tensor(means_init, dtype=torch.float64, device=self.device)
            if means_init.shape != (self.n_components, d):
                raise ValueError(f"means_init shape {tuple(means_init.shape)} != {(self.n_components, d)}")
        shift = (_column_sums(x.to(self.dtype), self.batch_size) / n).to(self.dtype).double()  # exact in dtype
        xa = self._augmented(x, shift)
        mom = _column_sums(xa, self.batch_size) / n
        var0 = mom[d:] - mom[:d] ** 2
        best = None
        for i in range(max(1, self.n_init)):
            means = self._init_means(x, self.seed + i) if means_init is None else means_init
            lb, conv, it = self._em(xa, means - shift, var0)
            if best is None or lb > best[0]:
                best = (lb, conv, it, self.weights_, self.means_ + shift, self.variances_)
        self.lower_bound_, self.converged_, self.n_iter_, self.weights_, self.means_, self.variances_ = best
        return self

    # ------------------------------------------------------------------ scoring
    def _check_fitted(self) -> None:
        if self.means_ is None:
            raise RuntimeError("DiagonalGMM is not fitted")

    def _log_prob_components(self, xb: torch.Tensor) -> torch.Tensor:
        """log(pi_k) + log N(x; mu_k, diag var_k) of a batch: [B, K] in self.dtype, centred on the mean of the means."""
        w, c = self._linear_form()
        shift = self.means_.mean(0)  # type: ignore[union-attr]
        d = shift.shape[0]
        c = c + shift @ w[:d] + (shift * shift) @ w[d:]  # the same form written for x - shift
        w = w.clone()
        w[:d] += 2.0 * shift[:, None] * w[d:]
        xc = (xb.to(self.device, torch.float64) - shift).to(self.dtype)
        return torch.addmm(c.to(self.dtype)[None], xc, w[:d].to(self.dtype)) + (xc * xc) @ w[d:].to(self.dtype)

    def score_samples(self, x: torch.Tensor) -> torch.Tensor:
        """Per-row log-likelihood log p(x) (float64, on x's device), computed in batches in self.dtype."""
        self._check_fitted()
        out = torch.empty(x.shape[0], dtype=torch.float64, device=self.device)
        for s in range(0, x.shape[0], self.batch_size):
            out[s:s + self.batch_size] = torch.logsumexp(self._log_prob_components(x[s:s + self.batch_size]), 1)
        return out.to(x.device)

    def score(self, x: torch.Tensor) -> float:
        return float(self.score_samples(x).mean())

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Most responsible component per row."""
        self._check_fitted()
        out = torch.empty(x.shape[0], dtype=torch.long, device=self.device)
        for s in range(0, x.shape[0], self.batch_size):
            out[s:s + self.batch_size] = self._log_prob_components(x[s:s + self.batch_size]).argmax(1)
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


class ClassScorer:
    """All classes' components stacked into one linear form: per-class mixture log-likelihoods.

    log(pi N(x; mu, var)) = (x - s) @ A + (x - s)^2 @ B + c, with s the mean of all means (so
    float32 does not lose the quadratic form to cancellation; s is representable in float32, so
    callers may centre features themselves, e.g. before upsampling). Channel-major: two matmuls
    [C*K, D] @ [D, P] per chunk in `dtype`, then a log-sum-exp over each class's components along
    a contiguous pixel axis. Classes without a GMM get -inf.
    """

    def __init__(self, gmms: dict[int, DiagonalGMM], num_classes: int, dtype: torch.dtype = torch.float32) -> None:
        if not gmms:
            raise ValueError("class_log_likelihood: no GMMs")
        self.device = next(iter(gmms.values())).device
        self.num_classes, self.dtype = int(num_classes), dtype
        self.classes = sorted(gmms)
        self.kmax = max(g.n_components for g in gmms.values())
        forms = []
        for c in self.classes:
            g = gmms[c]
            g._check_fitted()
            w, b = g._linear_form()
            pad = self.kmax - g.n_components
            forms.append((torch.nn.functional.pad(w, (0, pad)), torch.nn.functional.pad(b, (0, pad), value=-math.inf),
                          g.means_))
        d = forms[0][2].shape[1]
        if any(f[2].shape[1] != d for f in forms):
            raise ValueError("class_log_likelihood: GMMs with different feature sizes")
        self.dim = d
        w = torch.cat([f[0] for f in forms], 1)
        c = torch.cat([f[1] for f in forms])
        shift = torch.cat([f[2] for f in forms]).mean(0).float().double()
        finite = torch.isfinite(c)
        c = torch.where(finite, c + shift @ w[:d] + (shift * shift) @ w[d:], c)
        w[:d] += 2.0 * shift[:, None] * w[d:]
        self.shift = shift.to(dtype)
        self.a_t, self.b_t = w[:d].T.contiguous().to(dtype), w[d:].T.contiguous().to(dtype)
        self.c = c.to(dtype)[:, None]
        self.index = torch.tensor(self.classes, device=self.device)

    def columns(self, xc: torch.Tensor) -> torch.Tensor:
        """Centred features [D, P] (x - self.shift) -> [len(self.classes), P] log-likelihoods in self.dtype."""
        xc = xc.to(self.device, self.dtype)
        lp = torch.addmm(self.c, self.a_t, xc)
        lp.addmm_(self.b_t, xc * xc)
        v = lp.view(len(self.classes), self.kmax, -1)
        m = v.amax(1, keepdim=True)
        e = v.sub_(m).clamp_min_(-80.0).exp_()  # no subnormal exp results (see _log_normalise)
        return e.sum(1).log_().add_(m.squeeze(1))

    def __call__(self, x: torch.Tensor, batch_size: int = 65536) -> torch.Tensor:
        """Rows [N, D] (not centred) -> [N, num_classes] log-likelihoods in self.dtype, on x's device."""
        if x.shape[1] != self.dim:
            raise ValueError(f"GMMs have {self.dim} features, data has {x.shape[1]}")
        out = torch.full((x.shape[0], self.num_classes), -math.inf, dtype=self.dtype, device=x.device)
        for s in range(0, x.shape[0], batch_size):
            xb = x[s:s + batch_size].to(self.device, self.dtype) - self.shift
            out[s:s + batch_size, self.index] = self.columns(xb.T).T.to(x.device)
        return out


def best_class(xc: torch.Tensor, fast: ClassScorer, exact: ClassScorer,
               tie_rtol: float = TIE_RTOL) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(best log-likelihood [P], class [P], pixels re-scored) of centred features xc [D, P] (x - fast.shift).

    Scores with `fast` (float32); pixels whose two best classes are within tie_rtol * (1 + |best|)
    are re-scored with `exact` (float64, the same shift), so the labels are those of the float64
    scorer wherever float32's error is below that tolerance (measured: `python -m bismap.bench scoring`).
    """
    ll = fast.columns(xc)
    classes = fast.index.to(xc.device)
    if ll.shape[0] < 2:
        best, arg = ll.max(0)
        return best, classes[arg], 0
    best, arg = ll.max(0)
    second = ll.scatter_(0, arg[None], -math.inf).amax(0)  # ll is not needed any more
    near = (best - second) <= tie_rtol * (1.0 + best.abs())
    n_near = int(near.sum())
    if n_near:
        b64, a64 = exact.columns(xc[:, near]).max(0)
        best[near], arg[near] = b64.to(best.dtype), a64
    return best, classes[arg], n_near


def class_log_likelihood(gmms: dict[int, DiagonalGMM], x: torch.Tensor, num_classes: int,
                         batch_size: int = 65536, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """[N, num_classes] mixture log-likelihood per class in `dtype`; classes without a GMM get -inf."""
    return ClassScorer(gmms, num_classes, dtype)(x, batch_size)


def unit_rows(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Rows scaled to unit L2 length along `dim` (`prototypes.normalize`: direction, not contrast-driven magnitude)."""
    return x / x.norm(dim=dim, keepdim=True).clamp_min(1e-12)


def load_prototypes(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[dict[int, DiagonalGMM], dict]:
    """Read a prototypes file written by run(): ({class: fitted GMM}, the raw dict)."""
    obj = load_torch_file(path, PROTOTYPES_FORMAT, "prototypes file")
    gmms = {int(c): DiagonalGMM(device=device).load_state_dict(s) for c, s in obj["classes"].items()}
    if not gmms:
        raise InputError(f"{path}: prototypes file holds no class GMM")
    return gmms, obj

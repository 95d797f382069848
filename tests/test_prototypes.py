"""DiagonalGMM and kmeans: compared with scikit-learn, and checked on what they are for."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bismap.method.prototypes import DiagonalGMM, class_log_likelihood, kmeans

torch.set_num_threads(1)


def _blobs(n: int = 600, d: int = 5, k: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 5, size=(k, d))
    scales = rng.uniform(0.3, 2.0, size=(k, d))  # anisotropic on purpose
    lab = rng.integers(0, k, size=n)
    return centres[lab] + rng.normal(size=(n, d)) * scales[lab]


@pytest.mark.parametrize("batch_size", [64, 100000])
def test_gmm_matches_sklearn(batch_size: int) -> None:
    from sklearn.cluster import KMeans
    from sklearn.mixture import GaussianMixture

    x = _blobs()
    k = 4
    # sklearn initialises weights/covariances from KMeans(random_state) labels; using those
    # centres as means_init makes its initial assignment the nearest-mean one we use.
    km = KMeans(n_clusters=k, n_init=1, random_state=0).fit(x)
    ref = GaussianMixture(k, covariance_type="diag", means_init=km.cluster_centers_, tol=1e-3, max_iter=100,
                          reg_covar=1e-6, random_state=0).fit(x)
    g = DiagonalGMM(k, tol=1e-3, max_iter=100, reg_covar=1e-6, batch_size=batch_size)
    g.fit(torch.tensor(x, dtype=torch.float64), means_init=torch.tensor(km.cluster_centers_))
    ll = g.score_samples(torch.tensor(x)).numpy()
    assert abs(ll.mean() - ref.score(x)) <= 1e-4 * abs(ref.score(x))
    np.testing.assert_allclose(ll, ref.score_samples(x), rtol=1e-4, atol=1e-6)
    assert g.n_iter_ == ref.n_iter_ and g.converged_ == ref.converged_
    assert abs(g.lower_bound_ - ref.lower_bound_) <= 1e-4 * abs(ref.lower_bound_)
    order = np.argsort(ref.means_[:, 0])
    np.testing.assert_allclose(g.means_.numpy()[np.argsort(g.means_.numpy()[:, 0])], ref.means_[order], rtol=1e-4,
                               atol=1e-6)


def test_gmm_own_init_is_good_and_deterministic() -> None:
    from sklearn.mixture import GaussianMixture

    x = torch.tensor(_blobs(seed=1), dtype=torch.float32)
    a = DiagonalGMM(3, seed=3, kmeans_n_init=5).fit(x)
    b = DiagonalGMM(3, seed=3, kmeans_n_init=5).fit(x)
    assert torch.equal(a.means_, b.means_)
    ref = GaussianMixture(3, covariance_type="diag", n_init=5, random_state=0).fit(x.numpy())
    assert a.score(x) >= ref.score(x.numpy()) - 1e-3


def test_gmm_save_load_and_predict(tmp_path) -> None:
    x = torch.tensor(_blobs(seed=2), dtype=torch.float32)
    g = DiagonalGMM(3, seed=0, kmeans_n_init=3).fit(x)
    g.save(tmp_path / "g.pt")
    h = DiagonalGMM.load(tmp_path / "g.pt")
    assert torch.allclose(g.score_samples(x), h.score_samples(x))
    assert torch.equal(g.predict(x), h.predict(x))
    h2 = DiagonalGMM().load_state_dict(g.state_dict())
    assert h2.n_components == 3 and h2.converged_ == g.converged_


def test_two_classes_label_held_out_points() -> None:
    """A mixture per class, argmax of class log-likelihood = the right class on new points."""
    rng = np.random.default_rng(0)

    def sample(c: int, n: int) -> np.ndarray:  # class 0 and class 1, each itself two blobs
        offs = np.array([[0, 0, 0, 0], [3, 3, 0, 0]]) + (8 * c)
        lab = rng.integers(0, 2, size=n)
        return offs[lab] + rng.normal(size=(n, 4)) * np.array([1.0, 0.5, 0.2, 2.0])

    gmms = {c: DiagonalGMM(2, seed=0, kmeans_n_init=3).fit(torch.tensor(sample(c, 400))) for c in (0, 1)}
    test = np.concatenate([sample(0, 200), sample(1, 200)])
    truth = np.repeat([0, 1], 200)
    ll = class_log_likelihood(gmms, torch.tensor(test), num_classes=3, batch_size=37)
    assert torch.isinf(ll[:, 2]).all()
    assert (ll[:, :2].argmax(1).numpy() == truth).mean() > 0.99
    # score_samples runs in float32 (the GMM's dtype), class_log_likelihood here in float64
    np.testing.assert_allclose(ll[:, 1].numpy(), gmms[1].score_samples(torch.tensor(test)).numpy(), rtol=1e-6)
    fast = class_log_likelihood(gmms, torch.tensor(test), num_classes=3, dtype=torch.float32)
    assert fast.dtype == torch.float32 and torch.equal(fast.argmax(1), ll.argmax(1))
    np.testing.assert_allclose(fast[:, :2].numpy(), ll[:, :2].numpy(), rtol=1e-6, atol=1e-3)


def test_class_log_likelihood_mixed_component_counts() -> None:
    x = torch.tensor(_blobs(seed=3), dtype=torch.float64)
    gmms = {0: DiagonalGMM(1).fit(x[:100]), 4: DiagonalGMM(3, kmeans_n_init=2).fit(x)}
    ll = class_log_likelihood(gmms, x, num_classes=5)
    assert torch.allclose(ll[:, 0], gmms[0].score_samples(x), rtol=1e-6, atol=1e-4)
    assert torch.allclose(ll[:, 4], gmms[4].score_samples(x), rtol=1e-6, atol=1e-4)


def test_kmeans_finds_separated_clusters_and_is_seeded() -> None:
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = torch.tensor(np.concatenate([c + rng.normal(size=(50, 2)) * 0.1 for c in centres]))
    for init in ("k-means++", "random"):
        c, cost = kmeans(x, 3, seed=1, n_init=3, init=init, batch_size=16)
        got = sorted(map(tuple, np.round(c.numpy()).tolist()))
        assert got == sorted(map(tuple, centres.tolist()))
        c2, cost2 = kmeans(x, 3, seed=1, n_init=3, init=init, batch_size=16)
        assert torch.equal(c, c2) and cost == cost2
    with pytest.raises(ValueError):
        kmeans(x[:2], 3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gmm_n_init_means_em_restarts_and_float32_matches_sklearn(dtype) -> None:
    """n_init = EM restarts as in scikit-learn (best lower bound kept); float32 passes keep
    scikit-learn's (float64) mean log-likelihood within 1e-4 relative, on data far from the origin."""
    from sklearn.mixture import GaussianMixture

    x = _blobs(n=3000, d=16, k=4, seed=5) + 50.0
    one = DiagonalGMM(4, seed=0, n_init=1, kmeans_n_init=1, dtype=dtype).fit(torch.tensor(x))
    three = DiagonalGMM(4, seed=0, n_init=3, kmeans_n_init=1, dtype=dtype).fit(torch.tensor(x))
    assert three.lower_bound_ >= one.lower_bound_
    ref = GaussianMixture(4, covariance_type="diag", means_init=three.means_.numpy(), tol=1e-3,
                          reg_covar=1e-6).fit(x)
    assert abs(three.score(torch.tensor(x)) - ref.score(x)) <= 1e-4 * abs(ref.score(x))


def test_kmeans_best_draw_is_seeded() -> None:
    from bismap.method.prototypes import kmeans_best_draw

    x = torch.tensor(_blobs(seed=4), dtype=torch.float32)
    a = kmeans_best_draw(x, 3, seed=2, n_draws=5, max_iter=100, tol=1e-4, batch_size=64)
    b = kmeans_best_draw(x, 3, seed=2, n_draws=5, max_iter=100, tol=1e-4, batch_size=64)
    assert torch.equal(a, b) and a.shape == (3, 5)

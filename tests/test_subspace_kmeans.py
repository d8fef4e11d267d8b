"""lelp_kmeans: k-means inside each class's null-space top-k principal subspace (float64 references)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lelp_jax import methods
from lelp_jax.core import sharpness
from lelp_jax.config import base_config, load_config
from lelp_jax.runtime.errors import ConfigError
from lelp_jax.core.projections import fit_projections
from lelp_jax.core.statistics import batch_moments
from lelp_jax.core.subspace_kmeans import fit_subspace_kmeans, subspace_coordinates


def np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def clustered(rng, n=600, c=2, modes=3, d=10):
    """Each class: `modes` tight clusters spread inside the null space of W, plus a class offset along W."""
    w = rng.normal(size=(c, d))
    q, _ = np.linalg.qr(np.concatenate([w.T, rng.normal(size=(d, d - c))], axis=1))
    null = q[:, c:]  # orthonormal basis of the null space of W
    centres = np.einsum("dk,cmk->cmd", null, rng.normal(size=(c, modes, d - c)) * 4.0)
    y = rng.integers(0, c, n)
    sub = rng.integers(0, modes, n)
    h = centres[y, sub] + 0.3 * rng.normal(size=(n, d)) + 5.0 * w[y]
    return h, y, sub, w


def test_lelp_kmeans_fit_and_targets_match_float64_reference(rng):
    c, s, k, d = 2, 3, 2, 10  # 3 modes span a 2-d affine subspace: its top-2 eigenvalues are well separated
    h, y, sub, w = clustered(rng, c=c, modes=s, d=d)
    moments = batch_moments(jnp.asarray(h, jnp.float32), jnp.asarray(y), num_classes=c)
    subspace = fit_projections(moments, classifier_weights=jnp.asarray(w, jnp.float32), num_subclasses=k, key=0,
                               rotate=False)
    fit = fit_subspace_kmeans(subspace, jnp.asarray(h, jnp.float32), jnp.asarray(y), key=1,
                              num_subclasses=s, num_iters=30)
    # the subspace is the span of the top-k eigenvectors of P Sigma_c P (float64, from the data)
    p = np.eye(d) - w.T @ np.linalg.pinv(w @ w.T) @ w
    v = np.asarray(fit.subspace.directions, np.float64)
    mu = np.stack([h[y == a].mean(0) for a in range(c)])
    for a in range(c):
        sig = p @ np.cov(h[y == a].T, bias=True) @ p
        ref = np.linalg.eigh(sig)[1][:, ::-1][:, :k]
        np.testing.assert_allclose(v[a] @ v[a].T, ref @ ref.T, atol=2e-4)
    # centroids are a Lloyd fixed point in each class's coordinates y_c = V_c^T (h - mu_c)
    m = np.asarray(fit.clusters.centroids, np.float64)
    coords = np.einsum("nd,ndk->nk", h - mu[y], v[y])
    for a in range(c):
        ya = coords[y == a]
        assign = ((ya[:, None] - m[a][None]) ** 2).sum(-1).argmin(1)
        for j in range(s):
            np.testing.assert_allclose(m[a, j], ya[assign == j].mean(0), atol=1e-3)
        lin = 2 * ya @ (m[a] - m[a].mean(0)).T
        assert float(fit.clusters.score_std[a]) == pytest.approx(np.sqrt(s / (s - 1) * lin.var(0).mean()), rel=1e-4)
    np.testing.assert_allclose(np.asarray(subspace_coordinates(fit, jnp.asarray(h, jnp.float32))),
                               np.einsum("ncd,cdk->nck", h[:, None] - mu[None], v), atol=1e-3)
    # the clusters are the hidden modes (they live in the null space, which LELP's subspace keeps)
    hard = np.array([((coords[i] - m[y[i]]) ** 2).sum(-1).argmin() for i in range(len(y))])
    assert sharpness.normalized_mutual_info(y * s + hard, y * s + sub) > 0.95
    # the method's loss: t = softmax(l / tau) * softmax((2 y.m - |m|^2) / sigma_c / beta), float64
    b, tau, beta, alpha = 7, 2.0, 0.6, 0.25
    cfg = base_config()
    cfg.update(dict(lelp=dict(num_subclasses=s, tau=tau, beta=beta, alpha=alpha, standardize=True,
                              target_entropy=None), lelp_kmeans=dict(subspace_dim=k)))
    method = methods.get_method("lelp_kmeans")
    assert method.fit == "subspace_kmeans" and method.student_outputs(c, cfg) == c * s
    logits, r = rng.normal(size=(b, c)), rng.normal(size=(b, c * s))
    mask = np.ones(b)
    got = method.loss(methods.LossInputs(
        student_logits=jnp.asarray(r, jnp.float32),
        batch={"label": jnp.asarray(y[:b]), "mask": jnp.asarray(mask, jnp.float32)},
        teacher_embedding=jnp.asarray(h[:b], jnp.float32), teacher_logits=jnp.asarray(logits, jnp.float32),
        aux=fit), method.parse_options(cfg))
    yb = np.einsum("ncd,cdk->nck", h[:b, None] - mu[None], v)
    sigma = np.asarray(fit.clusters.score_std, np.float64)
    z = -((yb[:, :, None] - m[None]) ** 2).sum(-1) / sigma[None, :, None]
    t = (np.exp(np_log_softmax(logits / tau))[:, :, None] * np.exp(np_log_softmax(z / beta))).reshape(b, c * s)
    soft = -(t * np_log_softmax(r)).sum(-1).mean()
    logq = np.log(np.exp(np_log_softmax(r)).reshape(b, c, s).sum(-1))
    hard_ce = -logq[np.arange(b), y[:b]].mean()
    assert float(got) == pytest.approx((1 - alpha) * soft + alpha * hard_ce, rel=1e-4)


def test_lelp_kmeans_bad_input():
    with pytest.raises(ConfigError, match="lelp_kmeans.subspace_dim must be >= 1"):
        load_config("configs/digits_binary.py", ["--config.lelp_kmeans.subspace_dim=0"])
    options = methods.split_options(base_config())
    with pytest.raises(ValueError, match="needs a SubspaceKMeans"):
        methods.get_method("lelp_kmeans").scores(None, jnp.zeros((2, 3)), options)

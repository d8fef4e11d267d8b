"""Losses against float64 NumPy references; gradients against finite differences."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import lelp_jax as lj


def np_log_softmax(x):
    x = np.asarray(x, np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def np_mean(per, mask):
    return per.mean() if mask is None else (per * mask).sum() / mask.sum()


def np_soft_ce(r, t, mask=None):
    return np_mean(-(np.asarray(t, np.float64) * np_log_softmax(r)).sum(-1), mask)


def np_ce(r, y, mask=None):
    return np_mean(-np_log_softmax(r)[np.arange(len(y)), y], mask)


def np_kd(r, l, tau, y, alpha, mask=None):
    p = np.exp(np_log_softmax(np.asarray(l, np.float64) / tau))
    return (1 - alpha) * tau ** 2 * np_soft_ce(np.asarray(r, np.float64) / tau, p, mask) + alpha * np_ce(r, y, mask)


def np_lelp(r, t, y, alpha, c, mask=None):
    logq = np_log_softmax(r).reshape(len(r), c, -1)
    m = logq.max(-1, keepdims=True)
    logq_c = (m + np.log(np.exp(logq - m).sum(-1, keepdims=True)))[..., 0]
    hard = np_mean(-logq_c[np.arange(len(y)), y], mask)
    return (1 - alpha) * np_soft_ce(r, t, mask) + alpha * hard


def batch(rng, b=10, c=3, s=2):
    r = (2 * rng.standard_normal((b, c * s))).astype(np.float32)
    t = rng.random((b, c * s))
    t = (t / t.sum(-1, keepdims=True)).astype(np.float32)
    y = rng.integers(0, c, b).astype(np.int32)
    mask = (rng.random(b) < 0.7).astype(np.float32)
    mask[0] = 1.0
    return r, t, y, mask


def test_soft_and_hard_cross_entropy(rng):
    r, t, y, mask = batch(rng)
    np.testing.assert_allclose(lj.soft_cross_entropy(r, t), np_soft_ce(r, t), rtol=1e-5)
    np.testing.assert_allclose(lj.soft_cross_entropy(r, t, mask=mask), np_soft_ce(r, t, mask), rtol=1e-5)
    np.testing.assert_allclose(lj.cross_entropy(r, y), np_ce(r, y), rtol=1e-5)
    np.testing.assert_allclose(lj.cross_entropy(r, y, mask=mask), np_ce(r, y, mask), rtol=1e-5)
    assert float(lj.cross_entropy(r, y, mask=np.zeros(10, np.float32))) == 0.0


@pytest.mark.parametrize("alpha", [0.0, 0.3])
def test_kd_loss_matches_hinton_reference(rng, alpha):
    r, _, y, mask = batch(rng, s=1)
    l = (3 * rng.standard_normal(r.shape)).astype(np.float32)
    got = lj.kd_loss(r, l, tau=2.0, labels=y, alpha=alpha, mask=mask)
    np.testing.assert_allclose(got, np_kd(r, l, 2.0, y, alpha, mask), rtol=1e-5)
    # student_tau and the tau^2 switch.
    p = np.exp(np_log_softmax(l / 2.0))
    got = lj.kd_loss(r, l, tau=2.0, student_tau=1.0, scale_by_tau_squared=False)
    np.testing.assert_allclose(got, np_soft_ce(r, p), rtol=1e-5)


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_lelp_loss_matches_reference(rng, alpha):
    r, t, y, mask = batch(rng, c=3, s=4)
    got = lj.lelp_loss(r, t, labels=y, alpha=alpha, num_classes=3, mask=mask)
    np.testing.assert_allclose(got, np_lelp(r, t, y, alpha, 3, mask), rtol=1e-5)


@pytest.mark.parametrize("alpha", [0.0, 0.4])
def test_single_subclass_lelp_equals_kd(rng, alpha):
    """With S = 1: LELP targets are softmax(l / tau) and the LELP loss is KD with an untempered student."""
    c, d = 3, 6
    h = rng.standard_normal((12, d)).astype(np.float32)
    l = (2 * rng.standard_normal((12, c))).astype(np.float32)
    r = (2 * rng.standard_normal((12, c))).astype(np.float32)
    y = rng.integers(0, c, 12).astype(np.int32)
    moments = lj.update_moments(lj.init_moments(c, d), h, np.arange(12, dtype=np.int32) % c)
    w = rng.standard_normal((c, d)).astype(np.float32)
    proj = lj.fit_projections(moments, classifier_weights=w, num_subclasses=1, key=0)
    t = lj.subclass_targets(proj, h, l, beta=0.5, tau=2.0)
    np.testing.assert_allclose(t, np.exp(np_log_softmax(l / 2.0)), atol=1e-6)
    lelp = lj.lelp_loss(r, t, labels=y, alpha=alpha, num_classes=c)
    kd = lj.kd_loss(r, l, tau=2.0, labels=y, alpha=alpha, student_tau=1.0, scale_by_tau_squared=False)
    np.testing.assert_allclose(lelp, kd, rtol=1e-6)


def test_gradients_match_finite_differences(rng):
    r, t, y, mask = batch(rng, b=5, c=2, s=3)
    l = rng.standard_normal((5, 2))
    with jax.enable_x64(True):
        r64, t64, m64 = (jnp.asarray(a, jnp.float64) for a in (r, t, mask))
        y64 = jnp.asarray(y)
        losses = [
            (lambda x: lj.lelp_loss(x, t64, labels=y64, alpha=0.5, num_classes=2, mask=m64), r64),
            (lambda x: lj.soft_cross_entropy(x, t64, mask=m64), r64),
            (lambda x: lj.cross_entropy(x, y64), r64),
            (lambda x: lj.kd_loss(x, jnp.asarray(l), tau=2.0, labels=y64, alpha=0.3), r64[:, :2]),
        ]
        for f, x in losses:
            assert jax.jit(f)(x).dtype == jnp.float64
            check_grads(jax.jit(f), (x,), order=1, modes=("rev",))
    # float32, jitted: finite and equal to the closed form (softmax(r) sum_k t_k - t) / B for alpha = 0.
    g = jax.jit(jax.grad(lambda x: lj.lelp_loss(x, t)))(r)
    assert np.all(np.isfinite(np.asarray(g)))
    q = np.exp(np_log_softmax(r))
    ref = (q * t.astype(np.float64).sum(-1, keepdims=True) - t) / len(r)
    np.testing.assert_allclose(g, ref, atol=1e-6)


def test_loss_validation_errors(rng):
    r, t, y, _ = batch(rng)
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        lj.lelp_loss(r, t, labels=y, alpha=1.5, num_classes=3)
    with pytest.raises(ValueError, match="needs labels"):
        lj.lelp_loss(r, t, alpha=0.5)
    with pytest.raises(ValueError, match="num_classes is needed"):
        lj.lelp_loss(r, t, labels=y, alpha=0.5)
    with pytest.raises(ValueError, match="needs labels"):
        lj.kd_loss(r, r, tau=1.0, alpha=0.5)
    with pytest.raises(ValueError, match="tau must be > 0"):
        lj.kd_loss(r, r, tau=0.0)
    with pytest.raises(ValueError, match="must both be"):
        lj.kd_loss(r, r[:, :2], tau=1.0)
    with pytest.raises(ValueError, match="must have the same shape"):
        lj.soft_cross_entropy(r, t[:, :2])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 6\)"):
        lj.cross_entropy(r, np.full(10, 6, np.int32))
    with pytest.raises(ValueError, match="mask must be"):
        lj.cross_entropy(r, y, mask=np.ones(3, np.float32))

"""Pseudo-subclass targets and class aggregation against float64 NumPy references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lelp_jax as lj


def np_softmax(x, axis=-1):
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def np_logsumexp(x, axis=-1):
    x = np.asarray(x, np.float64)
    m = x.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def make_projections(rng, c=3, d=7, s=2, offset=100.0):
    u = np.stack([np.linalg.qr(rng.standard_normal((d, s)))[0] for _ in range(c)]).astype(np.float32)
    return lj.Projections(
        directions=jnp.asarray(u),
        means=jnp.asarray((offset * rng.standard_normal((c, d))).astype(np.float32)),
        eigenvalues=jnp.ones((c, d), jnp.float32),
        scales=jnp.asarray((0.5 + rng.random((c, s))).astype(np.float32)),
        counts=jnp.full((c,), 10.0, jnp.float32),
        num_subclasses=s,
    )


def ref_targets(proj, h, l, beta, tau, standardize=False):
    u = np.asarray(proj.directions, np.float64)
    mu = np.asarray(proj.means, np.float64)
    z = np.einsum("bcd,cds->bcs", np.asarray(h, np.float64)[:, None, :] - mu[None], u)
    if standardize:
        z = z / np.asarray(proj.scales, np.float64)[None]
    p = np_softmax(np.asarray(l, np.float64) / tau)
    t = p[:, :, None] * np_softmax(z / beta, axis=-1)
    return t.reshape(len(h), -1), p


@pytest.mark.parametrize("standardize", [False, True])
def test_subclass_targets_match_reference_and_sum_to_teacher_probs(rng, standardize):
    proj = make_projections(rng)
    # Embeddings near their class means, which are 100x the spread: centring must be done before projecting.
    h = (np.asarray(proj.means)[rng.integers(0, 3, 16)] + rng.standard_normal((16, 7))).astype(np.float32)
    l = (2 * rng.standard_normal((16, 3))).astype(np.float32)
    t = lj.subclass_targets(proj, h, l, beta=0.7, tau=2.0, standardize=standardize)
    ref, p = ref_targets(proj, h, l, 0.7, 2.0, standardize)
    assert t.shape == (16, 6)
    np.testing.assert_allclose(t, ref, atol=2e-5)
    np.testing.assert_allclose(np.asarray(t, np.float64).reshape(16, 3, 2).sum(-1), p, atol=1e-6)
    jitted = jax.jit(lj.subclass_targets, static_argnames=("standardize",))(
        proj, h, l, beta=0.7, tau=2.0, standardize=standardize)
    np.testing.assert_allclose(jitted, t, atol=1e-6)


def test_single_subclass_targets_are_teacher_probs(rng):
    proj = make_projections(rng, s=1)
    h = rng.standard_normal((8, 7)).astype(np.float32)
    l = rng.standard_normal((8, 3)).astype(np.float32)
    t = lj.subclass_targets(proj, h, l, beta=1.0, tau=3.0)
    np.testing.assert_allclose(t, np_softmax(l / 3.0), atol=1e-6)


def test_bfloat16_teacher_outputs_are_upcast(rng):
    proj = make_projections(rng, offset=10.0)
    h = (np.asarray(proj.means)[rng.integers(0, 3, 8)] + rng.standard_normal((8, 7))).astype(jnp.bfloat16)
    l = rng.standard_normal((8, 3)).astype(jnp.bfloat16)
    t = lj.subclass_targets(proj, h, l, beta=1.0, tau=1.0)
    assert t.dtype == jnp.float32
    ref, _ = ref_targets(proj, np.asarray(h, np.float64), np.asarray(l, np.float64), 1.0, 1.0)
    np.testing.assert_allclose(t, ref, atol=2e-5)


def test_split_targets_matches_reference(rng):
    p = np_softmax(rng.standard_normal((5, 4)))
    scores = rng.standard_normal((5, 4, 3))
    t = lj.split_targets(jnp.asarray(p, jnp.float32), jnp.asarray(scores, jnp.float32), beta=0.5)
    ref = (p[:, :, None] * np_softmax(scores / 0.5, axis=-1)).reshape(5, 12)
    np.testing.assert_allclose(t, ref, atol=1e-6)
    with pytest.raises(ValueError, match=r"subclass_scores must be \(B, C, S\)"):
        lj.split_targets(jnp.asarray(p), jnp.asarray(scores[:, :3]), beta=1.0)
    with pytest.raises(ValueError, match="beta must be > 0"):
        lj.split_targets(jnp.asarray(p), jnp.asarray(scores), beta=0.0)


def test_class_log_probs_matches_reference(rng):
    r = (3 * rng.standard_normal((6, 8))).astype(np.float32)
    out = lj.class_log_probs(r, num_classes=2)
    logq = np.asarray(r, np.float64) - np_logsumexp(r, axis=-1)[:, None]
    ref = np_logsumexp(logq.reshape(6, 2, 4), axis=-1)
    np.testing.assert_allclose(out, ref, atol=1e-5)
    np.testing.assert_allclose(np.exp(np.asarray(out, np.float64)).sum(-1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="not a multiple of num_classes=3"):
        lj.class_log_probs(r, num_classes=3)


def test_traced_temperatures_skip_value_checks_but_not_shape_checks(rng):
    proj = make_projections(rng)
    h = rng.standard_normal((4, 7)).astype(np.float32)
    l = rng.standard_normal((4, 3)).astype(np.float32)
    f = jax.jit(lambda beta, tau: lj.subclass_targets(proj, h, l, beta=beta, tau=tau))
    ref, _ = ref_targets(proj, h, l, 1.5, 2.5)
    np.testing.assert_allclose(f(1.5, 2.5), ref, atol=2e-5)
    g = jax.jit(lambda x: lj.subclass_targets(proj, x, l, beta=1.0, tau=1.0))
    with pytest.raises(ValueError, match=r"embeddings must be \(B, 7\)"):
        g(np.ones((4, 6), np.float32))
    nan_h = h.copy()
    nan_h[0, 0] = np.nan
    assert np.isnan(np.asarray(g(nan_h))).any(), "inside jit no value check: NaN propagates"


def test_target_validation_errors(rng):
    proj = make_projections(rng)
    h = rng.standard_normal((4, 7)).astype(np.float32)
    l = rng.standard_normal((4, 3)).astype(np.float32)
    with pytest.raises(ValueError, match="beta must be > 0"):
        lj.subclass_targets(proj, h, l, beta=0.0, tau=1.0)
    with pytest.raises(ValueError, match="tau must be > 0"):
        lj.subclass_targets(proj, h, l, beta=1.0, tau=-1.0)
    with pytest.raises(ValueError, match=r"embeddings must be \(B, 7\).*D=7"):
        lj.subclass_targets(proj, h[:, :5], l, beta=1.0, tau=1.0)
    with pytest.raises(ValueError, match=r"teacher_logits must be \(4, 3\).*C=3"):
        lj.subclass_targets(proj, h, l[:, :2], beta=1.0, tau=1.0)
    bad = h.copy()
    bad[1, 2] = np.inf
    with pytest.raises(ValueError, match="embeddings contains NaN or inf"):
        lj.subclass_targets(proj, bad, l, beta=1.0, tau=1.0)

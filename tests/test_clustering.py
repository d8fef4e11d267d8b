"""k-means / agglomerative / oracle pseudo-subclasses against float64 NumPy references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lelp_jax.core import clustering as cl


def _j(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` compiled as one XLA program (much faster than op-by-op for tests)."""
    return jax.jit(lambda: fn(*args, **kwargs))()


def _np_lloyd(x, w, cents, iters):
    x = x.astype(np.float64)
    cents = cents.astype(np.float64).copy()
    for _ in range(iters):
        d2 = ((x[:, None, :] - cents[None]) ** 2).sum(-1)
        a = d2.argmin(1)
        for k in range(len(cents)):
            wk = w * (a == k)
            if wk.sum() > 0:
                cents[k] = (wk[:, None] * x).sum(0) / wk.sum()
    inertia = (w * ((x[:, None, :] - cents[None]) ** 2).sum(-1).min(1)).sum()
    return cents, inertia


def test_squared_distances_matches_numpy(rng):
    x, m = rng.normal(size=(13, 5)), rng.normal(size=(4, 5))
    ref = ((x[:, None] - m[None]) ** 2).sum(-1)
    np.testing.assert_allclose(_j(cl.squared_distances, jnp.asarray(x, jnp.float32), jnp.asarray(m, jnp.float32)), ref, rtol=1e-5, atol=1e-5)


def test_lloyd_matches_numpy_reference(rng):
    x = rng.normal(size=(60, 3)).astype(np.float32)
    w = (rng.uniform(size=60) > 0.2).astype(np.float32)
    init = x[rng.choice(60, 4, replace=False)]
    cents, inertia = _j(cl.lloyd, jnp.asarray(x), jnp.asarray(w), jnp.asarray(init), num_iters=10)
    ref_c, ref_i = _np_lloyd(x, w, init, 10)
    np.testing.assert_allclose(cents, ref_c, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(inertia, ref_i, rtol=1e-4)


def test_kmeans_plusplus_picks_weighted_rows_distinct(rng):
    x = rng.normal(size=(40, 3)).astype(np.float32)
    w = np.zeros(40, np.float32)
    w[:10] = 1.0
    cents = np.asarray(_j(cl.kmeans_plusplus_init, jax.random.PRNGKey(int(rng.integers(1 << 30))), jnp.asarray(x), jnp.asarray(w), num_clusters=5))
    idx = [int(np.argmin(((x - c) ** 2).sum(1))) for c in cents]
    assert all(i < 10 for i in idx), idx  # only rows with positive weight
    assert len(set(idx)) == 5  # distinct points give distinct centroids


def test_fit_class_kmeans_recovers_blobs(rng):
    centres = rng.normal(size=(2, 3, 4)) * 10.0  # C=2 classes, 3 blobs each
    n = 30
    x = (centres[:, :, None, :] + rng.normal(size=(2, 3, n, 4)) * 0.1).reshape(-1, 4)
    y = np.repeat([0, 1], 3 * n)
    fit = cl.fit_class_kmeans(jax.random.PRNGKey(int(rng.integers(1 << 30))), x, y, num_classes=2, num_subclasses=3, num_iters=20)
    assert fit.centroids.shape == (2, 3, 4)
    for c in range(2):
        got = np.asarray(fit.centroids[c])
        for k in range(3):
            true_mean = x[y == c].reshape(3, n, 4)[k].mean(0)
            assert np.min(np.linalg.norm(got - true_mean, axis=1)) < 1e-3
    # sigma_c^2 = inertia / (n_c D) is the per-dimension noise variance 0.01
    np.testing.assert_allclose(fit.count, [3 * n, 3 * n])
    np.testing.assert_allclose(0.5 / np.asarray(fit.scale), 0.01, rtol=0.25)


def test_fit_class_kmeans_tiny_and_empty_class(rng):
    x = rng.normal(size=(5, 3)).astype(np.float32)
    y = np.array([0, 0, 0, 0, 0])  # class 1 empty, class 0 has fewer distinct rows than S
    fit = cl.fit_class_kmeans(jax.random.PRNGKey(0), x, y, num_classes=2, num_subclasses=8, num_iters=3)
    assert np.all(np.isfinite(np.asarray(fit.centroids)))
    assert float(fit.count[1]) == 0.0
    with pytest.raises(ValueError, match="labels"):
        cl.fit_class_kmeans(jax.random.PRNGKey(0), x, y[:3], num_classes=2, num_subclasses=2)


@pytest.mark.parametrize("scale", ["gmm", "raw"])
def test_kmeans_scores_match_numpy(rng, scale):
    cents = rng.normal(size=(3, 4, 6))
    fit = cl.KMeansFit(centroids=jnp.asarray(cents, jnp.float32), scale=jnp.asarray(rng.uniform(0.1, 2, 3), jnp.float32), inertia=jnp.zeros(3), count=jnp.ones(3))
    h = rng.normal(size=(7, 6))
    d2 = ((h[:, None, None, :] - cents[None]) ** 2).sum(-1)
    ref = -d2 * (np.asarray(fit.scale, np.float64)[None, :, None] if scale == "gmm" else 1.0)
    np.testing.assert_allclose(_j(cl.kmeans_scores, jnp.asarray(h, jnp.float32), fit, scale=scale), ref, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="scale"):
        _j(cl.kmeans_scores, jnp.asarray(h, jnp.float32), fit, scale="bogus")


def test_oracle_slots_and_targets_match_numpy(rng):
    # 3 classes with 2, 3 and 1 fine labels; fine ids interleaved
    fine_to_class = np.array([1, 0, 2, 1, 0, 1])
    fine = rng.integers(0, 6, size=50)
    fine[:6] = np.arange(6)
    y = fine_to_class[fine]
    slots = cl.oracle_slots(y, fine, num_classes=3, num_fine=6)
    assert slots.num_subclasses == 3
    np.testing.assert_array_equal(slots.slot_mask, [[1, 1, 0], [1, 1, 1], [1, 0, 0]])
    np.testing.assert_array_equal(slots.slot_of_fine, [0, 0, 0, 1, 1, 2])
    p = rng.dirichlet(np.ones(3), size=50)
    t = np.asarray(_j(cl.oracle_targets, jnp.asarray(p, jnp.float32), jnp.asarray(y), jnp.asarray(fine), slots), np.float64)
    ref = np.zeros((50, 3, 3))
    mask = np.asarray(slots.slot_mask, np.float64)
    for i in range(50):
        for c in range(3):
            if c == y[i]:
                ref[i, c, int(slots.slot_of_fine[fine[i]])] = p[i, c]
            else:
                ref[i, c] = p[i, c] * mask[c] / mask[c].sum()
    np.testing.assert_allclose(t, ref, atol=1e-6)
    np.testing.assert_allclose(t.sum(-1), p, atol=1e-6)


def test_oracle_gets_one_slot_per_fine_label_whatever_lelp_s(rng):
    """Class 0 has 7 fine labels, class 1 has 2: S_oracle = 7 although lelp.num_subclasses = 2;
    class 1's 5 unused slots get zero targets, and the loss matches a float64 reference."""
    from lelp_jax import methods

    fine_to_class = np.array([0] * 7 + [1] * 2)
    b, c = 24, 2
    fine = rng.integers(0, 9, size=b)
    fine[:9] = np.arange(9)
    y = fine_to_class[fine]
    slots = cl.oracle_slots(y, fine, num_classes=c, num_fine=9)
    assert slots.num_subclasses == 7
    np.testing.assert_array_equal(slots.slot_of_fine, [0, 1, 2, 3, 4, 5, 6, 0, 1])  # no folding
    np.testing.assert_array_equal(slots.slot_mask, [[1] * 7, [1, 1, 0, 0, 0, 0, 0]])
    cfg = _method_cfg(s=2)
    method = methods.get_method("oracle")
    assert method.student_outputs(c, cfg, slots) == c * 7
    assert method.head_outputs(c, method.parse_options(cfg)) is None  # the slots fix the width
    with pytest.raises(ValueError, match="comes from its fitted artifact"):
        method.student_outputs(c, cfg)
    l, r = rng.normal(size=(b, c)), rng.normal(size=(b, c * 7))
    m = (rng.random(b) < 0.8).astype(np.float64)
    batch = {"label": jnp.asarray(y), "fine_label": jnp.asarray(fine), "mask": jnp.asarray(m, jnp.float32)}

    def loss(r_):
        return method.loss(methods.LossInputs(student_logits=r_, batch=batch, teacher_logits=jnp.asarray(l, jnp.float32),
                                              aux=slots), method.parse_options(cfg))

    got, grad = jax.jit(jax.value_and_grad(loss))(jnp.asarray(r, jnp.float32))
    p = np.exp(_np_log_softmax(l / 2.0))
    t = np.zeros((b, c, 7))
    for i in range(b):
        t[i, y[i], fine[i] if y[i] == 0 else fine[i] - 7] = p[i, y[i]]
        other = 1 - y[i]
        t[i, other, : (7 if other == 0 else 2)] = p[i, other] / (7 if other == 0 else 2)
    np.testing.assert_allclose(t.sum(-1), p, atol=1e-12)
    np.testing.assert_allclose(float(got), _np_lelp_loss(r, t.reshape(b, -1), y, m, 0.25, c), rtol=1e-4)
    # float64 gradient: (1-a) w (q - t) + a w (q - q [slot in class y] / Q_y), w = m / sum(m)
    q = np.exp(_np_log_softmax(r)).reshape(b, c, 7)
    in_y = np.eye(c)[y][:, :, None]
    w = (m / m.sum())[:, None, None]
    q_y = (q * in_y).sum((1, 2))[:, None, None]
    ref = 0.75 * w * (q - t) + 0.25 * w * (q - q * in_y / q_y)
    np.testing.assert_allclose(np.asarray(grad).reshape(b, c, 7), ref, atol=1e-6)
    # unused slots (class 1, slots 2..6) have target 0: where class 1 is not the label, descent lowers them
    unused = np.asarray(grad).reshape(b, c, 7)[(m > 0) & (y == 0), 1, 2:]
    assert unused.size and np.all(unused > 0)


def test_oracle_slots_rejects_inconsistent_fine_labels():
    with pytest.raises(ValueError, match="several coarse classes"):
        cl.oracle_slots(np.array([0, 1]), np.array([3, 3]), num_classes=2, num_fine=4)
    with pytest.raises(ValueError, match="lie in"):
        cl.oracle_slots(np.array([0, 1]), np.array([3, 5]), num_classes=2, num_fine=4)


def test_agglomerative_centroids_recover_blobs(rng):
    centres = rng.normal(size=(2, 2, 3)) * 10.0
    x = (centres[:, :, None, :] + rng.normal(size=(2, 2, 20, 3)) * 0.1).reshape(-1, 3)
    y = np.repeat([0, 1], 40)
    fit = cl.fit_agglomerative_centroids(x, y, num_classes=2, num_subclasses=2, max_points=30, seed=1)
    for c in range(2):
        for k in range(2):
            assert np.min(np.linalg.norm(np.asarray(fit.centroids[c]) - centres[c, k], axis=1)) < 0.2


# ----------------------------------------------------------------------------- the kmeans and oracle methods


def _np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _method_cfg(tau=2.0, beta=0.7, alpha=0.25, s=3):
    from lelp_jax.config import base_config

    c = base_config()
    c.update(dict(lelp=dict(num_subclasses=s, tau=tau, alpha=alpha, seed=0),
                  kmeans=dict(num_iters=5, temperature=beta, scale="gmm")))
    return c


def _np_lelp_loss(r, t, y, m, alpha, c):
    b = len(r)
    soft = (m * -(t * _np_log_softmax(r)).sum(-1)).sum() / m.sum()
    logq = np.log(np.exp(_np_log_softmax(r)).reshape(b, c, -1).sum(-1))
    hard = -(m * logq[np.arange(b), y]).sum() / m.sum()
    return (1 - alpha) * soft + alpha * hard


def test_kmeans_method_loss_matches_numpy(rng):
    from lelp_jax import methods

    b, c, s, d = 8, 2, 3, 5
    cfg = _method_cfg(s=s)
    method = methods.get_method("kmeans")
    assert method.needs_teacher and method.fit == "kmeans" and method.student_outputs(c, cfg) == c * s
    agg = methods.get_method("agglomerative")  # other clusters, the same targets and loss
    assert agg.fit == "agglomerative" and agg.loss is method.loss and agg.student_outputs(c, cfg) == c * s
    fit = cl.KMeansFit(centroids=jnp.asarray(rng.normal(size=(c, s, d)), jnp.float32),
                       scale=jnp.asarray(rng.uniform(0.1, 1.0, c), jnp.float32), inertia=jnp.ones(c), count=jnp.ones(c))
    h, l, r = rng.normal(size=(b, d)), rng.normal(size=(b, c)) * 2, rng.normal(size=(b, c * s))
    y, m = rng.integers(0, c, b), (rng.random(b) < 0.8).astype(np.float64)
    m[0] = 1.0
    got = _j(method.loss, methods.LossInputs(student_logits=jnp.asarray(r, jnp.float32),
             batch={"label": jnp.asarray(y), "mask": jnp.asarray(m, jnp.float32)},
             teacher_embedding=jnp.asarray(h, jnp.float32), teacher_logits=jnp.asarray(l, jnp.float32),
             aux=fit), method.parse_options(cfg))
    p = np.exp(_np_log_softmax(l / 2.0))
    z = -((h[:, None, None] - np.asarray(fit.centroids, np.float64)[None]) ** 2).sum(-1) * np.asarray(fit.scale, np.float64)[None, :, None]
    t = (p[:, :, None] * np.exp(_np_log_softmax(z / 0.7))).reshape(b, c * s)
    np.testing.assert_allclose(t.reshape(b, c, s).sum(-1), p, atol=1e-12)  # targets sum over s to p
    np.testing.assert_allclose(float(got), _np_lelp_loss(r, t, y, m, 0.25, c), rtol=1e-4)


def test_oracle_method_loss_matches_numpy(rng):
    from lelp_jax import methods

    b, c, s = 10, 2, 2
    cfg = _method_cfg(s=s)
    method = methods.get_method("oracle")
    fine = rng.integers(0, 4, b)
    fine[:4] = np.arange(4)  # every fine label present: fine f is slot f % 2 of class f // 2
    y = fine // 2
    slots = cl.oracle_slots(y, fine, num_classes=c, num_fine=4)
    assert method.needs_fine_labels and method.fit == "oracle" and method.student_outputs(c, cfg, slots) == c * s
    l, r = rng.normal(size=(b, c)), rng.normal(size=(b, c * s))
    m = np.ones(b)
    got = _j(method.loss, methods.LossInputs(
        student_logits=jnp.asarray(r, jnp.float32),
        batch={"label": jnp.asarray(y), "fine_label": jnp.asarray(fine), "mask": jnp.asarray(m, jnp.float32)},
        teacher_logits=jnp.asarray(l, jnp.float32), aux=slots), method.parse_options(cfg))
    p = np.exp(_np_log_softmax(l / 2.0))
    t = np.zeros((b, c, s))
    for i in range(b):
        t[i, y[i], fine[i] % 2] = p[i, y[i]]
        t[i, 1 - y[i]] = p[i, 1 - y[i]] / 2
    np.testing.assert_allclose(float(got), _np_lelp_loss(r, t.reshape(b, -1), y, m, 0.25, c), rtol=1e-4)


# ----------------------------------------------------------------------------- standardised k-means scores


def test_standardized_kmeans_scores_match_float64_reference(rng):
    """z_{c,s} = (2 h.m_{c,s} - ||m_{c,s}||^2) / sigma_c with sigma_c^2 = S/(S-1) mean_s Var_c[2 h.(m_s - mbar)]:
    the softmax equals that of -||h - m||^2 / sigma_c (a per-row constant apart) and keeps the k-means argmax."""
    n, c, s, d = 200, 2, 3, 6
    y = rng.integers(0, c, n)
    y[:c] = np.arange(c)
    h = rng.normal(size=(n, d)) * 40.0 + 100.0  # far from unit scale
    fit = cl.fit_class_kmeans(jax.random.PRNGKey(0), jnp.asarray(h, jnp.float32), jnp.asarray(y), num_classes=c,
                              num_subclasses=s, num_iters=10)
    m = np.asarray(fit.centroids, np.float64)
    sigma = np.zeros(c)
    for k in range(c):
        lin = 2 * h[y == k] @ (m[k] - m[k].mean(0)).T
        sigma[k] = np.sqrt(s / (s - 1) * lin.var(axis=0).mean())
    np.testing.assert_allclose(np.asarray(fit.score_std), sigma, rtol=1e-4)
    d2 = ((h[:, None, None] - m[None]) ** 2).sum(-1)
    got = np.asarray(_j(cl.kmeans_scores, jnp.asarray(h, jnp.float32), fit), np.float64)
    np.testing.assert_allclose(np.exp(_np_log_softmax(got)), np.exp(_np_log_softmax(-d2 / sigma[None, :, None])),
                               atol=1e-4)
    np.testing.assert_array_equal(got.argmax(-1), d2.argmin(-1))
    for k in range(c):  # unit spread, like S uncorrelated standardised scores: mean_s Var[z - zbar] = (S-1)/S
        zk = got[y == k, k]
        assert (zk - zk.mean(1, keepdims=True)).var(0).mean() == pytest.approx((s - 1) / s, rel=1e-3)
    agg = cl.fit_agglomerative_centroids(h, y, num_classes=c, num_subclasses=s)
    for k in range(c):
        ma = np.asarray(agg.centroids, np.float64)[k]
        lin = 2 * h[y == k] @ (ma - ma.mean(0)).T
        assert float(agg.score_std[k]) == pytest.approx(np.sqrt(s / (s - 1) * lin.var(0).mean()), rel=1e-4)
    bare = cl.KMeansFit(centroids=fit.centroids, scale=fit.scale, inertia=fit.inertia, count=fit.count)
    with pytest.raises(ValueError, match="needs fit.score_std"):
        cl.kmeans_scores(jnp.asarray(h, jnp.float32), bare)
    restored = cl.KMeansFit.from_numpy(fit.replace(betas=jnp.ones(c)).to_numpy())
    np.testing.assert_array_equal(np.asarray(restored.score_std), np.asarray(fit.score_std))
    np.testing.assert_array_equal(np.asarray(restored.betas), 1.0)

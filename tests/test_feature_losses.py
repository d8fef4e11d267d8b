"""FitNet, RKD and the Subclass-Distillation auxiliary loss against float64 NumPy references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lelp_jax.core import feature_losses as fl

RTOL = 1e-4  # float32 against float64 on O(1) values


def _j(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` compiled as one XLA program (much faster than op-by-op for tests)."""
    return jax.jit(lambda: fn(*args, **kwargs))()


def _f32(x):
    return jnp.asarray(x, jnp.float32)


def _np_huber(x):
    ax = np.abs(x)
    return np.where(ax <= 1.0, 0.5 * x * x, ax - 0.5)


def _mask(rng, b):
    m = np.ones(b)
    m[rng.choice(b, 2, replace=False)] = 0.0
    return m


def test_fitnet_matches_numpy(rng):
    b, ds, dt = 9, 4, 6
    s, h = rng.normal(size=(b, ds)), rng.normal(size=(b, dt))
    k, bias = rng.normal(size=(ds, dt)), rng.normal(size=dt)
    m = _mask(rng, b)
    ref = (m * (((s @ k + bias) - h) ** 2).mean(1)).sum() / m.sum()
    got = _j(fl.fitnet_loss, _f32(s), _f32(h), {"kernel": _f32(k), "bias": _f32(bias)}, mask=_f32(m))
    np.testing.assert_allclose(got, ref, rtol=RTOL)
    with pytest.raises(ValueError, match="adapter kernel"):
        _j(fl.fitnet_loss, _f32(s), _f32(h), {"kernel": _f32(k.T), "bias": _f32(bias)})


def _np_rkd_distance(s, h, m):
    b = len(s)
    pw = np.outer(m, m) * (1 - np.eye(b))

    def psi(x):
        d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
        return d / ((pw * d).sum() / pw.sum())

    return (pw * _np_huber(psi(s) - psi(h))).sum() / pw.sum()


def _np_rkd_angle(s, h, m):
    b = len(s)
    num = den = 0.0
    for a in range(b):
        for i in range(b):
            for j in range(b):
                if i == a or j == a:
                    continue
                w = m[a] * m[i] * m[j]

                def cos(x):
                    u, v = x[i] - x[a], x[j] - x[a]
                    return u @ v / (np.linalg.norm(u) * np.linalg.norm(v))

                num += w * _np_huber(cos(s) - cos(h))
                den += w
    return num / den


def test_rkd_distance_and_angle_match_numpy(rng):
    b = 7
    s, h = rng.normal(size=(b, 3)) * 2.0, rng.normal(size=(b, 5))
    m = _mask(rng, b)
    np.testing.assert_allclose(_j(fl.rkd_distance_loss, _f32(s), _f32(h), mask=_f32(m)), _np_rkd_distance(s, h, m), rtol=RTOL)
    np.testing.assert_allclose(_j(fl.rkd_angle_loss, _f32(s), _f32(h), mask=_f32(m)), _np_rkd_angle(s, h, m), rtol=RTOL)
    both = _j(fl.rkd_loss, _f32(s), _f32(h), distance_weight=25.0, angle_weight=50.0, mask=_f32(m))
    np.testing.assert_allclose(both, 25 * _np_rkd_distance(s, h, m) + 50 * _np_rkd_angle(s, h, m), rtol=RTOL)


def test_rkd_huber_regime_and_invariances(rng):
    # large differences exercise the linear branch; the loss is invariant to scaling the
    # student (distances are normalised by their mean) and zero when student == teacher.
    h = rng.normal(size=(6, 4))
    s = h.copy()
    s[0] *= 30.0
    m = np.ones(6)
    np.testing.assert_allclose(_j(fl.rkd_distance_loss, _f32(s), _f32(h)), _np_rkd_distance(s, h, m), rtol=RTOL)
    np.testing.assert_allclose(_j(fl.rkd_distance_loss, _f32(3.7 * h), _f32(h)), 0.0, atol=1e-6)
    np.testing.assert_allclose(_j(fl.rkd_angle_loss, _f32(3.7 * h), _f32(h)), 0.0, atol=1e-6)


def test_rkd_gradients_finite_with_duplicate_rows(rng):
    s = rng.normal(size=(5, 3))
    s[1] = s[0]  # zero distance: the sqrt / normalise must not give NaN gradients
    h = rng.normal(size=(5, 3))
    g = jax.jit(jax.grad(lambda x: fl.rkd_loss(x, _f32(h))))(_f32(s))
    assert np.all(np.isfinite(np.asarray(g)))


def _np_subclass_aux(z, m, t, eps=1e-9):
    """The authors' released ``negative_sampling_loss`` (google-research/subclass_distillation), on real rows."""
    zr = z[m > 0]
    n, k = zr.shape
    v = (zr - zr.mean(1, keepdims=True)) / np.sqrt(zr.var(1, keepdims=True) + eps) / np.sqrt(t * k)
    g = v @ v.T
    lse = np.log(np.exp(g - g.max(1, keepdims=True)).sum(1)) + g.max(1)
    return lse.mean() - 1.0 / t - np.log(n)


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_subclass_aux_matches_numpy(rng, temperature):
    b = 10
    z = rng.normal(size=(b, 6)) * 3.0 + 1.0
    m = _mask(rng, b)
    got = _j(fl.subclass_aux_loss, _f32(z), temperature=temperature, mask=_f32(m))
    np.testing.assert_allclose(got, _np_subclass_aux(z, m, temperature), rtol=RTOL, atol=1e-6)
    g = jax.jit(jax.grad(lambda x: fl.subclass_aux_loss(x, temperature=temperature, mask=_f32(m))))(_f32(z))
    assert np.all(np.isfinite(np.asarray(g)))
    np.testing.assert_allclose(np.asarray(g)[m == 0], 0.0, atol=1e-7)  # padding rows get no gradient


def test_subclass_aux_is_per_example_and_zero_when_collapsed(rng):
    # Each example's logits are standardised on their own: a per-row shift and positive scale
    # changes nothing (a batch-wise standardisation would change), and identical rows give 0.
    z = rng.normal(size=(7, 8))
    a, c = rng.uniform(0.5, 3.0, size=(7, 1)), rng.normal(size=(7, 1)) * 4
    base = float(_j(fl.subclass_aux_loss, _f32(z), temperature=0.5))
    np.testing.assert_allclose(float(_j(fl.subclass_aux_loss, _f32(a * z + c), temperature=0.5)), base, rtol=RTOL)
    same = np.tile(rng.normal(size=(1, 8)), (7, 1))
    np.testing.assert_allclose(float(_j(fl.subclass_aux_loss, _f32(same), temperature=0.5)), 0.0, atol=1e-5)


# ----------------------------------------------------------------------------- subclass distillation

from lelp_jax.core import subclass_distillation as sd  # noqa: E402
from lelp_jax.core import targets  # noqa: E402


def _np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_subclass_head_aggregates_to_classes(rng):
    b, c, s = 6, 3, 4
    z = rng.normal(size=(b, c * s)) * 3
    zbar = np.asarray(_j(sd.subclass_class_logits, _f32(z), num_classes=c), np.float64)
    q = np.exp(_np_log_softmax(z)).reshape(b, c, s).sum(-1)  # class prob = sum of its subclass probs
    np.testing.assert_allclose(np.exp(_np_log_softmax(zbar)), q, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jax.nn.log_softmax(zbar), targets.class_log_probs(_f32(z), num_classes=c), atol=1e-5)
    with pytest.raises(ValueError, match="multiple of num_classes"):
        _j(sd.subclass_class_logits, _f32(z[:, :-1]), num_classes=c)


def test_subclass_teacher_and_student_losses_match_numpy(rng):
    b, c, s = 9, 2, 3
    z, r = rng.normal(size=(b, c * s)) * 2, rng.normal(size=(b, c * s))
    y = rng.integers(0, c, size=b)
    m = _mask(rng, b)
    zbar = np.log(np.exp(z).reshape(b, c, s).sum(-1))
    ce = -(m * _np_log_softmax(zbar)[np.arange(b), y]).sum() / m.sum()
    ref_t = ce + 0.3 * _np_subclass_aux(z, m, 0.7)
    got_t = _j(sd.subclass_teacher_loss, _f32(z), jnp.asarray(y), num_classes=c, aux_weight=0.3, aux_temperature=0.7, mask=_f32(m))
    np.testing.assert_allclose(got_t, ref_t, rtol=RTOL)
    tau, alpha = 2.5, 0.25
    pt = np.exp(_np_log_softmax(z / tau))
    soft = tau ** 2 * (m * -(pt * _np_log_softmax(r / tau)).sum(-1)).sum() / m.sum()
    logq = np.log(np.exp(_np_log_softmax(r)).reshape(b, c, s).sum(-1))
    hard = -(m * logq[np.arange(b), y]).sum() / m.sum()
    got_s = _j(sd.subclass_student_loss, _f32(r), _f32(z), tau=tau, num_classes=c, labels=jnp.asarray(y), alpha=alpha, mask=_f32(m))
    np.testing.assert_allclose(got_s, (1 - alpha) * soft + alpha * hard, rtol=RTOL)


# ----------------------------------------------------------------------------- the fitnet, rkd and subclass methods


def _cfg():
    from lelp_jax.config import base_config

    c = base_config()
    c.update(dict(kd=dict(tau=2.0, alpha=0.3), fitnet=dict(weight=0.5), rkd=dict(distance_weight=3.0, angle_weight=5.0),
                  subclass=dict(num_subclasses=3, aux_weight=0.4, aux_temperature=0.8, tau=1.5, alpha=0.2),
                  teacher=dict(model="mlp", model_kwargs=dict(hidden=(7,)))))
    return c


def _loss(method, cfg, **inputs):
    """``method.loss(LossInputs(**inputs), options)``, compiled, with the options parsed from ``cfg``."""
    from lelp_jax import methods

    return _j(method.loss, methods.LossInputs(**inputs), method.parse_options(cfg))


def _np_kd(r, l, y, m, tau, alpha):
    b = len(r)
    pt = np.exp(_np_log_softmax(l / tau))
    soft = tau ** 2 * (m * -(pt * _np_log_softmax(r / tau)).sum(-1)).sum() / m.sum()
    hard = -(m * _np_log_softmax(r)[np.arange(b), y]).sum() / m.sum()
    return (1 - alpha) * soft + alpha * hard


def test_fitnet_and_rkd_methods_match_numpy(rng):
    from lelp_jax import methods

    cfg = _cfg()
    b, c, ds, dt = 7, 2, 3, 5
    s_emb, t_emb = rng.normal(size=(b, ds)), rng.normal(size=(b, dt))
    r, l = rng.normal(size=(b, c)), rng.normal(size=(b, c))
    y, m = rng.integers(0, c, b), np.ones(b)
    m[-1] = 0.0
    fit = methods.get_method("fitnet")
    adapter = fit.init_params(jax.random.PRNGKey(0), student_embedding_dim=ds, teacher_embedding_dim=dt,
                              options=fit.parse_options(cfg))
    assert adapter["kernel"].shape == (ds, dt) and adapter["bias"].shape == (dt,)
    adapter = {"kernel": _f32(rng.normal(size=(ds, dt))), "bias": _f32(rng.normal(size=dt))}
    kw = dict(student_logits=_f32(r), student_embedding=_f32(s_emb), teacher_embedding=_f32(t_emb),
              teacher_logits=_f32(l), batch={"label": jnp.asarray(y), "mask": _f32(m)})
    kd = _np_kd(r, l, y, m, 2.0, 0.3)
    a = np.asarray(adapter["kernel"], np.float64), np.asarray(adapter["bias"], np.float64)
    mse = (m * (((s_emb @ a[0] + a[1]) - t_emb) ** 2).mean(1)).sum() / m.sum()
    np.testing.assert_allclose(float(_loss(fit, cfg, method_params=adapter, **kw)), kd + 0.5 * mse, rtol=1e-4)
    rkd = methods.get_method("rkd")
    want = kd + 3.0 * _np_rkd_distance(s_emb, t_emb, m) + 5.0 * _np_rkd_angle(s_emb, t_emb, m)
    np.testing.assert_allclose(float(_loss(rkd, cfg, **kw)), want, rtol=1e-4)


def test_subclass_methods_use_the_subclass_teacher(rng):
    from lelp_jax import methods

    cfg = _cfg()
    b, c, s = 6, 2, 3
    student = methods.get_method("subclass")
    assert student.fit == "subclass_teacher" and not student.needs_teacher and student.student_outputs(c, cfg) == c * s
    teacher = methods.subclass_teacher_model(cfg, c)
    x = rng.normal(size=(b, 4)).astype(np.float32)
    t_vars = jax.jit(teacher.init)(jax.random.PRNGKey(0), {"features": jnp.asarray(x[:1])})
    batch = {"features": jnp.asarray(x), "label": jnp.asarray(rng.integers(0, c, b)), "mask": jnp.ones(b)}
    _, z = jax.jit(teacher.apply)(t_vars, batch)
    assert z.shape == (b, c * s)
    r = _f32(rng.normal(size=(b, c * s)))
    got = _loss(student, cfg, student_logits=r, batch=batch, aux=t_vars)
    want = _j(sd.subclass_student_loss, r, z, tau=1.5, num_classes=c, labels=batch["label"], alpha=0.2,
              mask=batch["mask"])
    np.testing.assert_allclose(float(got), float(want), rtol=1e-6)
    got_t = _loss(methods.SUBCLASS_TEACHER, cfg, student_logits=z, batch=batch)
    want_t = _j(sd.subclass_teacher_loss, z, batch["label"], num_classes=c, aux_weight=0.4, aux_temperature=0.8,
                mask=batch["mask"])
    np.testing.assert_allclose(float(got_t), float(want_t), rtol=1e-6)

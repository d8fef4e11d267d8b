"""The core as a JAX user meets it: inside jit, vmap and shard_map, with checkify validation.

Tiny sizes; references in float64 NumPy.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec as P

import lelp_jax as lj
from lelp_jax.core import clustering, feature_losses, losses, targets
from lelp_jax.core.projections import Projections


def _moments(rng, n=60, d=8, c=2):
    h = (rng.standard_normal((n, d)) * rng.uniform(0.5, 2.0, d)).astype(np.float32)
    y = (np.arange(n) % c).astype(np.int32)
    return lj.update_moments(lj.init_moments(c, d), h, y), h, y


def _np_log_softmax(x):
    x = np.asarray(x, np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _np_scores(proj, h):
    u, mu = np.asarray(proj.directions, np.float64), np.asarray(proj.means, np.float64)
    return np.einsum("bcd,cds->bcs", np.asarray(h, np.float64)[:, None, :] - mu[None], u)


def test_jitted_step_compiles_once_for_projections_of_two_seeds(rng):
    m, h, _ = _moments(rng)
    w = rng.standard_normal((2, 8)).astype(np.float32)
    p0 = lj.fit_projections(m, classifier_weights=w, num_subclasses=2, key=0, settings={"beta": 1.0, "seed": 0})
    p1 = lj.fit_projections(m, classifier_weights=w, num_subclasses=2, key=1, settings={"beta": 2.0, "seed": 1})
    traces = []

    @jax.jit
    def step(proj, x):
        traces.append(1)  # runs once per trace, never on a cache hit
        return lj.projection_scores(proj, x, standardize=False)

    out0, out1 = step(p0, h[:5]), step(p1, h[:5])
    assert len(traces) == 1, "a second seed (and settings dict) must not recompile the step"
    np.testing.assert_allclose(np.asarray(out0), _np_scores(p0, h[:5]), atol=1e-4)
    np.testing.assert_allclose(np.asarray(out1), _np_scores(p1, h[:5]), atol=1e-4)
    assert (int(p0.seed), int(p1.seed)) == (0, 1) and p1.settings == {"beta": 2.0, "seed": 1}


def test_projections_of_two_seeds_stack_and_vmap(rng):
    m, h, _ = _moments(rng)
    p0 = lj.fit_projections(m, num_subclasses=3, key=3, null_space=False, settings={"a": 1})
    p1 = lj.fit_projections(m, num_subclasses=3, key=4, null_space=False, settings={"a": 2})
    stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), p0, p1)
    assert stacked.directions.shape == (2, 2, 8, 3) and stacked.num_subclasses == 3
    np.testing.assert_array_equal(np.asarray(stacked.seed), [3, 4])
    z = jax.vmap(lambda p: lj.projection_scores(p, h[:4], standardize=True))(stacked)
    for k, p in enumerate((p0, p1)):
        ref = _np_scores(p, h[:4]) / np.asarray(p.scales, np.float64)[None]
        np.testing.assert_allclose(np.asarray(z[k]), ref, rtol=1e-4, atol=1e-4)
    # Provenance rides beside the pytree: hidden inside a transformation, kept outside.
    with pytest.raises(AttributeError, match="not available inside jit"):
        jax.jit(lambda p: p.settings["a"])(p0)
    assert jax.tree.map(lambda a: a, p1).settings == {"a": 2} and not p1.null_space
    betas = jax.jit(lambda p: p.replace(betas=2.0 * p.scales[:, 0]).betas)(p0)  # arrays replace under jit
    np.testing.assert_allclose(np.asarray(betas), 2.0 * np.asarray(p0.scales[:, 0]), rtol=1e-6)
    moved = p1.replace(seed=9, settings={"b": 3})
    assert int(moved.seed) == 9 and moved.settings == {"b": 3} and moved.rotate
    with pytest.raises(ValueError, match="num_subclasses=2 disagrees"):
        Projections(p0.directions, p0.means, p0.eigenvalues, p0.scales, p0.counts, num_subclasses=2)


def test_traced_alpha_without_labels_raises(rng):
    b, c, s = 6, 2, 3
    r = jnp.asarray(rng.standard_normal((b, c * s)), jnp.float32)
    t = jax.nn.softmax(jnp.asarray(rng.standard_normal((b, c * s)), jnp.float32))
    with pytest.raises(ValueError, match="alpha is traced"):
        jax.jit(lj.lelp_loss)(r, t, alpha=0.3)
    with pytest.raises(ValueError, match="alpha is traced"):
        jax.jit(lambda a: lj.kd_loss(r[:, :c], t[:, :c], tau=2.0, alpha=a))(0.0)
    # With labels a traced alpha is fine: the mix against a float64 reference.
    y = rng.integers(0, c, b).astype(np.int32)
    got = jax.jit(lambda a: lj.lelp_loss(r, t, labels=y, alpha=a, num_classes=c))(0.3)
    logq = _np_log_softmax(r)
    soft = -(np.asarray(t, np.float64) * logq).sum(-1).mean()
    logqc = np.log(np.exp(logq.reshape(b, c, s)).sum(-1))
    hard = -logqc[np.arange(b), y].mean()
    np.testing.assert_allclose(float(got), 0.7 * soft + 0.3 * hard, rtol=1e-5)
    # A Python 0 needs no labels, jitted or not.
    np.testing.assert_allclose(float(jax.jit(lj.lelp_loss)(r, t)), soft, rtol=1e-5)


@pytest.mark.parametrize("name", ["soft", "ce", "kd", "lelp", "fitnet"])
def test_reduction_sum_under_shard_map_equals_global_sum(rng, name):
    mesh = Mesh(np.array(jax.devices()), ("data",))
    k, per, c, s = len(jax.devices()), 3, 2, 2
    b = k * per
    r = rng.standard_normal((b, c * s)).astype(np.float32)
    t = rng.dirichlet(np.ones(c * s), b).astype(np.float32)
    y = rng.integers(0, c, b).astype(np.int32)
    mask = (rng.random(b) < 0.6).astype(np.float32)
    mask[-per:] = 0.0  # one shard all padding, others uneven: a pmean of means would be wrong
    mask[0] = 1.0
    adapter = {"kernel": rng.standard_normal((c * s, c * s)).astype(np.float32),
               "bias": rng.standard_normal(c * s).astype(np.float32)}

    def loss(rb, tb, yb, mb, reduction):
        if name == "soft":
            return lj.soft_cross_entropy(rb, tb, mask=mb, reduction=reduction)
        if name == "ce":
            return lj.cross_entropy(rb, yb * s, mask=mb, reduction=reduction)
        if name == "kd":
            return lj.kd_loss(rb, tb * 3.0, tau=2.0, labels=yb, alpha=0.25, mask=mb, reduction=reduction)
        if name == "fitnet":
            return feature_losses.fitnet_loss(rb, tb, adapter, mask=mb, reduction=reduction)
        return lj.lelp_loss(rb, tb, labels=yb, alpha=0.25, num_classes=c, mask=mb, reduction=reduction)

    def local(rb, tb, yb, mb):
        total = jax.lax.psum(loss(rb, tb, yb, mb, "sum"), "data")
        return total, total / jax.lax.psum(jnp.sum(mb), "data")

    spec = P("data")
    total, mean = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(spec,) * 4, out_specs=(P(), P())))(r, t, y, mask)
    logq = _np_log_softmax(r)
    if name == "soft":
        per_ex = -(t * logq).sum(-1)
    elif name == "ce":
        per_ex = -logq[np.arange(b), y * s]
    elif name == "fitnet":
        pred = r.astype(np.float64) @ adapter["kernel"].astype(np.float64) + adapter["bias"]
        per_ex = ((pred - t) ** 2).mean(-1)
    elif name == "kd":
        pt = np.exp(_np_log_softmax(np.asarray(t, np.float64) * 3.0 / 2.0))
        per_ex = 0.75 * 4.0 * -(pt * _np_log_softmax(r / 2.0)).sum(-1) + 0.25 * -logq[np.arange(b), y]
    else:
        logqc = np.log(np.exp(logq.reshape(b, c, s)).sum(-1))
        per_ex = 0.75 * -(t * logq).sum(-1) + 0.25 * -logqc[np.arange(b), y]
    want = float(np.sum(mask * per_ex))
    np.testing.assert_allclose(float(total), want, rtol=1e-5)
    np.testing.assert_allclose(float(mean), want / mask.sum(), rtol=1e-5)
    np.testing.assert_allclose(float(loss(r, t, y, mask, "mean")), want / mask.sum(), rtol=1e-5)
    none = np.asarray(loss(r, t, y, mask, "none"), np.float64)
    np.testing.assert_allclose(none, mask * per_ex, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="reduction must be one of"):
        loss(r, t, y, mask, "avg")


def _bad_cases(rng):
    """(name, function of arrays, good arrays, bad arrays, message): every value check that raises eagerly."""
    c, d, s, b = 2, 8, 2, 6
    m, h, y = _moments(rng, d=d, c=c)
    w = rng.standard_normal((c, d)).astype(np.float32)
    proj = lj.fit_projections(m, classifier_weights=w, num_subclasses=s, key=0)
    logits = (h[:b] @ w.T).astype(np.float32)
    r = rng.standard_normal((b, c * s)).astype(np.float32)
    t = np.asarray(lj.subclass_targets(proj, h[:b], logits, beta=1.0, tau=2.0))
    nan_h = h[:b].copy()
    nan_h[1, 2] = np.nan
    nan_l = logits.copy()
    nan_l[0, 1] = np.inf
    few = lj.update_moments(lj.init_moments(c, d), h[:12], np.array([0] * 10 + [1] * 2, np.int32))
    nan_m = m.replace(mean=m.mean.at[0, 0].set(jnp.nan))
    nan_w = w.copy()
    nan_w[1, 0] = np.nan
    yl = y[:b]
    scores = _np_scores(proj, h[:b]).astype(np.float32)

    def fit(mom, wts, sub=s):
        return lj.fit_projections(mom, classifier_weights=wts, num_subclasses=sub, key=0).directions

    return [
        ("update_moments labels", lambda lab: lj.update_moments(lj.init_moments(c, d), h[:b], lab).count,
         (yl,), (yl + 1,), r"labels must lie in \[0, 2\)"),
        ("fit nan moments", lambda mom: fit(mom, w), (m,), (nan_m,), "mean contains NaN or inf"),
        ("fit nan weights", lambda wts: fit(m, wts), (w,), (nan_w,), "classifier_weights contains NaN"),
        ("fit 2-example class with S=4", lambda mom: fit(mom, w, 4), (m,), (few,), r"class 1 has 2(\.0)? examples"),
        ("split beta", lambda beta: lj.split_targets(jax.nn.softmax(logits), scores, beta=beta),
         (1.5,), (-1.0,), "beta must be > 0"),
        ("targets beta", lambda beta: lj.subclass_targets(proj, h[:b], logits, beta=beta, tau=2.0),
         (np.ones(c, np.float32),), (np.array([1.0, 0.0], np.float32),), "beta must be > 0"),
        ("targets tau", lambda tau: lj.subclass_targets(proj, h[:b], logits, beta=1.0, tau=tau),
         (2.0,), (0.0,), "tau must be > 0"),
        ("targets nan logits", lambda lg: lj.subclass_targets(proj, h[:b], lg, beta=1.0, tau=2.0),
         (logits,), (nan_l,), "teacher_logits contains NaN or inf"),
        ("scores nan embeddings", lambda x: lj.projection_scores(proj, x), (h[:b],), (nan_h,),
         "embeddings contains NaN or inf"),
        ("cross_entropy labels", lambda lab: lj.cross_entropy(r, lab), (yl,), (yl - 1,),
         r"labels must lie in \[0, 4\)"),
        ("kd tau", lambda tau: lj.kd_loss(r, t, tau=tau), (2.0,), (-2.0,), "tau must be > 0"),
        ("kd student_tau", lambda st: lj.kd_loss(r, t, tau=2.0, student_tau=st), (1.0,), (0.0,),
         "student_tau must be > 0"),
        ("kd alpha", lambda a: lj.kd_loss(r, t, tau=2.0, labels=yl, alpha=a), (0.5,), (1.5,),
         r"alpha must be in \[0, 1\]"),
        ("lelp alpha", lambda a: lj.lelp_loss(r, t, labels=yl, alpha=a, num_classes=c), (0.5,), (-0.5,),
         r"alpha must be in \[0, 1\]"),
        ("lelp labels", lambda lab: lj.lelp_loss(r, t, labels=lab, alpha=0.5, num_classes=c), (yl,),
         (yl + 2,), r"labels must lie in \[0, 2\)"),
        ("subclass_aux temperature", lambda tmp: feature_losses.subclass_aux_loss(r, temperature=tmp), (0.5,),
         (0.0,), "temperature must be > 0"),
    ]


_CASES = ["update_moments labels", "fit nan moments", "fit nan weights", "fit 2-example class with S=4",
          "split beta", "targets beta", "targets tau", "targets nan logits", "scores nan embeddings",
          "cross_entropy labels", "kd tau", "kd student_tau", "kd alpha", "lelp alpha", "lelp labels",
          "subclass_aux temperature"]


@pytest.mark.parametrize("case", _CASES)
def test_checked_raises_under_jit_where_eager_raises(rng, case):
    cases = _bad_cases(rng)
    assert [x[0] for x in cases] == _CASES
    _, fn, good, bad, message = next(x for x in cases if x[0] == case)
    with pytest.raises(ValueError, match=message):
        fn(*bad)  # eagerly
    with pytest.raises(ValueError, match=message):
        lj.checked(jax.jit(fn))(*bad)  # traced, checkified
    jax.jit(fn)(*bad)  # plain jit: the check is dropped (no cost, no error)
    np.testing.assert_allclose(np.asarray(lj.checked(jax.jit(fn))(*good)), np.asarray(fn(*good)),
                               rtol=1e-5, atol=1e-6)


def test_checked_under_vmap_and_shard_map(rng):
    mesh = Mesh(np.array(jax.devices()), ("data",))
    r = rng.standard_normal((16, 4)).astype(np.float32)
    y = rng.integers(0, 4, 16).astype(np.int32)
    per_device = jax.shard_map(lambda rb, yb: jax.lax.psum(lj.cross_entropy(rb, yb, reduction="sum"), "data"),
                               mesh=mesh, in_specs=(P("data"), P("data")), out_specs=P())
    want = -_np_log_softmax(r)[np.arange(16), y].sum()
    np.testing.assert_allclose(float(lj.checked(jax.jit(per_device))(r, y)), want, rtol=1e-5)
    y_bad = y.copy()
    y_bad[11] = 4
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
        lj.checked(jax.jit(per_device))(r, y_bad)
    batched = jax.vmap(lambda tau: lj.kd_loss(r, r, tau=tau))
    with pytest.raises(ValueError, match="tau must be > 0"):
        lj.checked(batched)(jnp.array([1.0, -1.0]))


def test_wrong_ranks_name_the_problem(rng):
    x3 = jnp.zeros((2, 3, 4))
    with pytest.raises(ValueError, match=r"class_log_probs: student_logits must be 2-D \(B, C\*S\), got shape"):
        lj.class_log_probs(x3, num_classes=2)
    with pytest.raises(ValueError, match="soft_cross_entropy: logits must be 2-D"):
        lj.soft_cross_entropy(x3, x3)
    with pytest.raises(ValueError, match="cross_entropy: logits must be 2-D"):
        lj.cross_entropy(x3, jnp.zeros((2,), jnp.int32))
    with pytest.raises(ValueError, match="kd_loss: student_logits must be 2-D"):
        lj.kd_loss(x3, x3, tau=1.0)
    with pytest.raises(ValueError, match="batch_moments: embeddings must be 2-D"):
        lj.batch_moments(x3, jnp.zeros((2,), jnp.int32), num_classes=2)
    with pytest.raises(ValueError, match="update_moments: embeddings must be 2-D"):
        lj.update_moments(lj.init_moments(2, 4), x3, jnp.zeros((2,), jnp.int32))
    m, h, _ = _moments(rng)
    proj = lj.fit_projections(m, num_subclasses=2, null_space=False, rotate=False)
    with pytest.raises(ValueError, match="subclass_targets: embeddings must be 2-D"):
        lj.subclass_targets(proj, h[None, :4], jnp.zeros((1, 4, 2)), beta=1.0, tau=1.0)
    # vmap over a leading axis is the way to batch: class_log_probs with num_classes static.
    r = rng.standard_normal((3, 5, 6)).astype(np.float32)
    got = jax.vmap(lambda x: lj.class_log_probs(x, num_classes=2))(r)
    ref = np.log(np.exp(_np_log_softmax(r).reshape(3, 5, 2, 3)).sum(-1))
    np.testing.assert_allclose(np.asarray(got), ref, atol=1e-5)


def test_keyword_only_options_key_and_dtype(rng, monkeypatch, tmp_path):
    m, h, y = _moments(rng)
    with pytest.raises(TypeError):
        lj.update_moments(lj.init_moments(2, 8), h, y, np.ones(len(y), np.float32))  # mask is keyword-only
    with pytest.raises(TypeError):
        lj.covariance(m, 1)  # ddof is keyword-only
    # No key needed when nothing is random; the directions equal a keyed fit's.
    plain = lj.fit_projections(m, num_subclasses=2, null_space=False, rotate=False)
    keyed = lj.fit_projections(m, num_subclasses=2, null_space=False, rotate=False, key=7)
    np.testing.assert_array_equal(np.asarray(plain.directions), np.asarray(keyed.directions))
    assert plain.seed is None and int(keyed.seed) == 7
    with pytest.raises(ValueError, match="draws random numbers; pass key="):
        lj.fit_projections(m, num_subclasses=2, null_space=False)
    assert lj.init_moments(2, 3).mean.dtype == jnp.float32
    with jax.enable_x64(True):
        assert lj.init_moments(2, 3).m2.dtype == jnp.float64
        assert lj.init_moments(2, 3, dtype=jnp.float32).count.dtype == jnp.float32
    # save_projections goes through the one atomic writer (fsync before the rename).
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr("lelp_jax.core.atomic.os.fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    lj.save_projections(tmp_path / "p.npz", keyed)
    assert synced, "save_projections must fsync through lelp_jax.core.atomic"
    assert int(lj.load_projections(tmp_path / "p.npz").seed) == 7


def test_static_options_compile_in_the_library(rng):
    """Public functions carry their static options: usable in jit/vmap without static_argnames."""
    m, h, y = _moments(rng, c=3)
    fit = clustering.fit_class_kmeans(jax.random.PRNGKey(0), h, y, num_classes=3, num_subclasses=2, num_iters=3)
    z = jax.jit(lambda x: clustering.kmeans_scores(x, fit, scale="raw"))(h[:4])
    cent = np.asarray(fit.centroids, np.float64)
    ref = -((np.asarray(h[:4], np.float64)[:, None, None, :] - cent[None]) ** 2).sum(-1)
    np.testing.assert_allclose(np.asarray(z), ref, rtol=1e-4, atol=1e-3)
    moments = jax.jit(lambda x, lab: lj.batch_moments(x, lab, num_classes=3, block_rows=8))(h, y)
    np.testing.assert_allclose(np.asarray(moments.count), np.bincount(y, minlength=3))
    got = jax.jit(lambda x: targets.subclass_targets(
        lj.fit_projections(lj.update_moments(lj.init_moments(3, 8), x, y), num_subclasses=2,
                           null_space=False, rotate=False), x, x[:, :3], beta=1.0, tau=1.0, standardize=True))(h)
    np.testing.assert_allclose(np.asarray(got).sum(-1), 1.0, rtol=1e-5)
    assert losses.REDUCTIONS == ("mean", "sum", "none")


def test_api_md_python_blocks_run():
    """docs/API.md's examples run as written (they assert what they show)."""
    import pathlib
    import re

    doc = pathlib.Path(__file__).resolve().parents[1] / "docs" / "API.md"
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S)
    assert blocks, "docs/API.md lost its python examples"
    for block in blocks:
        exec(compile(block, str(doc), "exec"), {})


def test_host_side_functions_refuse_tracers_clearly(rng):
    from lelp_jax.core import sharpness

    z = rng.standard_normal((20, 2, 3)).astype(np.float32)
    y = (np.arange(20) % 2).astype(np.int32)
    with pytest.raises(ValueError, match="calibrate_betas runs on the host"):
        jax.jit(lambda s: jnp.asarray(sharpness.calibrate_betas(s, y, target_entropy=0.5)))(z)
    with pytest.raises(ValueError, match="split_diagnostics runs on the host"):
        jax.jit(lambda s: sharpness.split_diagnostics(s, y)["split_entropy"])(z)
    with pytest.raises(ValueError, match="oracle_slots runs on the host"):
        jax.jit(lambda f: clustering.oracle_slots(y, f, num_classes=2, num_fine=4).slot_mask)(y)
    # Eagerly the same call works: betas reach the target entropy (float64 reference).
    betas = sharpness.calibrate_betas(z, y, target_entropy=0.5)
    for c in range(2):
        zc = z[y == c, c].astype(np.float64)
        split = np.exp(_np_log_softmax(zc / betas[c]))
        ent = -(split * np.log(split)).sum(-1).mean() / np.log(3)
        np.testing.assert_allclose(ent, 0.5, atol=2e-4)

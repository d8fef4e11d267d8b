"""Scale-free sharpness: standardised LELP scores, entropy calibration, split diagnostics (float64 references)."""
import jax.numpy as jnp
import numpy as np
import pytest

from lelp_jax import methods
from lelp_jax.core import sharpness, targets
from lelp_jax.config import base_config, load_config
from lelp_jax.runtime.errors import ConfigError
from lelp_jax.core.projections import fit_projections
from lelp_jax.core.statistics import batch_moments


def np_softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def np_norm_entropy(p):
    return -(p * np.log(np.maximum(p, 1e-300))).sum(-1) / np.log(p.shape[-1])


def class_data(rng, n=240, c=3, d=12):
    """Embeddings with per-class means and anisotropic spreads far from unit scale (so raw z is not O(1))."""
    y = rng.integers(0, c, n)
    y[:c] = np.arange(c)
    scale = rng.uniform(0.01, 0.2, d)
    h = rng.normal(size=(c, d))[y] * 3.0 + rng.normal(size=(n, d)) * scale
    return h, y


@pytest.mark.parametrize("directions", ["pca", "random"])
def test_standardised_split_equals_float64_reference(rng, directions):
    """scales[c, s] is the std of z_{c,s} over class c's fit rows, for LELP's and for random directions,
    so the standardised split is softmax((z / std) / beta) computed in float64 from the data."""
    c, s, d = 3, 4, 12
    h, y = class_data(rng, c=c, d=d)
    w = rng.normal(size=(c, d))
    moments = batch_moments(jnp.asarray(h, jnp.float32), jnp.asarray(y), num_classes=c)
    proj = fit_projections(moments, classifier_weights=jnp.asarray(w, jnp.float32), num_subclasses=s, key=3,
                           directions=directions)
    u = np.asarray(proj.directions, np.float64)
    z = np.einsum("bcd,cds->bcs", h[:, None, :] - np.stack([h[y == k].mean(0) for k in range(c)])[None], u)
    std = np.stack([z[y == k, k].std(axis=0) for k in range(c)])  # (C, S), ddof = 0
    np.testing.assert_allclose(np.asarray(proj.scales), std, rtol=2e-3)
    logits = rng.normal(size=(len(y), c))
    beta = 0.6
    want = (np_softmax(logits / 1.5)[:, :, None] * np_softmax(z / std[None] / beta)).reshape(len(y), c * s)
    got = targets.subclass_targets(proj, jnp.asarray(h, jnp.float32), jnp.asarray(logits, jnp.float32), beta=beta,
                                   tau=1.5, standardize=True)
    np.testing.assert_allclose(np.asarray(got, np.float64), want, atol=2e-4)
    # standardised z has unit variance per direction on the class's own rows
    zs = np.asarray(targets.projection_scores(proj, jnp.asarray(h, jnp.float32), standardize=True), np.float64)
    np.testing.assert_allclose(np.stack([zs[y == k, k].std(0) for k in range(c)]), 1.0, rtol=2e-3)


@pytest.mark.parametrize("target", [0.25, 0.6, 0.9])
def test_calibrated_betas_hit_the_target_entropy(rng, target):
    n, c, s = 400, 3, 5
    y = rng.integers(0, c, n)
    z = rng.normal(size=(n, c, s)) * rng.uniform(0.05, 20.0, (1, c, 1)) + rng.normal(size=(1, c, s))
    betas = sharpness.calibrate_betas(z, y, target_entropy=target)
    assert betas.shape == (c,) and np.all(betas > 0)
    for k in range(c):
        e = np_norm_entropy(np_softmax(z[y == k, k] / betas[k])).mean()
        assert abs(e - target) < 0.01, (k, e)
    # scale-free: scaling class k's scores scales its beta
    z2 = z.copy()
    z2[:, 1] *= 7.0
    np.testing.assert_allclose(sharpness.calibrate_betas(z2, y, target_entropy=target)[1], 7.0 * betas[1], rtol=1e-3)


def test_calibration_rejects_bad_input(rng):
    z = rng.normal(size=(20, 2, 3))
    y = np.arange(20) % 2
    for bad in (0.0, 1.0, -0.2, 1.5):
        with pytest.raises(ValueError, match=r"target_entropy must lie in \(0, 1\)"):
            sharpness.calibrate_betas(z, y, target_entropy=bad)
    flat = z.copy()
    flat[:, 1] = 0.5
    with pytest.raises(ValueError, match="class 1's subclass scores are all equal"):
        sharpness.calibrate_betas(flat, y, target_entropy=0.5)
    with pytest.raises(ValueError, match="class 1 has no rows"):
        sharpness.calibrate_betas(z, np.zeros(20, int), target_entropy=0.5)
    with pytest.raises(ValueError, match=r"\(N, C, S\)"):
        sharpness.calibrate_betas(z[:, 0], y, target_entropy=0.5)
    np.testing.assert_array_equal(sharpness.calibrate_betas(z[:, :, :1], y, target_entropy=0.5), 1.0)  # S = 1


def test_split_diagnostics_and_nmi_match_references(rng):
    from sklearn.metrics import normalized_mutual_info_score

    n, c, s = 300, 2, 4
    y = rng.integers(0, c, n)
    fine = y * 5 + rng.integers(0, 5, n)
    split = np_softmax(rng.normal(size=(n, c, s)) * 2)
    got = sharpness.split_diagnostics(split, y, fine)
    own = split[np.arange(n), y]
    assert got["split_entropy"] == pytest.approx(np_norm_entropy(own).mean(), abs=1e-12)
    assert got["split_top_share"] == pytest.approx(own.max(-1).mean(), abs=1e-12)
    assert got["split_nmi"] == pytest.approx(normalized_mutual_info_score(fine, y * s + own.argmax(-1)), abs=1e-10)
    assert sharpness.split_diagnostics(split, y)["split_nmi"] is None
    for a, b in ((rng.integers(0, 3, 50), rng.integers(0, 7, 50)), (np.zeros(9), np.arange(9)), (np.ones(5), np.ones(5))):
        assert sharpness.normalized_mutual_info(a, b) == pytest.approx(normalized_mutual_info_score(a, b), abs=1e-10)
    hard = np.eye(s)[rng.integers(0, s, (n, c))]  # one-hot split: entropy 0, top share 1
    assert sharpness.split_diagnostics(hard, y) == {"split_entropy": 0.0, "split_top_share": 1.0, "split_nmi": None}


def test_split_targets_take_one_beta_per_class(rng):
    b, c, s = 6, 3, 4
    p = np_softmax(rng.normal(size=(b, c)))
    z = rng.normal(size=(b, c, s))
    betas = np.array([0.3, 1.0, 4.0])
    got = targets.split_targets(jnp.asarray(p, jnp.float32), jnp.asarray(z, jnp.float32), beta=jnp.asarray(betas))
    want = (p[:, :, None] * np_softmax(z / betas[None, :, None])).reshape(b, c * s)
    np.testing.assert_allclose(np.asarray(got, np.float64), want, atol=1e-6)
    with pytest.raises(ValueError, match=r"per-class beta must be \(3,\)"):
        targets.split_targets(jnp.asarray(p), jnp.asarray(z), beta=jnp.ones(2))
    with pytest.raises(ValueError, match="beta must be > 0"):
        targets.split_targets(jnp.asarray(p), jnp.asarray(z), beta=jnp.asarray([1.0, -1.0, 1.0]))


def test_lelp_loss_uses_calibrated_betas_and_refuses_a_missing_calibration(rng):
    c, s, d, b = 2, 3, 8, 5
    h, y = class_data(rng, n=60, c=c, d=d)
    moments = batch_moments(jnp.asarray(h, jnp.float32), jnp.asarray(y), num_classes=c)
    proj = fit_projections(moments, classifier_weights=jnp.asarray(rng.normal(size=(c, d)), jnp.float32),
                           num_subclasses=s, key=0)
    cfg = base_config()
    cfg.lelp.update(dict(num_subclasses=s, beta=1.0, tau=1.0, alpha=0.0, standardize=True, target_entropy=0.5))
    method = methods.get_method("lelp")
    options = method.parse_options(cfg)
    kw = dict(student_logits=jnp.asarray(rng.normal(size=(b, c * s)), jnp.float32),
              batch={"label": jnp.asarray(y[:b])}, teacher_embedding=jnp.asarray(h[:b], jnp.float32),
              teacher_logits=jnp.asarray(rng.normal(size=(b, c)), jnp.float32))
    with pytest.raises(ValueError, match="no calibrated betas"):
        method.loss(methods.LossInputs(aux=proj, **kw), options)
    z = np.asarray(method.scores(proj, jnp.asarray(h, jnp.float32), options))
    betas = sharpness.calibrate_betas(z, y, target_entropy=0.5)
    cal = proj.replace(betas=jnp.asarray(betas, jnp.float32))
    split = np.asarray(method.split(cal, jnp.asarray(h, jnp.float32), {"label": jnp.asarray(y)}, options), np.float64)
    assert sharpness.split_diagnostics(split, y)["split_entropy"] == pytest.approx(0.5, abs=0.01)
    t = (np_softmax(np.asarray(kw["teacher_logits"], np.float64))[:, :, None] * split[:b]).reshape(b, c * s)
    want = -(t * np.log(np_softmax(np.asarray(kw["student_logits"], np.float64)))).sum(-1).mean()
    assert float(method.loss(methods.LossInputs(aux=cal, **kw), options)) == pytest.approx(want, rel=1e-4)


@pytest.mark.parametrize("override,match", [
    ("lelp.target_entropy=0", r"target_entropy must lie in \(0, 1\)"),
    ("lelp.target_entropy=1.0", r"target_entropy must lie in \(0, 1\)"),
    ("lelp.target_entropy=-0.3", r"target_entropy must lie in \(0, 1\)"),
    ("lelp.beta=-1", "lelp.beta must be > 0"),
    ("lelp.beta=0", "lelp.beta must be > 0"),
    ("kmeans.temperature=0", "kmeans.temperature must be > 0"),
    ("kmeans.scale=unit", "kmeans.scale must be"),
])
def test_bad_sharpness_settings_are_config_errors(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config("configs/digits_binary.py", [f"--config.{override}"])


def test_new_defaults_are_scale_free():
    cfg = load_config("configs/digits_binary.py", [])
    assert cfg.lelp.standardize is True and cfg.lelp.target_entropy is None
    assert cfg.kmeans.scale == "standardized" and cfg.kmeans.temperature is None
    assert load_config("configs/digits_binary.py", ["--config.lelp.target_entropy=0.7"]).lelp.target_entropy == 0.7


def test_projections_keep_their_betas_through_a_file(tmp_path, rng):
    from lelp_jax.core.projections import load_projections, save_projections

    h, y = class_data(rng, n=40, c=2, d=6)
    proj = fit_projections(batch_moments(jnp.asarray(h, jnp.float32), jnp.asarray(y), num_classes=2),
                           num_subclasses=2, key=0, null_space=False)
    save_projections(tmp_path / "a.npz", proj)
    assert load_projections(tmp_path / "a.npz").betas is None
    save_projections(tmp_path / "b.npz", proj.replace(betas=jnp.asarray([0.5, 2.0])))
    np.testing.assert_allclose(np.asarray(load_projections(tmp_path / "b.npz").betas), [0.5, 2.0])

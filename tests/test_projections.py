"""Null space, per-class PCA, rotation and the artifact, against float64 NumPy references."""
import os

import jax
import numpy as np
import pytest

import lelp_jax as lj


def make_moments(rng, n=400, d=12, c=2):
    """Classes with well-separated spectra (distinct variances), so top-S subspaces are well defined."""
    y = np.arange(n) % c
    basis = np.stack([np.linalg.qr(rng.standard_normal((d, d)))[0] for _ in range(c)])
    spread = np.linspace(3.0, 0.3, d)
    h = 5 * rng.standard_normal((c, d))[y] + np.einsum("nd,nde->ne", rng.standard_normal((n, d)) * spread,
                                                        basis[y].transpose(0, 2, 1))
    h = h.astype(np.float32)
    m = lj.update_moments(lj.init_moments(c, d), h, y.astype(np.int32))
    return m, h, y


def ref_class_stats(h, y, c):
    h = h.astype(np.float64)
    return (np.stack([h[y == k].mean(0) for k in range(c)]),
            np.stack([np.cov(h[y == k].T, ddof=0) for k in range(c)]))


def ref_projector(w):
    w = np.asarray(w, np.float64)
    return np.eye(w.shape[1]) - w.T @ np.linalg.pinv(w @ w.T) @ w


def top_projector(cov, s):
    vals, vecs = np.linalg.eigh(cov)
    v = vecs[:, ::-1][:, :s]
    return v @ v.T, vals[::-1]


def test_null_space_projector_matches_pinv_formula(rng):
    w = rng.standard_normal((3, 10)).astype(np.float32)
    p = np.asarray(lj.null_space_projector(w), np.float64)
    np.testing.assert_allclose(p, ref_projector(w), atol=1e-5)
    np.testing.assert_allclose(p @ p, p, atol=1e-5)
    np.testing.assert_allclose(p, p.T, atol=1e-6)
    assert np.abs(w @ p).max() <= 1e-5 * np.abs(w).max()
    # Rank-deficient W (a repeated row): the pseudo-inverse form still holds, null space is D - 2.
    w2 = np.concatenate([w[:2], w[:1]])
    p2 = np.asarray(lj.null_space_projector(w2), np.float64)
    np.testing.assert_allclose(p2, ref_projector(w2), atol=1e-5)
    assert abs(np.trace(p2) - 8) < 1e-4


def test_pca_without_null_space_or_rotation_matches_eigh(rng):
    m, h, y = make_moments(rng)
    proj = lj.fit_projections(m, num_subclasses=3, key=0, null_space=False, rotate=False)
    means, covs = ref_class_stats(h, y, 2)
    for k in range(2):
        ref_p, ref_vals = top_projector(covs[k], 3)
        u = np.asarray(proj.directions[k], np.float64)
        np.testing.assert_allclose(u @ u.T, ref_p, atol=1e-4)
        np.testing.assert_allclose(proj.eigenvalues[k], ref_vals, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(proj.means[k], means[k], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(proj.scales[k], np.sqrt(ref_vals[:3]), rtol=1e-4)
    assert np.all(np.diff(np.asarray(proj.eigenvalues), axis=1) <= 0), "eigenvalues sorted descending"


def test_null_space_fit_orthogonal_to_row_space(rng):
    m, h, y = make_moments(rng)
    w = rng.standard_normal((2, 12)).astype(np.float32)
    proj = lj.fit_projections(m, classifier_weights=w, num_subclasses=4, key=1)
    p = ref_projector(w)
    means, covs = ref_class_stats(h, y, 2)
    for k in range(2):
        u = np.asarray(proj.directions[k], np.float64)
        np.testing.assert_allclose(u.T @ u, np.eye(4), atol=1e-5)
        assert np.abs(w @ u).max() <= 1e-5 * np.linalg.norm(w, axis=1).max()
        cov_p = p @ covs[k] @ p
        ref_top, ref_vals = top_projector(cov_p, 4)
        np.testing.assert_allclose(u @ u.T, ref_top, atol=1e-4)
        np.testing.assert_allclose(proj.eigenvalues[k], np.clip(ref_vals, 0, None), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(proj.means[k], p @ means[k], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(proj.scales[k], np.sqrt(np.diag(u.T @ covs[k] @ u)), rtol=1e-4)
        # U^T (P h - P mu) == U^T (h - mu): raw embeddings can be projected directly.
        z_raw = (h[y == k] - means[k]) @ u
        z_p = (h[y == k] @ p - p @ means[k]) @ u
        np.testing.assert_allclose(z_raw, z_p, atol=1e-4)
    assert proj.null_space and proj.rotate and proj.seed == 1 and proj.num_subclasses == 4


def test_degenerate_class_still_gets_null_space_directions(rng):
    """A class whose null-space variance has rank 1 < S: the extra directions must still avoid W's row space."""
    d, n = 8, 60
    w = rng.standard_normal((2, d)).astype(np.float32)
    p = ref_projector(w)
    v = p @ rng.standard_normal(d)
    v /= np.linalg.norm(v)
    row = w[0] / np.linalg.norm(w[0])
    # Class 0: variance along one null-space direction and (large) along the row space of W only.
    h0 = np.outer(rng.standard_normal(n), v) + 10 * np.outer(rng.standard_normal(n), row)
    h1 = rng.standard_normal((n, d))
    h = np.concatenate([h0, h1]).astype(np.float32)
    y = np.repeat([0, 1], n).astype(np.int32)
    m = lj.update_moments(lj.init_moments(2, d), h, y)
    proj = lj.fit_projections(m, classifier_weights=w, num_subclasses=3, key=0)
    u = np.asarray(proj.directions[0], np.float64)
    np.testing.assert_allclose(u.T @ u, np.eye(3), atol=1e-5)
    assert np.abs(w @ u).max() <= 1e-5 * np.linalg.norm(w, axis=1).max()
    np.testing.assert_allclose(np.asarray(proj.eigenvalues[0, 1:]), 0.0, atol=1e-4)
    assert np.all(np.isfinite(np.asarray(proj.scales)))


def test_rotation_keeps_subspace_and_is_seeded(rng):
    m, _, _ = make_moments(rng)
    w = rng.standard_normal((2, 12)).astype(np.float32)
    plain = lj.fit_projections(m, classifier_weights=w, num_subclasses=3, key=0, rotate=False)
    rot_a = lj.fit_projections(m, classifier_weights=w, num_subclasses=3, key=jax.random.PRNGKey(7))
    rot_b = lj.fit_projections(m, classifier_weights=w, num_subclasses=3, key=jax.random.PRNGKey(7))
    rot_c = lj.fit_projections(m, classifier_weights=w, num_subclasses=3, key=jax.random.PRNGKey(8))
    for k in range(2):
        v, u = np.asarray(plain.directions[k]), np.asarray(rot_a.directions[k])
        np.testing.assert_allclose(u @ u.T, v @ v.T, atol=1e-5)
        assert np.abs(u - v).max() > 1e-2, "rotation should change the directions"
    np.testing.assert_array_equal(np.asarray(rot_a.directions), np.asarray(rot_b.directions))
    assert np.abs(np.asarray(rot_a.directions) - np.asarray(rot_c.directions)).max() > 1e-2
    # Eigenvalues do not depend on the rotation; the summed projection variance does not either.
    np.testing.assert_array_equal(np.asarray(rot_a.eigenvalues), np.asarray(plain.eigenvalues))
    np.testing.assert_allclose((rot_a.scales ** 2).sum(1), (plain.scales ** 2).sum(1), rtol=1e-4)


def test_random_directions_ablation(rng):
    m, _, _ = make_moments(rng)
    w = rng.standard_normal((2, 12)).astype(np.float32)
    pca = lj.fit_projections(m, classifier_weights=w, num_subclasses=3, key=3)
    rnd = lj.fit_projections(m, classifier_weights=w, num_subclasses=3, key=3, directions="random")
    again = lj.fit_projections(m, classifier_weights=w, num_subclasses=3, key=3, directions="random")
    np.testing.assert_array_equal(np.asarray(rnd.directions), np.asarray(again.directions))
    assert rnd.directions_kind == "random"
    for k in range(2):
        u = np.asarray(rnd.directions[k], np.float64)
        np.testing.assert_allclose(u.T @ u, np.eye(3), atol=1e-5)
        assert np.abs(w @ u).max() <= 1e-5 * np.linalg.norm(w, axis=1).max()
        v = np.asarray(pca.directions[k])
        assert np.abs(u @ u.T - v @ v.T).max() > 1e-2, "random subspace should differ from PCA"
    free = lj.fit_projections(m, num_subclasses=3, key=3, directions="random", null_space=False)
    assert np.abs(w @ np.asarray(free.directions[0])).max() > 1e-3


def test_save_load_round_trip(tmp_path, rng):
    m, _, _ = make_moments(rng, d=8)
    w = rng.standard_normal((2, 8)).astype(np.float32)
    proj = lj.fit_projections(m, classifier_weights=w, num_subclasses=2, key=5,
                              settings={"beta": 1.0, "tau": 2.0, "fit_labels": "true", "teacher": "mlp"})
    path = tmp_path / "sub" / "projections.npz"
    lj.save_projections(path, proj)
    lj.save_projections(path, proj)  # overwrite in place
    assert sorted(os.listdir(path.parent)) == ["projections.npz"], "no temp files left behind"
    back = lj.load_projections(path)
    for name in ("directions", "means", "eigenvalues", "scales", "counts"):
        np.testing.assert_array_equal(np.asarray(getattr(back, name)), np.asarray(getattr(proj, name)))
    assert (back.num_subclasses, back.null_space, back.rotate, back.seed, back.directions_kind) == (
        2, True, True, 5, "pca")
    assert back.settings == {"beta": 1.0, "tau": 2.0, "fit_labels": "true", "teacher": "mlp"}
    # Same pytree structure: usable where the original was.
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(proj)
    bad = proj.replace(settings={"fn": object()})
    with pytest.raises(ValueError, match="JSON-serialisable"):
        lj.save_projections(tmp_path / "bad.npz", bad)


def test_projections_is_a_jittable_pytree(rng):
    m, h, _ = make_moments(rng, d=8)
    proj = lj.fit_projections(m, num_subclasses=2, key=0, null_space=False, settings={"beta": 1.0})
    f = jax.jit(lambda p, x: jax.numpy.einsum("bcd,cds->bcs", x[:, None, :] - p.means[None], p.directions))
    out = np.asarray(f(proj, h[:4]))
    u, mu = np.asarray(proj.directions, np.float64), np.asarray(proj.means, np.float64)
    ref = np.einsum("bcd,cds->bcs", h[:4, None, :].astype(np.float64) - mu[None], u)
    np.testing.assert_allclose(out, ref, atol=1e-4)
    same = jax.tree_util.tree_map(lambda a: a, proj)
    assert same.settings == {"beta": 1.0} and f(same, h[:4]).shape == (4, 2, 2)
    # The arrays and the seed are the leaves; the provenance (flags, settings) is not.
    assert len(jax.tree_util.tree_leaves(proj)) == 6 and int(proj.seed) == 0


def test_validation_errors(rng):
    m, _, _ = make_moments(rng, n=40, d=6, c=2)
    w = rng.standard_normal((2, 6)).astype(np.float32)
    with pytest.raises(ValueError, match="num_subclasses must be an int >= 1"):
        lj.fit_projections(m, classifier_weights=w, num_subclasses=0, key=0)
    with pytest.raises(ValueError, match=r"need D >= C \+ S"):
        lj.fit_projections(m, classifier_weights=w, num_subclasses=5, key=0)
    with pytest.raises(ValueError, match=r"classifier_weights must be \(C, D\) = \(2, 6\)"):
        lj.fit_projections(m, classifier_weights=w.T, num_subclasses=2, key=0)
    with pytest.raises(ValueError, match="needs classifier_weights"):
        lj.fit_projections(m, num_subclasses=2, key=0)
    with pytest.raises(ValueError, match="directions must be 'pca' or 'random'"):
        lj.fit_projections(m, classifier_weights=w, num_subclasses=2, key=0, directions="ica")
    few = lj.update_moments(lj.init_moments(2, 6), rng.standard_normal((12, 6)).astype(np.float32),
                            np.array([0] * 10 + [1] * 2, np.int32))
    with pytest.raises(ValueError, match="class 1 has 2 examples, fewer than num_subclasses \\+ 1 = 3"):
        lj.fit_projections(few, classifier_weights=w, num_subclasses=2, key=0)
    nan = m.replace(m2=m.m2.at[0, 0, 0].set(np.nan))
    with pytest.raises(ValueError, match="m2 contains NaN or inf"):
        lj.fit_projections(nan, classifier_weights=w, num_subclasses=2, key=0)
    with pytest.raises(ValueError, match="must be \\(C, D\\)"):
        lj.null_space_projector(w[0])


def test_projections_is_a_struct_dataclass_whose_provenance_never_splits_a_jit_cache(rng, tmp_path):
    import dataclasses

    from lelp_jax.core.projections import Projections, Settings

    m, h, _ = make_moments(rng, d=8)
    w = rng.standard_normal((2, 8)).astype(np.float32)
    a = lj.fit_projections(m, classifier_weights=w, num_subclasses=2, key=0,
                           settings={"beta": 1.0, "teacher": "mlp-a", "seed": 0})
    assert dataclasses.is_dataclass(a)
    static = {f.name for f in dataclasses.fields(a) if not f.metadata.get("pytree_node", True)}
    assert static == {"null_space", "rotate", "directions_kind", "settings", "num_subclasses"}
    # (c) the leaves are the arrays (betas None: no leaf), keyed by field name.
    paths = [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_flatten_with_path(a)[0]]
    assert paths == [".directions", ".means", ".eigenvalues", ".scales", ".counts", ".seed"]
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(a))
    # (b) per-run values (seed, settings, betas' values, the arrays' values) reuse one compilation;
    # the static flags are readable inside jit.
    b = lj.fit_projections(m.replace(mean=m.mean + 1.0), classifier_weights=w, num_subclasses=2, key=1,
                           settings={"beta": 4.0, "teacher": "mlp-b", "seed": 1, "extra": [1, 2]})
    step = jax.jit(lambda p, x: lj.projection_scores(p, x, standardize=p.null_space).sum())
    step(a, h[:4]), step(b, h[:4]), step(a.replace(seed=7), h[:4])
    assert step._cache_size() == 1
    calibrated = jax.jit(lambda p: (p.betas * p.scales[:, 0]).sum())
    calibrated(a.replace(betas=np.ones(2, np.float32))), calibrated(b.replace(betas=np.full(2, 3.0, np.float32)))
    assert calibrated._cache_size() == 1
    assert hash(a.settings) == hash(b.settings) and a.settings == b.settings and a.settings != dict(b.settings)
    # A different kind of fit is a different treedef (and may be branched on inside jit).
    step(lj.fit_projections(m, num_subclasses=2, key=0, null_space=False), h[:4])
    assert step._cache_size() == 2
    # Settings are hidden inside a transformation and on what it returns; kept by tree.map outside.
    assert jax.jit(lambda p: p)(a).settings == Settings(hidden=True)
    with pytest.raises(AttributeError, match="not available inside jit"):
        dict(jax.jit(lambda p: p)(b).settings)
    assert dict(jax.tree.map(np.asarray, b).settings) == dict(b.settings)
    # (a) save/load round-trips every field.
    lj.save_projections(tmp_path / "b.npz", b.replace(betas=np.array([0.5, 2.0], np.float32)))
    back = lj.load_projections(tmp_path / "b.npz")
    for name in ("directions", "means", "eigenvalues", "scales", "counts", "betas", "seed"):
        np.testing.assert_array_equal(np.asarray(getattr(back, name)), np.asarray(getattr(b, name)) if name != "betas"
                                      else [0.5, 2.0])
    assert (back.null_space, back.rotate, back.directions_kind, back.num_subclasses) == (True, True, "pca", 2)
    assert dict(back.settings) == {"beta": 4.0, "teacher": "mlp-b", "seed": 1, "extra": [1, 2]}
    # Positional and keyword constructor calls as before; the frozen dataclass copies with replace.
    p = Projections(a.directions, a.means, a.eigenvalues, a.scales, a.counts, None, 3, rotate=False)
    assert int(p.seed) == 3 and p.seed.dtype == np.int32 and not p.rotate and p.settings == {}
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.seed = 4

"""Streaming per-class moments against float64 NumPy references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import lelp_jax as lj


def reference(h, y, c, ddof=0):
    """float64 per-class count, mean, covariance."""
    h = np.asarray(h, np.float64)
    counts = np.array([np.sum(y == k) for k in range(c)], np.float64)
    means = np.stack([h[y == k].mean(0) for k in range(c)])
    covs = np.stack([np.cov(h[y == k].T, ddof=ddof) for k in range(c)])
    return counts, means, covs


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def make_data(rng, n=600, d=6, c=3, offset=100.0):
    """Embeddings whose mean is `offset` times their spread, with correlated classes."""
    y = rng.integers(0, c, size=n)
    centres = offset * (1.0 + rng.random((c, d)))
    mix = rng.standard_normal((c, d, d)) / np.sqrt(d)
    h = centres[y] + np.einsum("nd,nde->ne", rng.standard_normal((n, d)), mix[y])
    return h.astype(np.float32), y.astype(np.int32)


def stream(h, y, c, batch, mask_last=True):
    """Batches of `batch` rows; the last partial batch is padded and masked like the data layer does."""
    m = lj.init_moments(c, h.shape[1])
    step = jax.jit(lj.update_moments)
    for start in range(0, len(h), batch):
        hb, yb = h[start:start + batch], y[start:start + batch]
        pad = batch - len(hb)
        mask = np.concatenate([np.ones(len(hb)), np.zeros(pad)]).astype(np.float32)
        hb = np.concatenate([hb, np.full((pad, h.shape[1]), 1e6, np.float32)])  # garbage in padding
        yb = np.concatenate([yb, np.zeros(pad, np.int32)])
        m = step(m, hb, yb, mask=mask)
    return m


def test_streaming_matches_float64_with_large_mean(rng):
    # Mean 100x the spread: the naive E[hh^T] - mu mu^T would lose ~all digits in float32.
    h, y = make_data(rng)
    m = stream(h, y, 3, batch=64)
    counts, means, covs = reference(h, y, 3)
    np.testing.assert_array_equal(np.asarray(m.count), counts)
    for k in range(3):
        assert rel(lj.covariance(m)[k], covs[k]) <= 1e-4
        assert rel(m.mean[k], means[k]) <= 1e-6
    _, _, covs1 = reference(h, y, 3, ddof=1)
    assert rel(lj.covariance(m, ddof=1), covs1) <= 1e-4


def test_order_and_split_do_not_change_result(rng):
    h, y = make_data(rng, n=300)
    a = stream(h, y, 3, batch=50)
    perm = rng.permutation(len(h))
    b = stream(h[perm], y[perm], 3, batch=37)
    np.testing.assert_array_equal(np.asarray(a.count), np.asarray(b.count))
    assert rel(b.mean, a.mean) <= 1e-6
    assert rel(b.m2, a.m2) <= 1e-4


def test_merge_equals_joint_and_empty_is_identity(rng):
    h, y = make_data(rng, n=200)
    joint = lj.update_moments(lj.init_moments(3, 6), h, y)
    parts = lj.merge_moments(lj.update_moments(lj.init_moments(3, 6), h[:70], y[:70]),
                             lj.update_moments(lj.init_moments(3, 6), h[70:], y[70:]))
    assert rel(parts.m2, joint.m2) <= 1e-4 and rel(parts.mean, joint.mean) <= 1e-6
    same = lj.merge_moments(lj.init_moments(3, 6), joint)
    np.testing.assert_allclose(same.m2, joint.m2, rtol=1e-6)


def test_empty_class_is_zero_and_mask_drops_rows(rng):
    h = rng.standard_normal((20, 4)).astype(np.float32)
    y = np.zeros(20, np.int32)
    mask = (rng.random(20) < 0.5).astype(np.float32)
    mask[0] = 1.0
    m = lj.update_moments(lj.init_moments(2, 4), h, y, mask=mask)
    keep = mask > 0
    assert float(m.count[1]) == 0.0
    np.testing.assert_array_equal(np.asarray(lj.covariance(m, ddof=1)[1]), 0.0)
    np.testing.assert_allclose(m.mean[0], h[keep].astype(np.float64).mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lj.covariance(m)[0], np.cov(h[keep].T.astype(np.float64), ddof=0),
                               rtol=1e-4, atol=1e-6)


def test_jit_with_batch_sharded_over_8_devices(rng):
    devices = jax.devices()
    assert len(devices) == 8, "conftest should emulate 8 CPU devices"
    mesh = Mesh(np.array(devices), ("data",))
    h, y = make_data(rng, n=256, d=8, c=2)
    rows = NamedSharding(mesh, P("data"))
    hs, ys = jax.device_put(h, rows), jax.device_put(y, rows)
    assert len(hs.sharding.device_set) == 8
    sharded = jax.jit(lj.update_moments)(lj.init_moments(2, 8), hs, ys)
    single = jax.jit(lj.update_moments)(lj.init_moments(2, 8), jax.device_put(h, devices[0]),
                                        jax.device_put(y, devices[0]))
    np.testing.assert_array_equal(np.asarray(sharded.count), np.asarray(single.count))
    assert rel(sharded.mean, single.mean) <= 1e-6
    assert rel(sharded.m2, single.m2) <= 1e-4
    _, _, covs = reference(h, y, 2)
    assert rel(lj.covariance(sharded), covs) <= 1e-4


def test_shard_map_all_reduce_gives_single_device_result(rng):
    mesh = Mesh(np.array(jax.devices()), ("data",))
    h, y = make_data(rng, n=8 * 24, d=5, c=3)
    mask = (rng.random(len(h)) < 0.9).astype(np.float32)

    def local(hb, yb, mb):
        part = lj.update_moments(lj.init_moments(3, 5), hb, yb, mask=mb)
        return lj.all_reduce_moments(part, "data")

    f = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P("data"), P("data"), P("data")),
                              out_specs=P()))
    reduced = f(h, y, mask)
    single = lj.update_moments(lj.init_moments(3, 5), h, y, mask=mask)
    np.testing.assert_array_equal(np.asarray(reduced.count), np.asarray(single.count))
    assert rel(reduced.mean, single.mean) <= 1e-6
    assert rel(reduced.m2, single.m2) <= 1e-4
    keep = mask > 0
    _, _, covs = reference(h[keep], y[keep], 3)
    assert rel(lj.covariance(reduced), covs) <= 1e-4


def test_bad_inputs_raise():
    m = lj.init_moments(2, 3)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        lj.update_moments(m, jnp.ones((4, 3)), jnp.array([0, 1, 2, 0]))
    with pytest.raises(ValueError, match=r"embeddings must be \(B, 3\)"):
        lj.update_moments(m, jnp.ones((4, 5)), jnp.zeros(4, jnp.int32))
    with pytest.raises(ValueError, match="labels must be"):
        lj.update_moments(m, jnp.ones((4, 3)), jnp.zeros(3, jnp.int32))
    with pytest.raises(ValueError, match="num_classes >= 1"):
        lj.init_moments(0, 3)
    with pytest.raises(ValueError, match="shapes differ"):
        lj.merge_moments(m, lj.init_moments(2, 4))


@pytest.mark.parametrize("block_rows", [1, 3, 8, 64])
def test_class_blocks_match_weighted_float64_reference(rng, block_rows):
    """Packing rows into class-pure blocks: any block size, a class spanning many blocks, an empty
    class, fractional weights, NaN padding rows and out-of-range labels all give the weighted
    float64 moments (M2_c = sum_i w_i (h_i - mu_c)(h_i - mu_c)^T)."""
    n, d, c = 50, 4, 4
    y = np.where(rng.random(n) < 0.8, 0, 2).astype(np.int32)  # class 0 dominates, 1 and 3 empty
    y[40:48] = 2  # class 2 keeps several real rows whatever the draw
    h = rng.standard_normal((n, d)).astype(np.float32) + 5.0
    w = rng.random(n).astype(np.float32)
    w[:5] = 0.0
    h[:5] = np.nan  # weight-0 rows are ignored, whatever they hold
    y[5] = c + 3  # out of range inside jit: contributes nothing
    got = jax.jit(lj.batch_moments, static_argnames=("num_classes", "block_rows"))(
        h, y, num_classes=c, mask=w, block_rows=block_rows)
    keep = (w > 0) & (y < c)
    h64, w64 = h.astype(np.float64), w.astype(np.float64)
    for k in range(c):
        sel = keep & (y == k)
        count = w64[sel].sum()
        np.testing.assert_allclose(float(got.count[k]), count, rtol=1e-6)
        if count == 0:
            assert not np.any(np.asarray(got.m2[k])) and not np.any(np.asarray(got.mean[k]))
            continue
        mean = (w64[sel, None] * h64[sel]).sum(0) / count
        r = h64[sel] - mean
        m2 = np.einsum("n,nd,ne->de", w64[sel], r, r)
        np.testing.assert_allclose(np.asarray(got.mean[k]), mean, rtol=1e-5)
        np.testing.assert_allclose(np.asarray(got.m2[k]), m2, rtol=1e-5, atol=1e-5 * np.abs(m2).max())

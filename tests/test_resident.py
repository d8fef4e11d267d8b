"""Device-resident batches are the host batches: same rows, order, mask, dtypes and state."""
from __future__ import annotations

import numpy as np
import pytest

from lelp_jax.data.iterator import BatchIterator
from lelp_jax.data.resident import ResidentBatches, resident_bytes
from lelp_jax.data.sources import ArraySource
from lelp_jax.runtime import sharding as shd


def _source(n: int, rng: np.random.Generator) -> ArraySource:
    return ArraySource({"features": rng.normal(size=(n, 7)).astype(np.float32),
                        "label": rng.integers(0, 3, n), "fine_label": rng.integers(0, 9, n),
                        "index": np.arange(n)})


@pytest.mark.parametrize("batch_size", [8, 16])
def test_resident_stream_equals_host_stream_across_epochs_and_resume(batch_size):
    rng = np.random.default_rng()
    n, seed = int(rng.integers(40, 90)), int(rng.integers(0, 2**31))
    mesh = shd.make_mesh(None)
    extra = {"teacher_logits": rng.normal(size=(n, 3)).astype(np.float32)}
    host = BatchIterator(_source(n, np.random.default_rng(seed)), global_batch_size=batch_size, seed=seed)
    dev = ResidentBatches(BatchIterator(_source(n, np.random.default_rng(seed)), global_batch_size=batch_size,
                                        seed=seed), mesh, extra=extra)
    steps = 3 * host.batches_per_epoch + 1  # crosses epochs (a new permutation each)
    for k in range(steps):
        want = next(host)
        got = shd.to_host(next(dev))
        assert set(got) == set(want) | set(extra)
        for key, value in want.items():
            np.testing.assert_array_equal(got[key], np.asarray(value, dtype=got[key].dtype))
            assert got[key].dtype == shd.to_host(shd.shard_batch({key: value}, mesh))[key].dtype
        np.testing.assert_array_equal(got["teacher_logits"], extra["teacher_logits"][want["index"]])
        if k == steps // 2:  # resume mid-stream from the state, in the other mode
            state = dev.get_state()
            assert state == host.get_state()
            host = BatchIterator(_source(n, np.random.default_rng(seed)), global_batch_size=batch_size, seed=seed)
            host.set_state(state)


def test_resident_refuses_text_and_wrong_extra_rows():
    from lelp_jax.data.sources import TextSource

    text = TextSource([np.array([1, 2, 3]), np.array([4, 5])], np.array([0, 1]))
    it = BatchIterator(text, global_batch_size=2, seed=0)
    assert resident_bytes(it) is None
    with pytest.raises(ValueError, match="text split"):
        ResidentBatches(it, shd.make_mesh(None))
    rng = np.random.default_rng()
    it = BatchIterator(_source(20, rng), global_batch_size=4, seed=0)
    assert resident_bytes(it) == 20 * (7 * 4 + 4 + 4 + 8)
    with pytest.raises(ValueError, match="extra column 'teacher_logits' has 3 rows"):
        ResidentBatches(it, shd.make_mesh(None), extra={"teacher_logits": np.zeros((3, 2))})

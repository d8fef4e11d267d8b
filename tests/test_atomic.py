"""Atomic writes: a failed write leaves the old file intact and no temporary file behind."""
import json

import numpy as np
import pytest

from lelp_jax.core import atomic


def test_writes_then_failure_keeps_the_old_file(tmp_path, rng):
    path = tmp_path / "sub" / "a.json"
    atomic.write_json(path, {"b": 1, "a": np.float32(0.5), "c": np.arange(2)})
    assert json.loads(path.read_text()) == {"a": 0.5, "b": 1, "c": [0, 1]}
    with pytest.raises(TypeError):
        atomic.write_json(path, {"x": object()})  # not serialisable: fails mid-write
    assert json.loads(path.read_text()) == {"a": 0.5, "b": 1, "c": [0, 1]}
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.json"]

    arrays = {"x": rng.standard_normal((3, 4)), "y": rng.integers(0, 9, 5)}
    npz = tmp_path / "s.npz"
    atomic.save_npz(npz, **arrays)
    with np.load(npz) as f:
        for k, v in arrays.items():
            np.testing.assert_array_equal(f[k], v)
    with pytest.raises(RuntimeError):
        with atomic.atomic_open(npz, "wb") as f:
            f.write(b"partial")
            raise RuntimeError("killed")
    with np.load(npz) as f:
        np.testing.assert_array_equal(f["x"], arrays["x"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.npz", "sub"]

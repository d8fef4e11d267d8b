"""``require``: one value check, raised eagerly on concrete values, staged as checkify under tracing."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lelp_jax as lj
from lelp_jax.core.validation import require, require_labels


def _reciprocal(t):
    require(t > 0, "t must be > 0, got {} (row {row})", t, row=jnp.argmin(t))
    return 1.0 / t


def test_require_raises_eagerly_with_the_formatted_values():
    with pytest.raises(ValueError, match=r"^t must be > 0, got \[ 2. -1.\] \(row 1\)$"):
        _reciprocal(np.array([2.0, -1.0]))
    with pytest.raises(ValueError, match=r"got -3 \(row 0\)"):
        _reciprocal(-3)
    require(np.ones((2, 2), bool), "never")  # all true: no error
    with pytest.raises(ValueError, match="n=2 at 1"):
        require(False, "n={:g} at {}", np.float32(2.0), 1)  # format specs work on the values


def test_require_under_checked_jit_and_plain_jit():
    good, bad = jnp.array([2.0, 4.0]), jnp.array([2.0, -1.0])
    np.testing.assert_allclose(np.asarray(lj.checked(jax.jit(_reciprocal))(good)), [0.5, 0.25])
    with pytest.raises(ValueError, match=r"t must be > 0, got \[ 2. -1.\] \(row 1\)"):
        lj.checked(jax.jit(_reciprocal))(bad)
    np.testing.assert_allclose(np.asarray(jax.jit(_reciprocal)(bad)), [0.5, -1.0])  # dropped: no error
    with pytest.raises(ValueError, match="t must be > 0"):
        lj.checked(jax.vmap(_reciprocal))(bad)


def test_require_labels_names_the_first_bad_weighted_row():
    labels = np.array([0, 5, 1, 7], np.int32)
    with pytest.raises(ValueError, match=r"^f: labels must lie in \[0, 3\), got 5 at row 1; fix it\.$"):
        require_labels(labels, 3, "f", "fix it")
    with pytest.raises(ValueError, match="got 7 at row 3"):
        require_labels(labels, 3, "f", "fix it", mask=np.array([1, 0, 1, 1]))
    require_labels(labels, 3, "f", "fix it", mask=np.array([1, 0, 1, 0]))  # bad rows weigh 0
    require_labels(np.zeros((0,), np.int32), 3, "f", "fix it")  # nothing to check
    check = lj.checked(jax.jit(lambda y, m: require_labels(y, 3, "f", "fix it", mask=m)))
    check(labels, np.array([1, 0, 1, 0]))
    with pytest.raises(ValueError, match="got 7 at row 3"):
        check(labels, np.array([1, 0, 1, 1]))

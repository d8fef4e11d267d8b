"""Content-addressed artifacts: the key, and provide() computing once, linking, keeping old files."""
import hashlib
import json
import os

import numpy as np
import pytest

from lelp_jax.runtime.store import Store, artifact_key


def test_artifact_key_depends_on_exactly_the_parts():
    a = {"teacher": "mlp@/t", "data": {"name": "d", "max": None}, "fit": {"S": 4}}
    assert artifact_key(a) == artifact_key(json.loads(json.dumps(a, sort_keys=True)))  # order-free
    assert artifact_key(a) != artifact_key({**a, "fit": {"S": 5}})
    assert len(artifact_key(a)) == 16 and int(artifact_key(a), 16) >= 0


def test_provide_computes_once_links_and_keeps_existing_files(tmp_path, rng):
    store = Store(tmp_path / "teacher" / "derived")
    calls = []
    x = rng.normal(size=(3, 4))

    def produce(path):
        calls.append(path)
        np.savez(path, x=x)

    parts = {"teacher": "t", "fit": {"S": 2}}
    a, b = tmp_path / "a" / "statistics.npz", tmp_path / "b" / "statistics.npz"
    assert store.provide(a, "statistics", parts, produce) == "new"
    assert store.provide(b, "statistics", parts, produce) == "shared"
    assert len(calls) == 1 and calls[0].parent == store.root  # computed once, into the store
    assert os.path.samefile(a, b) and os.path.samefile(a, calls[0])  # links, not copies
    np.testing.assert_array_equal(np.load(b)["x"], x)
    assert json.loads(calls[0].with_suffix(".json").read_text()) == {
        "kind": "statistics", **parts, "sha256": hashlib.sha256(calls[0].read_bytes()).hexdigest()}
    c = tmp_path / "c" / "statistics.npz"
    assert store.provide(c, "statistics", {**parts, "fit": {"S": 3}}, produce) == "new"
    assert len(calls) == 2 and not os.path.samefile(a, c)
    # an old workdir's own file is used as it is
    old = tmp_path / "old" / "statistics.npz"
    old.parent.mkdir()
    np.savez(old, x=x + 1)
    assert store.provide(old, "statistics", parts, produce) == "local" and len(calls) == 2
    assert not os.path.samefile(old, a)
    # no store: written in place
    d = tmp_path / "d.npz"
    assert Store(None).provide(d, "statistics", parts, produce) == "new" and calls[-1] == d


def test_artifact_parts_ignore_how_data_is_read(tmp_path):
    """data.in_memory changes how examples are read, not which: the stored artifacts are shared."""
    from lelp_jax.config import load_config
    from lelp_jax.pipeline.workdir import artifact_parts

    a = load_config("configs/digits_binary.py")
    b = load_config("configs/digits_binary.py")
    b.data.in_memory = not a.data.in_memory
    for kind in ("teacher_outputs", "statistics"):
        assert artifact_key(artifact_parts(a, tmp_path, kind)) == artifact_key(artifact_parts(b, tmp_path, kind))
    b.data.max_length = a.data.max_length + 1  # a key that does change the examples changes the key
    assert artifact_key(artifact_parts(a, tmp_path, "teacher_outputs")) != artifact_key(
        artifact_parts(b, tmp_path, "teacher_outputs"))


def test_a_corrupt_stored_artifact_is_quarantined_and_recomputed(tmp_path, rng):
    """Truncating a workdir's projections.npz truncates the stored file it links to; before, the next run
    re-linked it from the store and failed with BadZipFile until TEACHER/derived was cleaned by hand."""
    wd = tmp_path / "wd"
    wd.mkdir()
    (wd / "config.json").write_text("{}")
    store = Store(wd / "teacher" / "derived")
    x = rng.normal(size=(5, 3))
    calls = []

    def produce(path):
        calls.append(path)
        np.savez(path, x=x)

    local = wd / "projections.npz"
    assert store.provide(local, "projections", {"S": 2}, produce) == "new"
    good = local.read_bytes()
    with open(local, "r+b") as f:
        f.truncate(len(good) // 2)
    local.unlink()
    with pytest.warns(RuntimeWarning, match="differs from the SHA-256 recorded when it was written"):
        assert store.provide(local, "projections", {"S": 2}, produce) == "new"
    assert len(calls) == 2 and local.read_bytes() == good and os.path.samefile(local, calls[1])
    kept = wd / "quarantine" / "teacher" / "derived" / calls[0].name
    assert kept.stat().st_size == len(good) // 2  # kept for inspection, never deleted

    # flipped bits with the link in place: both the stored file and the link are quarantined
    with open(local, "r+b") as f:
        f.seek(len(good) // 2)
        f.write(b"\xff" * 8)
    with pytest.warns(RuntimeWarning, match="is a link to that corrupt artifact"):
        assert store.provide(local, "projections", {"S": 2}, produce) == "new"
    assert local.read_bytes() == good and (wd / "quarantine" / "projections.npz").exists()

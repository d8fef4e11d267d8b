"""Mesh, batch sharding, replication and distributed start-up (8 emulated CPU devices)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lelp_jax.runtime import sharding


def test_make_mesh_all_and_subset():
    mesh = sharding.make_mesh()
    assert mesh.axis_names == ("data",)
    assert mesh.devices.size == jax.device_count() == 8
    assert sharding.make_mesh(2).devices.size == 2
    assert sharding.make_mesh({"num_devices": None}).devices.size == 8
    with pytest.raises(ValueError, match="num_devices=9"):
        sharding.make_mesh(9)


def test_shard_batch_splits_rows_and_round_trips(rng):
    mesh = sharding.make_mesh()
    batch = {"features": rng.normal(size=(16, 3)).astype(np.float32), "label": rng.integers(0, 2, 16)}
    g = sharding.shard_batch(batch, mesh)
    assert g["features"].shape == (16, 3)
    assert g["features"].sharding == sharding.batch_sharding(mesh)
    assert {s.data.shape for s in g["features"].addressable_shards} == {(2, 3)}
    np.testing.assert_array_equal(np.asarray(g["features"]), batch["features"])
    np.testing.assert_array_equal(np.asarray(g["label"]), batch["label"])
    # a jitted sum over the sharded axis equals the host sum (XLA all-reduces across devices)
    np.testing.assert_allclose(float(jax.jit(jnp.sum)(g["features"])), batch["features"].astype(np.float64).sum(),
                               rtol=1e-5)


def test_shard_batch_rejects_indivisible_rows():
    mesh = sharding.make_mesh()
    with pytest.raises(ValueError, match="not divisible by its 8 devices"):
        sharding.shard_batch({"x": np.zeros((12, 2))}, mesh)
    with pytest.raises(ValueError, match="scalar"):
        sharding.shard_batch({"x": np.float32(1.0)}, mesh)


def test_replicate_and_to_host(rng):
    mesh = sharding.make_mesh()
    tree = {"w": rng.normal(size=(3, 4)).astype(np.float32), "step": jnp.int32(5), "key": jax.random.PRNGKey(1)}
    rep = sharding.replicate(tree, mesh)
    for leaf in jax.tree_util.tree_leaves(rep):
        assert leaf.sharding == sharding.replicated_sharding(mesh)
        assert len(leaf.addressable_shards) == 8
    host = sharding.to_host(rep)
    np.testing.assert_array_equal(host["w"], tree["w"])
    assert int(host["step"]) == 5
    np.testing.assert_array_equal(host["key"], np.asarray(tree["key"]))


def test_initialize_distributed_single_process_is_noop(monkeypatch):
    for var in ("TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS", "SLURM_JOB_ID", "SLURM_NTASKS"):
        monkeypatch.delenv(var, raising=False)
    assert sharding.initialize_distributed(None) is False
    assert sharding.initialize_distributed({"coordinator_address": None, "auto": True}) is False
    assert jax.process_count() == 1


def test_initialize_distributed_rejects_partial_config():
    with pytest.raises(ValueError, match="num_processes/process_id"):
        sharding.initialize_distributed({"coordinator_address": "127.0.0.1:1234", "num_processes": 2})
    with pytest.raises(ValueError, match=r"process_id=3 must lie in \[0, num_processes=2\)"):
        sharding.initialize_distributed({"coordinator_address": "127.0.0.1:1234", "num_processes": 2,
                                         "process_id": 3})


def test_initialize_distributed_explicit_and_auto_detected(monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    for var in ("TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS", "SLURM_JOB_ID", "SLURM_NTASKS"):
        monkeypatch.delenv(var, raising=False)
    assert sharding.initialize_distributed({"coordinator_address": "10.0.0.1:999", "num_processes": 4,
                                            "process_id": 1, "initialization_timeout": 30})
    assert calls[-1] == {"coordinator_address": "10.0.0.1:999", "num_processes": 4, "process_id": 1,
                         "initialization_timeout": 30}
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert not sharding.initialize_distributed(None)  # one SLURM task: nothing to join
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert sharding.initialize_distributed(None) and calls[-1] == {}
    assert not sharding.initialize_distributed({"auto": False})
    monkeypatch.delenv("SLURM_JOB_ID")
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "t1,t2")
    assert sharding.initialize_distributed(None) and len(calls) == 3

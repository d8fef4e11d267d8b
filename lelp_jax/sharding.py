"""Mesh, batch sharding and multi-host start-up.

Every sharded computation in lelp_jax uses one 1-D mesh with axis ``'data'``
over every device of every host: batches are split along their leading
(example) axis, parameters and optimizer state are replicated. Sharding is
declared (``Mesh`` + ``NamedSharding`` + ``jax.jit``); XLA inserts the
cross-device reductions. No pmap, no pjit.

Multi-host: each process passes only its own rows to ``shard_batch``; the global
batch is their concatenation in process order.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Union

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

__all__ = [
    "DATA_AXIS",
    "initialize_distributed",
    "make_mesh",
    "batch_sharding",
    "replicated_sharding",
    "shard_batch",
    "replicate",
    "to_host",
]

DATA_AXIS = "data"

_CLUSTER_ENV = (
    # Cloud TPU pods (multi-host slices) expose their worker list.
    "TPU_WORKER_HOSTNAMES",
    "MEGASCALE_COORDINATOR_ADDRESS",
)


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    if cfg is None:
        return default
    if isinstance(cfg, Mapping):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def _cluster_detected() -> bool:
    """True when the environment describes a multi-process job JAX can auto-configure."""
    if any(os.environ.get(k) for k in _CLUSTER_ENV):
        hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
        return "," in hosts or bool(os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"))
    if os.environ.get("SLURM_JOB_ID") and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return True
    return False


def initialize_distributed(cfg: Any = None) -> bool:
    """Start JAX's multi-process runtime; call before any other JAX call.

    ``cfg`` (a ConfigDict/Mapping or None) may hold ``coordinator_address``
    ("host:port"), ``num_processes``, ``process_id``, ``initialization_timeout``
    (s) and ``auto`` (default True). With an explicit coordinator address the
    three values are passed to ``jax.distributed.initialize``; without one,
    on a TPU pod or a SLURM job of several tasks ``initialize()`` is called with
    no arguments (JAX reads the cluster from the environment); otherwise nothing
    happens (one process). Returns True when the runtime was started here.
    """
    if jax.distributed.is_initialized():
        return False
    address = _get(cfg, "coordinator_address")
    timeout = _get(cfg, "initialization_timeout", None)
    kwargs: dict[str, Any] = {}
    if timeout is not None:
        kwargs["initialization_timeout"] = int(timeout)
    if address:
        num = _get(cfg, "num_processes")
        pid = _get(cfg, "process_id")
        if num is None or pid is None:
            raise ValueError(
                "initialize_distributed: coordinator_address is set but num_processes/process_id are "
                f"not (got {num!r}, {pid!r}); set all three, or none to auto-detect a TPU pod/SLURM job."
            )
        if not 0 <= int(pid) < int(num):
            raise ValueError(
                f"initialize_distributed: process_id={pid} must lie in [0, num_processes={num})."
            )
        jax.distributed.initialize(
            coordinator_address=str(address), num_processes=int(num), process_id=int(pid), **kwargs
        )
        return True
    if _get(cfg, "auto", True) and _cluster_detected():
        jax.distributed.initialize(**kwargs)
        return True
    return False


def make_mesh(num_devices: Union[int, Mapping, Any, None] = None) -> Mesh:
    """A 1-D ``('data',)`` mesh over all devices (or the first ``num_devices``).

    ``num_devices`` may also be a config section with a ``num_devices`` entry
    (None or 0 = all). A subset is only allowed in a single-process job: in a
    multi-host job every process must own part of the mesh.
    """
    if num_devices is not None and not isinstance(num_devices, int):
        num_devices = _get(num_devices, "num_devices", None)
    devices = jax.devices()
    if num_devices:
        if not 1 <= num_devices <= len(devices):
            raise ValueError(
                f"make_mesh: num_devices={num_devices} but {len(devices)} devices are visible; "
                "pass a value in [1, jax.device_count()] or None for all."
            )
        if num_devices != len(devices) and jax.process_count() > 1:
            raise ValueError(
                "make_mesh: a device subset is not allowed with several processes; use all "
                f"{len(devices)} devices (num_devices=None)."
            )
        devices = devices[:num_devices]
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (example) axis split over ``'data'``, other axes whole."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, P())


def _local_device_count(mesh: Mesh) -> int:
    return sum(d.process_index == jax.process_index() for d in mesh.devices.flat)


def shard_batch(host_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Global batch from this process's rows (``jax.make_array_from_process_local_data``).

    Each process passes its ``B_local`` rows; the result has ``B_local *
    process_count`` rows split over ``'data'``. ``B_local`` must be divisible by
    the number of this process's devices in the mesh.
    """
    sharding = batch_sharding(mesh)
    n_local = _local_device_count(mesh)
    n_proc = len({d.process_index for d in mesh.devices.flat})
    out = {}
    for key, value in host_batch.items():
        value = np.asarray(value)
        if value.ndim == 0:
            raise ValueError(f"shard_batch: batch[{key!r}] is a scalar; every entry needs a leading example axis.")
        if value.shape[0] % n_local:
            raise ValueError(
                f"shard_batch: batch[{key!r}] has {value.shape[0]} rows on this process, not divisible by its "
                f"{n_local} devices; make the per-process batch size a multiple of {n_local}."
            )
        global_shape = (value.shape[0] * n_proc,) + value.shape[1:]
        out[key] = jax.make_array_from_process_local_data(sharding, value, global_shape)
    return out


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Place every leaf whole on every device of the mesh (params, optimizer state, RNG).

    Works in multi-host jobs: each process builds its addressable shards from its
    own (identical) copy of the value.
    """
    sharding = replicated_sharding(mesh)

    def put(x):
        if isinstance(x, jax.Array) and x.sharding == sharding:
            return x
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            x = x.addressable_data(0)  # already replicated elsewhere: any local shard is whole
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

    return jax.tree_util.tree_map(put, tree)


def to_host(tree: Any) -> Any:
    """NumPy copy of a tree of replicated (or fully addressable) arrays.

    ``np.asarray`` of an array spanning other processes' devices fails; a
    replicated array's local shard is the whole value.
    """

    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            if not x.sharding.is_fully_replicated:
                raise ValueError(
                    "to_host: array is sharded across processes; replicate it (or reduce it) first."
                )
            return np.asarray(x.addressable_data(0))
        return np.asarray(x)

    return jax.tree_util.tree_map(get, tree)

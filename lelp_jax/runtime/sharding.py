"""Mesh, batch and parameter sharding, multi-host start-up.

Every sharded computation in lelp_jax uses one mesh over every device of every
host. By default it is 1-D, axis ``'data'``: batches are split along their
leading (example) axis, parameters and optimizer state are replicated. With
``model > 1`` it is 2-D, ``('data', 'model')``: batches are still split along
``'data'`` only, and a teacher too large for one device keeps each large kernel
split along ``'model'`` (FSDP-style, by the rule of :func:`param_spec`).
Sharding is declared (``Mesh`` + ``NamedSharding`` + ``jax.jit``); XLA inserts
the cross-device collectives. No pmap, no pjit.

Multi-host: each process passes only its own rows to ``shard_batch``; the global
batch is their concatenation in process order.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Optional, Union

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

__all__ = [
    "DATA_AXIS",
    "MODEL_AXIS",
    "MIN_SHARD_SIZE",
    "initialize_distributed",
    "enable_compilation_cache",
    "make_mesh",
    "model_axis_size",
    "batch_sharding",
    "replicated_sharding",
    "param_spec",
    "param_shardings",
    "shard_params",
    "shard_batch",
    "replicate",
    "to_host",
]

DATA_AXIS = "data"
MODEL_AXIS = "model"
# Leaves with fewer elements stay replicated: biases, LayerNorm scales and small heads
# cost little memory, and splitting them would add a collective each for nothing.
MIN_SHARD_SIZE = 2**14

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


def enable_compilation_cache() -> str | None:
    """Turn on JAX's persistent compilation cache; returns its folder (None: off).

    Folder: ``$LELP_JAX_CACHE_DIR`` (``off`` or empty disables it), default
    ``~/.cache/lelp_jax/jax``; a cache configured through JAX's own
    ``JAX_COMPILATION_CACHE_DIR`` is left alone. Every program is cached (no
    minimum compile time): a rerun or a resumed run skips compilation, which on a
    CPU is most of a small experiment's time (the digits smoke run: 46 s -> 12 s).
    """
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return os.environ["JAX_COMPILATION_CACHE_DIR"]
    folder = os.environ.get("LELP_JAX_CACHE_DIR", os.path.join("~", ".cache", "lelp_jax", "jax"))
    if not folder or folder.lower() == "off":
        return None
    folder = os.path.expanduser(folder)
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return folder


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


def make_mesh(num_devices: Union[int, Mapping, Any, None] = None, *, model: Optional[int] = None) -> Mesh:
    """A mesh over all devices (or the first ``num_devices``): 1-D ``('data',)``, or 2-D with ``model > 1``.

    ``num_devices`` may also be a config section (``config.mesh``) with
    ``num_devices`` (None or 0 = all) and ``model`` entries. With ``model = m > 1``
    the n devices form an ``(n / m, m)`` grid with axes ``('data', 'model')``; each
    row (one ``'model'`` group) is m consecutive devices, so in a multi-host job a
    group stays within one host (m must divide each host's device count). A
    subset is only allowed in a single-process job: in a multi-host job every
    process must own part of the mesh.
    """
    if num_devices is not None and not isinstance(num_devices, int):
        section = num_devices
        num_devices = _get(section, "num_devices", None)
        model = _get(section, "model", None) if model is None else model
    model = 1 if model is None else int(model)
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
    if model < 1 or len(devices) % model:
        raise ValueError(
            f"make_mesh: mesh.model={model} must be a positive divisor of the {len(devices)} devices in the mesh; "
            "use 1 (parameters replicated) or a divisor such as 2 or 4."
        )
    if model == 1:
        return Mesh(np.asarray(devices), (DATA_AXIS,))
    if jax.process_count() > 1 and jax.local_device_count() % model:
        raise ValueError(
            f"make_mesh: mesh.model={model} does not divide this host's {jax.local_device_count()} devices; a "
            "'model' group must stay within one host (choose a divisor of the devices per host)."
        )
    return Mesh(np.asarray(devices).reshape(len(devices) // model, model), (DATA_AXIS, MODEL_AXIS))


def model_axis_size(mesh: Mesh) -> int:
    """Size of the mesh's ``'model'`` axis (1 on a 1-D mesh)."""
    return int(dict(mesh.shape).get(MODEL_AXIS, 1))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (example) axis split over ``'data'``, other axes whole."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, P())


def param_spec(shape: tuple[int, ...], model_size: int, *, min_size: int = MIN_SHARD_SIZE) -> P:
    """Where one parameter lives on a mesh whose ``'model'`` axis has ``model_size`` devices.

    Rule (FSDP-style, the same for every model): a leaf of at least ``min_size``
    elements is split along its largest dimension that ``model_size`` divides (the
    first such on ties), so each device holds 1 / model_size of it; a smaller leaf,
    or one with no divisible dimension, is replicated. ``model_size`` 1 replicates all.
    """
    if model_size <= 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    dims = [i for i, n in enumerate(shape) if n % model_size == 0]
    if not dims:
        return P()
    axis = max(dims, key=lambda i: (shape[i], -i))
    return P(*([None] * axis + [MODEL_AXIS]))


def param_shardings(tree: Any, mesh: Mesh, *, min_size: int = MIN_SHARD_SIZE) -> Any:
    """A ``NamedSharding`` per leaf of ``tree`` (arrays or ``jax.ShapeDtypeStruct``) by :func:`param_spec`.

    On a 1-D mesh every leaf is replicated (the same as :func:`replicated_sharding`).
    """
    m = model_axis_size(mesh)
    return jax.tree_util.tree_map(lambda x: NamedSharding(mesh, param_spec(tuple(np.shape(x)), m, min_size=min_size)),
                                  tree)


def _local_device_count(mesh: Mesh) -> int:
    return sum(d.process_index == jax.process_index() for d in mesh.devices.flat)


def _local_data_shards(mesh: Mesh) -> int:
    """How many distinct ``'data'`` slices of a batch this process's devices hold."""
    grid = mesh.devices.reshape(mesh.devices.shape[0], -1)
    return sum(any(d.process_index == jax.process_index() for d in row) for row in grid)


def shard_batch(host_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Global batch from this process's rows (``jax.make_array_from_process_local_data``).

    Each process passes its ``B_local`` rows; the result has ``B_local *
    process_count`` rows split over ``'data'`` (and whole along ``'model'``).
    ``B_local`` must be divisible by the number of this process's ``'data'``
    slices (its devices in the mesh, divided by the ``'model'`` axis size).
    """
    sharding = batch_sharding(mesh)
    n_local = _local_data_shards(mesh)
    n_proc = len({d.process_index for d in mesh.devices.flat})
    out = {}
    for key, value in host_batch.items():
        value = np.asarray(value)
        if value.ndim == 0:
            raise ValueError(f"shard_batch: batch[{key!r}] is a scalar; every entry needs a leading example axis.")
        if value.shape[0] % n_local:
            raise ValueError(
                f"shard_batch: batch[{key!r}] has {value.shape[0]} rows on this process, not divisible by its "
                f"{n_local} devices{'' if model_axis_size(mesh) == 1 else ' (data slices)'}; make the per-process "
                f"batch size a multiple of {n_local}."
            )
        global_shape = (value.shape[0] * n_proc,) + value.shape[1:]
        out[key] = jax.make_array_from_process_local_data(sharding, value, global_shape)
    return out


def _put(x: Any, sharding: NamedSharding) -> jax.Array:
    """``x`` laid out as ``sharding``; works in multi-host jobs (each process builds its own shards).

    Through a host copy: ``jax.device_put`` may alias the source buffer on its own device
    (seen on CPU even with ``may_alias=False``), and train steps donate their state.
    A teacher restored in place (``train.load_variables(shard_params=True)``) is returned as is.
    """
    if isinstance(x, jax.Array) and x.sharding == sharding:
        return x
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        if x.sharding.is_fully_replicated:
            x = x.addressable_data(0)  # any local shard is the whole value
        else:
            return jax.device_put(x, sharding)  # every process calls this: a collective reshard
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Place every leaf whole on every device of the mesh (params, optimizer state, RNG).

    Works in multi-host jobs: each process builds its addressable shards from its
    own (identical) copy of the value.
    """
    sharding = replicated_sharding(mesh)
    return jax.tree_util.tree_map(lambda x: _put(x, sharding), tree)


def shard_params(tree: Any, mesh: Mesh, *, min_size: int = MIN_SHARD_SIZE) -> Any:
    """Place a (teacher's) variables by :func:`param_shardings`: large kernels split along ``'model'``.

    On a 1-D mesh this is :func:`replicate`. A device then holds 1 / model of each
    large kernel; ``jax.jit`` functions declared with the same shardings run on
    them without gathering them first (XLA's partitioner inserts the collectives).
    """
    return jax.tree_util.tree_map(_put, tree, param_shardings(tree, mesh, min_size=min_size))


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

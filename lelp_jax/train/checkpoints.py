"""Orbax checkpoints of a training run: save, restore the newest readable one, load variables.

Layout (unchanged since the first release, so old workdirs resume):
``WORKDIR/checkpoints/STEP/{state, meta}``: 'state' = ``{'state': TrainState, 'best':
best-val variables}`` as flax state dicts (StandardSave), 'meta' = the data-iterator
state, the history and the best-val bookkeeping (JsonSave).
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp
from flax import serialization
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from lelp_jax.runtime import integrity
from lelp_jax.runtime import sharding as shd
from lelp_jax.train.step import TrainState, model_variables

__all__ = ["Checkpoints", "checkpoint_tree", "load_variables", "newest_step_intact"]


def _item_handlers() -> dict[str, Any]:
    return {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}


class Checkpoints:
    """Orbax CheckpointManager holding {'state': arrays, 'meta': JSON} per step.

    Orbax writes each step to a temporary directory and renames it when complete,
    so a killed save leaves no visible step. Each saved step gets a manifest of its files'
    SHA-256 (:func:`lelp_jax.runtime.integrity.write_manifest`, process 0). ``restore_latest``
    walks steps newest first; a step whose files differ from its manifest, or that Orbax cannot
    read, is moved to ``WORKDIR/quarantine/`` with a warning (never deleted) and the previous
    step is tried.
    """

    def __init__(self, directory: str, *, max_to_keep: int = 2):
        self.manager = ocp.CheckpointManager(
            os.path.abspath(directory),
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                                 enable_async_checkpointing=False,
                                                 cleanup_tmp_directories=True),  # leftovers of a killed save
            item_handlers=_item_handlers(),
        )

    def step_dir(self, step: int) -> str:
        return os.path.join(str(self.manager.directory), str(step))

    def save(self, step: int, tree: Any, meta: Mapping[str, Any]) -> None:
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(tree),
                                                        meta=ocp.args.JsonSave(dict(meta))), force=True)
        self.manager.wait_until_finished()
        if jax.process_index() == 0 and os.path.isdir(self.step_dir(step)):
            integrity.write_manifest(self.step_dir(step))

    def _quarantine(self, step: int, why: str) -> None:
        """Move ``step`` to quarantine (process 0, once every process has looked at it) and forget it."""
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"lelp_quarantine_{step}")
        if jax.process_index() == 0:
            integrity.quarantine(self.step_dir(step), f"(checkpoint step {step}) {why}",
                                 then="falling back to the previous step", root=os.path.dirname(self.manager.directory))
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"lelp_quarantined_{step}")
        self.manager.reload()

    def restore_latest(self, target: Any) -> Optional[tuple[int, Any, dict]]:
        """``(step, tree like target, meta)`` of the newest intact, readable step, or None when there is none
        (the others are quarantined, never deleted)."""
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
        for step in sorted(self.manager.all_steps(), reverse=True):
            bad = integrity.verify_manifest(self.step_dir(step))
            if bad:
                self._quarantine(step, f"differs from its manifest ({', '.join(bad[:3])})")
                continue
            try:
                out = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
                return step, out["state"], dict(out["meta"])
            except Exception as e:  # noqa: BLE001 - any unreadable checkpoint: fall back
                self._quarantine(step, f"is unreadable ({type(e).__name__}: {str(e).splitlines()[0][:200]})")
        return None

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def newest_step_intact(workdir: str) -> bool:
    """Whether the newest checkpoint step of a ``train_and_evaluate`` workdir matches its manifest (True when
    it has none, or no steps); a mismatching one is quarantined, so a resumed run falls back to the previous."""
    directory = os.path.join(workdir, "checkpoints")
    steps = sorted(int(p) for p in os.listdir(directory) if p.isdigit()) if os.path.isdir(directory) else []
    if not steps or not integrity.verify_manifest(os.path.join(directory, str(steps[-1]))):
        return True
    integrity.quarantine(os.path.join(directory, str(steps[-1])), f"(checkpoint step {steps[-1]}) differs from "
                         "its manifest", then="the run resumes from the previous step", root=workdir)
    return False


def checkpoint_tree(state: TrainState, best: Mapping[str, Any]) -> dict:
    """Plain-dict pytree for Orbax (flax state dict; empty collections dropped by flax are kept explicit)."""
    return {"state": serialization.to_state_dict(state), "best": serialization.to_state_dict(dict(best))}


def load_variables(workdir: str, *, which: str = "last", mesh: Optional[Mesh] = None,
                   step: Optional[int] = None, shard_params: bool = False) -> dict[str, Any]:
    """Model variables ``{'params', ['batch_stats']}`` from a ``train_and_evaluate`` workdir.

    ``which='last'`` gives the final state's variables, ``'best'`` the best-val ones.
    Arrays are restored replicated over ``mesh`` (default: all devices), bit-exact;
    with ``shard_params`` each is restored directly in its
    :func:`lelp_jax.runtime.sharding.param_shardings` layout (a teacher on a mesh with a
    ``'model'`` axis: no device ever holds a whole large kernel).
    """
    if which not in ("last", "best"):
        raise ValueError(f"load_variables: which={which!r}; choose 'last' or 'best'.")
    directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    if not os.path.isdir(directory):
        raise ValueError(f"load_variables: no checkpoint directory {directory}; train first (train_and_evaluate).")
    manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False),
                                    item_handlers=_item_handlers())
    steps = manager.all_steps()
    if not steps:
        raise ValueError(f"load_variables: no checkpoint under {directory}; train first (train_and_evaluate).")
    step = max(steps) if step is None else step
    mesh = mesh or shd.make_mesh()
    rep = shd.replicated_sharding(mesh)
    meta_tree = manager.item_metadata(step)["state"]
    meta_tree = getattr(meta_tree, "tree", meta_tree)
    place = (shd.param_shardings(meta_tree, mesh) if shard_params
             else jax.tree_util.tree_map(lambda _: rep, meta_tree))
    abstract = jax.tree_util.tree_map(lambda m, sh: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sh),
                                      meta_tree, place)
    out = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]
    manager.close()
    src = out["state"] if which == "last" else out["best"]
    return model_variables(src["params"], src.get("batch_stats") or {})

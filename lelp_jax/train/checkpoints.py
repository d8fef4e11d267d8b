"""Orbax checkpoints of a training run: save, restore the newest readable one, load variables.

Layout (unchanged since the first release, so old workdirs resume):
``WORKDIR/checkpoints/STEP/{state, meta}``: 'state' = ``{'state': TrainState, 'best':
best-val variables}`` as flax state dicts (StandardSave), 'meta' = the data-iterator
state, the history and the best-val bookkeeping (JsonSave).
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp
from flax import serialization
from jax.sharding import Mesh

from lelp_jax.runtime import sharding as shd
from lelp_jax.train.step import TrainState, model_variables

__all__ = ["Checkpoints", "checkpoint_tree", "load_variables"]


def _item_handlers() -> dict[str, Any]:
    return {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}


class Checkpoints:
    """Orbax CheckpointManager holding {'state': arrays, 'meta': JSON} per step.

    Orbax writes each step to a temporary directory and renames it when complete,
    so a killed save leaves no visible step. ``restore_latest`` walks steps newest
    first and skips (and deletes) unreadable ones with a warning.
    """

    def __init__(self, directory: str, *, max_to_keep: int = 2):
        self.manager = ocp.CheckpointManager(
            os.path.abspath(directory),
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                                 enable_async_checkpointing=False,
                                                 cleanup_tmp_directories=True),  # leftovers of a killed save
            item_handlers=_item_handlers(),
        )

    def save(self, step: int, tree: Any, meta: Mapping[str, Any]) -> None:
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(tree),
                                                        meta=ocp.args.JsonSave(dict(meta))), force=True)

    def restore_latest(self, target: Any) -> Optional[tuple[int, Any, dict]]:
        """``(step, tree like target, meta)`` of the newest readable step, or None when there is none."""
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                out = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
                return step, out["state"], dict(out["meta"])
            except Exception as e:  # noqa: BLE001 - any unreadable checkpoint: fall back
                warnings.warn(f"checkpoint at step {step} in {self.manager.directory} is unreadable "
                              f"({type(e).__name__}: {e}); deleting it and falling back to the previous one.",
                              RuntimeWarning, stacklevel=2)
                self.manager.delete(step)
        return None

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


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

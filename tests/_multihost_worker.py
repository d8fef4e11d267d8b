"""Helpers for the training-engine tests: tiny models, synthetic data, worker entry points.

Run as a script it is one process of a test job (multi-host or kill/resume):

    python tests/_multihost_worker.py MODE OUT_DIR [PROCESS_ID NUM_PROCESSES PORT]

MODE 'multihost': jax.distributed.initialize, a few train steps and a moment
accumulation on a global batch built from this process's rows; writes
``OUT_DIR/result_{pid}.npz``.
MODE 'train': one ``train_and_evaluate`` run in OUT_DIR (the kill/resume test).
"""
from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np

NUM_CLASSES = 2
FEATURES = 6


def synthetic_arrays(n: int, seed: int, *, features: int = FEATURES, num_classes: int = NUM_CLASSES) -> dict:
    """Gaussian blobs, one per fine class (2 per coarse class); learnable by a tiny MLP."""
    r = np.random.default_rng(seed)
    fine = r.integers(0, 2 * num_classes, n)
    centres = np.random.default_rng(1234).normal(size=(2 * num_classes, features)) * 2.0
    x = centres[fine] + r.normal(size=(n, features))
    return {
        "features": x.astype(np.float32),
        "label": (fine // 2).astype(np.int32),
        "fine_label": fine.astype(np.int32),
        "index": np.arange(n, dtype=np.int64),
    }


def source(n: int, seed: int):
    """An in-memory ``ArraySource`` (adds ``index``) of ``synthetic_arrays(n, seed)``."""
    from lelp_jax.data.sources import ArraySource

    arrays = synthetic_arrays(n, seed)
    arrays.pop("index")
    return ArraySource(arrays)


def mlp(num_outputs: int = NUM_CLASSES, hidden: int = 8, dropout: float = 0.0, batch_norm: bool = False):
    import flax.linen as nn

    class TinyMLP(nn.Module):
        """features -> Dense(hidden) -> relu [-> BN] [-> dropout] = embedding -> Dense 'head'."""

        @nn.compact
        def __call__(self, batch, train: bool = False):
            h = nn.relu(nn.Dense(hidden)(batch["features"]))
            if batch_norm:
                h = nn.BatchNorm(use_running_average=not train)(h)
            if dropout:
                h = nn.Dropout(dropout, deterministic=not train)(h)
            return h, nn.Dense(num_outputs, name="head")(h)

    return TinyMLP()


def small_config(**train: Any):
    """``base_config()`` (complete: every method reads its options from it) with a short training run."""
    from lelp_jax.config import base_config

    c = base_config()
    c.train.update(dict(batch_size=16, num_steps=30, learning_rate=1e-2, optimizer="adam", eval_every=10,
                        checkpoint_every=10, log_every=5, schedule="cosine", warmup_steps=2))
    c.train.update(train)
    c.kd.update(dict(tau=2.0, alpha=0.0))
    c.lelp.update(dict(num_subclasses=2, beta=1.0, tau=1.0, null_space=True, rotate=True, standardize=False,
                       fit_labels="labels", alpha=0.0, seed=0))
    return c


def run_train(workdir: str, num_steps: int = 30, checkpoint_every: int = 10, progress: bool = False) -> dict:
    """The kill/resume job: ce on synthetic blobs, 1 device."""
    from lelp_jax import methods, train
    from lelp_jax.runtime import sharding

    cfg = small_config(num_steps=num_steps, checkpoint_every=checkpoint_every, eval_every=checkpoint_every)
    return train.train_and_evaluate(
        model=mlp(), method=methods.get_method("ce"), cfg=cfg,
        train_source=source(256, 0), val_source=source(64, 1),
        test_source=source(64, 2), mesh=sharding.make_mesh(), workdir=workdir, seed=0,
        num_classes=NUM_CLASSES, progress=progress)


def run_multihost(out_dir: str, pid: int, nproc: int, port: int) -> None:
    """One process of the multi-host job: the step/moments job, then a short train_and_evaluate run."""
    from lelp_jax.runtime import sharding

    sharding.initialize_distributed({"coordinator_address": f"127.0.0.1:{port}", "num_processes": nproc,
                                     "process_id": pid, "initialization_timeout": 30})
    import jax

    out = multihost_job(pid, nproc)
    record = run_train(os.path.join(out_dir, "run"), num_steps=6, checkpoint_every=3)
    out["test_accuracy_last"] = np.asarray(record["test_accuracy_last"])
    out["val_accuracy"] = np.asarray([h["val_accuracy"] for h in record["history"]])
    np.savez(os.path.join(out_dir, f"result_{pid}.npz"), **out)
    jax.distributed.shutdown()


def multihost_job(pid: int, nproc: int) -> dict:
    """A few train steps (kd, online teacher), moment accumulation and a teacher-output cache.

    Each process passes rows [pid*B/n, (pid+1)*B/n) of every global batch, so the
    single-process run (pid=0, nproc=1) sees the same global batches.
    """
    import jax

    from lelp_jax import methods, train
    from lelp_jax.runtime import sharding
    from lelp_jax.pipeline import teacher

    mesh = sharding.make_mesh()
    cfg = small_config()
    data = synthetic_arrays(64, 0)
    t_model, s_model = mlp(hidden=12), mlp()
    t_vars = t_model.init(jax.random.PRNGKey(7), {"features": data["features"][:1]}, train=False)
    method = methods.get_method("kd")
    opt = train.make_optimizer(cfg.train, num_steps=4)
    state = train.init_train_state(model=s_model, method=method, optimizer=opt,
                                   sample_batch={"features": data["features"][:1]}, seed=0, method_cfg=cfg)
    state = sharding.replicate(state, mesh)
    step = train.make_train_step(model=s_model, method=method, optimizer=opt, num_classes=NUM_CLASSES,
                                 method_cfg=cfg, teacher_apply=t_model.apply, mesh=mesh)
    tv = sharding.replicate(t_vars, mesh)
    local = 16 // nproc
    losses = []
    for i in range(4):
        rows = slice(i * 16 + pid * local, i * 16 + (pid + 1) * local)
        batch = {k: data[k][rows] for k in ("features", "label")}
        state, m = step(state, sharding.shard_batch(batch, mesh), tv, None)
        losses.append(sharding.to_host(m["loss"]))
    moments = teacher.accumulate_moments(
        t_model.apply, t_vars, source(64, 0), mesh=mesh, num_classes=NUM_CLASSES, batch_size=16,
        process_index=pid, process_count=nproc)
    moments = sharding.to_host(moments)
    cache = teacher.cache_teacher_outputs(t_model.apply, t_vars, source(40, 0), mesh=mesh, batch_size=16,
                                          process_index=pid, process_count=nproc)  # 40: last batch padded
    out = {"loss": np.asarray(losses), "cache_embeddings": cache.embeddings, "cache_logits": cache.logits}
    out.update({f"param_{i}": x for i, x in enumerate(jax.tree_util.tree_leaves(sharding.to_host(state.params)))})
    out.update({f"moments_{k}": np.asarray(v) for k, v in
                zip(("count", "mean", "m2"), (moments.count, moments.mean, moments.m2))})
    return out


if __name__ == "__main__":
    mode, out = sys.argv[1], sys.argv[2]
    if mode == "multihost":
        run_multihost(out, int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
    elif mode == "train":
        run_train(out, num_steps=int(sys.argv[3]), checkpoint_every=int(sys.argv[4]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")

"""What must hold on an accelerator: run by ``scripts/device_check.sh`` (``pytest -m accelerator``).

Every test runs on JAX's default backend: a GPU or TPU there, the 8 emulated CPU devices in
the CPU suite (and a subset again in the check's dry run, tests/test_device_check.py). Tolerances are written for an
accelerator: XLA's default float32 matmul on a GPU may use TF32 (10-bit mantissa), whose
relative error is about 3e-4 (bfloat16: about 4e-3), so results are compared by
||out - ref|| / ||ref|| against float64 NumPy references, or against the same computation on
one CPU device, with the bound stated at each check.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _multihost_worker import NUM_CLASSES, synthetic_arrays
from jax.sharding import Mesh

from lelp_jax import methods, train
from lelp_jax.runtime import sharding
from lelp_jax.pipeline import teacher
from lelp_jax.config import base_config
from lelp_jax.data.sources import ArraySource
from lelp_jax.models import build_model
from lelp_jax.pipeline import FitInputs, build_fit
from lelp_jax.core.projections import fit_projections, null_space_projector
from lelp_jax.core.statistics import init_moments, update_moments

pytestmark = pytest.mark.accelerator

S = 2  # pseudo-subclasses (lelp.num_subclasses, subclass.num_subclasses)


def _rel(out, ref) -> float:
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


def _mesh() -> Mesh:
    """All devices of the default backend; a ('data', 'model') mesh with model = 2 when the count allows."""
    n = jax.device_count()
    return sharding.make_mesh(model=2) if n >= 2 and n % 2 == 0 else sharding.make_mesh()


def _cpu_mesh() -> Mesh:
    return Mesh(np.asarray(jax.devices("cpu")[:1]), (sharding.DATA_AXIS,))


def _config():
    c = base_config()
    c.teacher.model, c.teacher.model_kwargs = "mlp", {"hidden": (32,)}
    c.lelp.num_subclasses = c.subclass.num_subclasses = S
    c.kd.tau, c.lelp.tau, c.kmeans.num_iters = 2.0, 2.0, 5
    c.train.update(dict(learning_rate=1e-2, schedule="constant"))
    return c


def _np_mlp(params, x):
    """float64 MLP forward: h_{k+1} = relu(h_k W_k + b_k); logits = h_K W_head + b_head."""
    h = np.asarray(x, np.float64)
    for i in range(len(params) - 1):
        p = params[f"dense_{i}"]
        h = np.maximum(h @ np.asarray(p["kernel"], np.float64) + np.asarray(p["bias"], np.float64), 0.0)
    return h, h @ np.asarray(params["head"]["kernel"], np.float64) + np.asarray(params["head"]["bias"], np.float64)


@pytest.mark.parametrize("dtype,bound", [("float32", 2e-3), ("bfloat16", 3e-2)])
def test_sharded_teacher_step_matches_float64(rng, dtype, bound):
    """The cached-output pass (one jitted teacher step, large kernels split along 'model' when the mesh
    has that axis) vs a float64 NumPy forward. Bound: TF32 (float32) or bfloat16 rounding of 3 layers."""
    mesh = _mesh()
    x = rng.normal(size=(96, 64)).astype(np.float32)
    model = build_model("mlp", num_outputs=2, hidden=(256, 256))
    variables = jax.jit(lambda k: model.init(k, {"features": x[:1]}))(jax.random.PRNGKey(int(rng.integers(1 << 30))))
    if sharding.model_axis_size(mesh) > 1:
        kernel = sharding.shard_params(variables, mesh)["params"]["dense_1"]["kernel"]
        assert {s.data.shape for s in kernel.addressable_shards} == {(128, 256)}
    source = ArraySource({"features": x, "label": np.zeros(96, np.int32)})
    cache = teacher.cache_teacher_outputs(model.apply, variables, source, mesh=mesh, batch_size=32,
                                          compute_dtype=dtype)
    emb, logits = _np_mlp(jax.tree_util.tree_map(np.asarray, variables["params"]), x)
    assert _rel(cache.embeddings, emb) < bound
    assert _rel(cache.logits, logits) < bound


def _aux(method, cfg, t_model, t_vars, data):
    """The artifact each method's step reads, built as the pipeline builds it (the fit registered for its
    kind, ``lelp_jax.pipeline.build_fit``) from the teacher's outputs on ``data``; the subclass teacher is
    freshly initialised instead of trained."""
    emb, logits = (np.asarray(a) for a in t_model.apply(t_vars, {"features": data["features"]}))
    labels = data["label"]
    inputs = FitInputs(
        config=cfg, num_classes=NUM_CLASSES, num_fine_classes=2 * NUM_CLASSES, outputs=lambda: (emb, logits),
        labels=lambda: (labels, data["fine_label"]),
        head_weights=lambda: np.asarray(t_vars["params"]["head"]["kernel"]).T,
        moments=lambda: jax.jit(update_moments)(init_moments(NUM_CLASSES, emb.shape[1]), emb, labels),
        trained_teacher=lambda name, model, m: model.init(jax.random.PRNGKey(5), {"features": data["features"][:1]}))
    return build_fit(method, inputs)


@pytest.mark.parametrize("name", methods.method_names())
def test_train_step_of_every_method(rng, name):
    """Three steps of each registered method's one compiled step (online teacher, split along 'model' where
    the mesh has it) on the accelerator == the same steps on one CPU device. Bound on the losses: 1e-2
    relative (TF32 matmuls in forward and backward); every loss finite and the parameters move."""
    cfg = _config()
    method = methods.get_method(name)
    data = synthetic_arrays(96, int(rng.integers(1 << 30)))
    t_model = build_model("mlp", num_outputs=NUM_CLASSES, hidden=(32,))
    t_vars = jax.jit(lambda k: t_model.init(k, {"features": data["features"][:1]}))(jax.random.PRNGKey(3))
    aux = _aux(method, cfg, t_model, t_vars, data)
    student = build_model("mlp", num_outputs=method.student_outputs(NUM_CLASSES, cfg, aux), hidden=(8,))
    opt = train.make_optimizer(cfg.train, num_steps=10)
    state0 = train.init_train_state(model=student, method=method, optimizer=opt,
                                    sample_batch={"features": data["features"][:1]}, seed=1, method_cfg=cfg,
                                    teacher_embedding_dim=32)
    batches = [{k: data[k][i * 32:(i + 1) * 32] for k in ("features", "label", "fine_label")} for i in range(3)]
    runs = {}
    for where, mesh in (("accelerator", _mesh()), ("cpu", _cpu_mesh())):
        tv = sharding.shard_params(t_vars, mesh) if method.needs_teacher else None
        step = train.make_train_step(model=student, method=method, optimizer=opt, num_classes=NUM_CLASSES,
                                     method_cfg=cfg, teacher_apply=t_model.apply if tv is not None else None,
                                     mesh=mesh, teacher_sharding=None if tv is None else
                                     sharding.param_shardings(tv, mesh))
        state = sharding.replicate(state0, mesh)
        a = None if aux is None else sharding.replicate(aux, mesh)
        losses = []
        for b in batches:
            state, metrics = step(state, sharding.shard_batch(b, mesh), tv, a)
            losses.append(float(metrics["loss"]))
        runs[where] = np.asarray(losses), sharding.to_host(state.params)
    (acc_loss, acc_params), (cpu_loss, _) = runs["accelerator"], runs["cpu"]
    assert np.all(np.isfinite(acc_loss))
    np.testing.assert_allclose(acc_loss, cpu_loss, rtol=1e-2)
    moved = [float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in
             zip(jax.tree_util.tree_leaves(acc_params), jax.tree_util.tree_leaves(state0.params))]
    assert max(moved) > 0


def test_bfloat16_training_matches_float32(rng):
    """ce, 100 steps of batch 64 on Gaussian blobs, float32 vs bfloat16 forward (float32 master weights):
    mean train loss of the last 20 steps within 10 % relative, held-out accuracy within 0.05 (20 of 400)."""
    cfg = _config()
    ce = methods.get_method("ce")
    seed = int(rng.integers(1 << 30))
    data, held = synthetic_arrays(64 * 100, seed), synthetic_arrays(400, seed + 1)
    student = build_model("mlp", num_outputs=NUM_CLASSES, hidden=(16,))
    opt = train.make_optimizer(cfg.train, num_steps=100)
    state0 = train.init_train_state(model=student, method=ce, optimizer=opt,
                                    sample_batch={"features": data["features"][:1]}, seed=seed, method_cfg=cfg)
    mesh = _mesh()
    held_batch = sharding.shard_batch({"features": held["features"], "label": held["label"]}, mesh)
    out = {}
    for dtype in ("float32", "bfloat16"):
        step = train.make_train_step(model=student, method=ce, optimizer=opt, num_classes=NUM_CLASSES, method_cfg=cfg,
                                     mesh=mesh, compute_dtype=dtype)
        evaluate = train.make_eval_step(model=student, method=ce, num_classes=NUM_CLASSES, mesh=mesh,
                                        compute_dtype=dtype)
        state, losses = sharding.replicate(state0, mesh), []
        for i in range(100):
            b = {k: data[k][i * 64:(i + 1) * 64] for k in ("features", "label")}
            state, metrics = step(state, sharding.shard_batch(b, mesh), None, None)
            losses.append(metrics["loss"])
        assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(state.params))
        counts = sharding.to_host(evaluate(state.params, state.batch_stats, held_batch))
        out[dtype] = float(np.mean(sharding.to_host(losses)[-20:])), float(counts["correct"] / counts["count"])
    (l32, a32), (l16, a16) = out["float32"], out["bfloat16"]
    assert a32 > 0.75, out  # the blobs are learnable: the comparison is between two trained students
    assert abs(l16 - l32) <= 0.1 * l32, out
    assert abs(a16 - a32) <= 0.05, out


def test_fit_projections_on_device_matches_float64(rng):
    """Moments streamed on the device (float32, batches of 512) and the LELP fit there vs float64 NumPy:
    P = I - W^T (W W^T)^-1 W, Sigma_c = population covariance, top-S eigenpairs of P Sigma_c P.
    Eigenvalues within 1e-3 relative; spans within (2 ||dSigma|| + D eps ||Sigma||) / gap + 1e-4, the
    Davis-Kahan bound for float32 moments and a float32 eigh."""
    n, d, c, s = 4096, 64, 3, 4
    scales = np.stack([np.geomspace(1.0, 0.05, d)[rng.permutation(d)] for _ in range(c)])
    means = 3.0 * rng.normal(size=(c, d))
    y = rng.integers(0, c, n).astype(np.int32)
    h = (means[y] + scales[y] * rng.normal(size=(n, d))).astype(np.float32)
    w = rng.normal(size=(c, d)).astype(np.float32)
    update = jax.jit(update_moments)
    moments = init_moments(c, d)
    for i in range(0, n, 512):
        moments = update(moments, jnp.asarray(h[i:i + 512]), jnp.asarray(y[i:i + 512]))
    proj = fit_projections(moments, classifier_weights=jnp.asarray(w), num_subclasses=s, key=0)
    assert proj.directions.devices() == {jax.devices()[0]}

    w64, h64 = w.astype(np.float64), h.astype(np.float64)
    p = np.eye(d) - w64.T @ np.linalg.solve(w64 @ w64.T, w64)
    np.testing.assert_allclose(np.asarray(null_space_projector(jnp.asarray(w)), np.float64), p, atol=1e-4)
    for k in range(c):
        hk = h64[y == k]
        sigma = np.cov(hk.T, ddof=0)
        evals, evecs = np.linalg.eigh(p @ sigma @ p)
        evals, evecs = evals[::-1], evecs[:, ::-1]
        np.testing.assert_allclose(np.asarray(proj.eigenvalues[k, :s], np.float64), evals[:s], rtol=1e-3)
        np.testing.assert_allclose(np.asarray(moments.mean[k], np.float64), hk.mean(0), atol=1e-4)
        d_sigma = np.linalg.norm(np.asarray(moments.m2[k], np.float64) / len(hk) - sigma, 2)
        u = np.asarray(proj.directions[k], np.float64)
        v = evecs[:, :s]
        gap = evals[s - 1] - evals[s]
        bound = (2 * d_sigma + d * np.finfo(np.float32).eps * evals[0]) / gap + 1e-4
        assert np.linalg.norm(u @ u.T - v @ v.T, 2) <= bound

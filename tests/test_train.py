"""Train step (sharding invariance, one compilation, cached = online teacher), the loop, checkpoints,
teacher outputs and streaming statistics."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _multihost_worker import NUM_CLASSES, mlp, run_train, small_config, source, synthetic_arrays

from lelp_jax import methods, train
from lelp_jax.runtime import sharding
from lelp_jax.pipeline import teacher


def _init(model, method, cfg, seed=0, num_steps=10):
    opt = train.make_optimizer(cfg.train, num_steps=num_steps)
    state = train.init_train_state(model=model, method=method, optimizer=opt,
                                   sample_batch={"features": np.zeros((1, 6), np.float32)}, seed=seed,
                                   method_cfg=cfg)
    return opt, state


def _run_steps(mesh, model, method, cfg, batches, *, teacher_apply=None, t_vars=None):
    opt, state = _init(model, method, cfg)
    step = train.make_train_step(model=model, method=method, optimizer=opt, num_classes=NUM_CLASSES,
                                 method_cfg=cfg, teacher_apply=teacher_apply, mesh=mesh)
    state = sharding.replicate(state, mesh)
    tv = None if t_vars is None else sharding.replicate(t_vars, mesh)
    losses = []
    for b in batches:
        state, metrics = step(state, sharding.shard_batch(b, mesh), tv, None)
        losses.append(float(metrics["loss"]))
    return sharding.to_host(state), np.asarray(losses), step


def _batches(rng, n=5, size=16):
    data = synthetic_arrays(n * size, int(rng.integers(1 << 30)))
    return [{"features": data["features"][i * size:(i + 1) * size], "label": data["label"][i * size:(i + 1) * size],
             "mask": np.ones(size, np.float32)} for i in range(n)]


def test_eight_devices_match_one_device_and_compile_once(rng):
    """BatchNorm + dropout student: 5 steps on an 8-device mesh == on 1 device; one compilation."""
    cfg = small_config()
    model = mlp(dropout=0.3, batch_norm=True)
    batches = _batches(rng)
    s8, l8, step8 = _run_steps(sharding.make_mesh(), model, methods.get_method("ce"), cfg, batches)
    s1, l1, _ = _run_steps(sharding.make_mesh(1), model, methods.get_method("ce"), cfg, batches)
    assert step8._cache_size() == 1  # compiled once for 5 steps
    assert int(s8.step) == int(s1.step) == 5
    np.testing.assert_allclose(l8, l1, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves((s8.params, s8.batch_stats, s8.opt_state)),
                    jax.tree_util.tree_leaves((s1.params, s1.batch_stats, s1.opt_state))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert jax.tree_util.tree_leaves(s8.batch_stats)  # BN statistics were tracked


def test_cached_teacher_equals_online_teacher(rng):
    cfg = small_config()
    t_model = mlp(hidden=12)
    t_vars = t_model.init(jax.random.PRNGKey(3), {"features": np.zeros((1, 6), np.float32)})
    batches = _batches(rng, n=3)
    cached = []
    for b in batches:
        emb, logits = t_model.apply(t_vars, b)
        cached.append({**b, "teacher_embedding": np.asarray(emb), "teacher_logits": np.asarray(logits)})
    mesh = sharding.make_mesh()
    kd = methods.get_method("kd")
    s_on, l_on, _ = _run_steps(mesh, mlp(), kd, cfg, batches, teacher_apply=t_model.apply, t_vars=t_vars)
    s_ca, l_ca, _ = _run_steps(mesh, mlp(), kd, cfg, cached)
    np.testing.assert_allclose(l_on, l_ca, rtol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(s_on.params), jax.tree_util.tree_leaves(s_ca.params)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="needs teacher outputs"):
        _run_steps(mesh, mlp(), kd, cfg, batches)


def test_bfloat16_compute_keeps_float32_master_params(rng):
    cfg = small_config()
    model, ce = mlp(), methods.get_method("ce")
    opt, state = _init(model, ce, cfg)
    mesh = sharding.make_mesh()
    batch = sharding.shard_batch(_batches(rng, n=1)[0], mesh)
    out = {}
    for dtype in ("float32", "bfloat16"):
        step = train.make_train_step(model=model, method=ce, optimizer=opt, num_classes=NUM_CLASSES, method_cfg=cfg,
                                     mesh=mesh, compute_dtype=dtype)
        # the compute dtype actually used: the compiled program's matrix products take bf16 operands
        hlo = step.lower(sharding.replicate(state, mesh), batch, None, None).as_text()
        dots = [ln for ln in hlo.splitlines() if "dot_general" in ln]
        assert dots and all(("bf16" in ln) == (dtype == "bfloat16") for ln in dots), dots
        new, metrics = step(sharding.replicate(state, mesh), batch, None, None)
        assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(new.params))
        out[dtype] = float(metrics["loss"])
    np.testing.assert_allclose(out["bfloat16"], out["float32"], rtol=3e-2)
    assert out["bfloat16"] != out["float32"]  # bf16 rounding shows in the loss


def test_make_optimizer_schedule_and_errors():
    """SGD + momentum 0.9 on a constant gradient 1: update_t = -lr(t) m_t, m_t = sum_k<=t 0.9^(t-k),
    lr(t) = 0.1 t / 4 during warm-up, then 0.1 (1 + cos(pi (t - 4) / 16)) / 2 (cosine to 0 at t = 20)."""
    cfg = small_config(learning_rate=0.1, warmup_steps=4, schedule="cosine", optimizer="sgd", momentum=0.9)
    opt = train.make_optimizer(cfg.train, num_steps=20)
    params = {"w": jnp.zeros(())}
    state = opt.init(params)
    got = []
    for _ in range(20):
        updates, state = opt.update({"w": jnp.ones(())}, state, params)
        got.append(float(updates["w"]))
    t = np.arange(20, dtype=np.float64)
    lr = np.where(t < 4, 0.1 * t / 4, 0.1 * (1 + np.cos(np.pi * (t - 4) / 16)) / 2)
    m = np.array([sum(0.9 ** (i - k) for k in range(i + 1)) for i in range(20)])
    np.testing.assert_allclose(got, -lr * m, rtol=1e-5, atol=1e-7)
    const = train.make_optimizer(small_config(learning_rate=0.1, warmup_steps=0, schedule="constant",
                                              optimizer="sgd", momentum=0.0).train, num_steps=5)
    updates, _ = const.update({"w": jnp.ones(())}, const.init(params), params)
    assert abs(float(updates["w"]) + 0.1) < 1e-7
    for bad, match in (({"optimizer": "lamb"}, "optimizer"), ({"schedule": "step"}, "schedule"),
                       ({"compute_dtype": "float16"}, "compute_dtype")):
        with pytest.raises(ValueError, match=match):
            train.make_optimizer(small_config(**bad).train, num_steps=10)


def test_train_and_evaluate_writes_record_and_resumes_to_same_result(tmp_path, capsys):
    wd = str(tmp_path / "run")
    rec = run_train(wd, num_steps=20, checkpoint_every=10)
    for key in ("method", "seed", "steps", "test_accuracy_last", "test_accuracy_best_val", "best_val_accuracy",
                "best_step", "student_params", "history", "wall_time_s"):
        assert key in rec
    assert rec["steps"] == 20 and [h["step"] for h in rec["history"]] == [10, 20]
    assert rec["best_val_accuracy"] == max(h["val_accuracy"] for h in rec["history"])
    with open(os.path.join(wd, "result.json")) as f:
        assert json.load(f)["test_accuracy_last"] == rec["test_accuracy_last"]
    with open(os.path.join(wd, "metrics.jsonl")) as f:
        lines = [json.loads(x) for x in f]
    assert [x["step"] for x in lines if "val_accuracy" in x] == [10, 20]
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(os.path.join(wd, "tensorboard")))
    assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["10", "20"]
    assert rec["resumed_from_step"] is None
    again = run_train(wd, num_steps=20, checkpoint_every=10, progress=True)  # resumes from the final checkpoint
    assert again["resumed_from_step"] == 20
    assert "ce seed 0: resumed from step 20\n" in capsys.readouterr().out
    drop = ("wall_time_s", "resumed_from_step")
    assert {k: v for k, v in again.items() if k not in drop} == {k: v for k, v in rec.items() if k not in drop}
    with open(os.path.join(wd, "metrics.jsonl")) as f:
        rows = [json.loads(x) for x in f]
    assert len([r for r in rows if "val_accuracy" in r]) == 2  # no duplicated lines after the second call
    assert len([r for r in rows if "test_accuracy_last" in r]) == 1

    # restored variables give the recorded test accuracy, on any mesh
    ce = methods.get_method("ce")
    for mesh in (sharding.make_mesh(), sharding.make_mesh(1)):
        v = train.load_variables(wd, which="last", mesh=mesh)
        ev = train.make_eval_step(model=mlp(), method=ce, num_classes=NUM_CLASSES, mesh=mesh)
        from lelp_jax.data import make_iterator

        batches = make_iterator(source(64, 2), global_batch_size=64, seed=0, shuffle=False, num_epochs=1,
                                drop_remainder=False)
        assert train.evaluate(ev, v["params"], {}, batches, mesh) == rec["test_accuracy_last"]


def test_saved_variables_restore_bit_exactly(tmp_path, rng):
    cfg = small_config()
    model = mlp(batch_norm=True)
    opt, state = _init(model, methods.get_method("ce"), cfg, seed=int(rng.integers(1 << 30)))
    state = state.replace(batch_stats=jax.tree_util.tree_map(
        lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype), state.batch_stats))
    best = {"params": jax.tree_util.tree_map(lambda x: x + 1, state.params), "batch_stats": state.batch_stats}
    ck = train.checkpoints.Checkpoints(str(tmp_path / "checkpoints"))
    ck.save(7, train.checkpoints.checkpoint_tree(state, best), {"data": {}})
    ck.close()
    for which, want in (("last", state.variables()), ("best", best)):
        got = train.load_variables(str(tmp_path), which=which)
        assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
        for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="no checkpoint"):
        train.load_variables(str(tmp_path / "nothing"))


def test_teacher_cache_and_moments_match_numpy(tmp_path, rng):
    mesh = sharding.make_mesh()
    t_model = mlp(hidden=12)
    t_vars = t_model.init(jax.random.PRNGKey(int(rng.integers(1 << 30))), {"features": np.zeros((1, 6), np.float32)})
    src = source(50, int(rng.integers(1 << 30)))  # 50 = 3 full batches of 16 + a padded one
    feats = np.stack([src[i]["features"] for i in range(50)])
    labels = np.array([src[i]["label"] for i in range(50)])
    # centre the random teacher's logits so that its argmax picks both classes
    _, raw = t_model.apply(t_vars, {"features": feats})
    t_vars["params"]["head"]["bias"] = t_vars["params"]["head"]["bias"] - np.median(np.asarray(raw), axis=0)
    path = str(tmp_path / "outputs" / "train.npz")
    cache = teacher.cache_teacher_outputs(t_model.apply, t_vars, src, mesh=mesh, batch_size=16, path=path)
    emb, logits = (np.asarray(x, np.float64) for x in t_model.apply(t_vars, {"features": feats}))
    np.testing.assert_allclose(cache.embeddings, emb, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cache.logits, logits, rtol=1e-5, atol=1e-6)
    loaded = teacher.load_teacher_cache(path)
    np.testing.assert_array_equal(loaded.embeddings, cache.embeddings)
    assert not [f for f in os.listdir(tmp_path / "outputs") if "tmp" in f]
    with pytest.raises(ValueError, match="outside the cached split"):
        cache.lookup(np.array([0, 50]))

    for fit_labels, y in (("labels", labels), ("teacher", logits.argmax(1))):
        online = sharding.to_host(teacher.accumulate_moments(t_model.apply, t_vars, src, mesh=mesh, num_classes=2,
                                                             batch_size=16, fit_labels=fit_labels))
        cached = sharding.to_host(teacher.accumulate_moments(None, None, src, mesh=mesh, num_classes=2,
                                                             batch_size=16, fit_labels=fit_labels, cache=cache))
        for c in range(2):
            h = emb[y == c]
            assert len(h) > 1
            mu = h.mean(0)
            for m in (online, cached):
                assert m.count[c] == len(h)
                np.testing.assert_allclose(m.mean[c], mu, rtol=1e-5, atol=1e-5)
                np.testing.assert_allclose(m.m2[c], (h - mu).T @ (h - mu), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="fit_labels"):
        teacher.accumulate_moments(t_model.apply, t_vars, src, mesh=mesh, num_classes=2, batch_size=16,
                                   fit_labels="gold")


def test_supervised_teacher_on_digits_binary_beats_chance(tmp_path):
    """The teacher stage: method 'ce' on an MLP over digits odd/even, then restore its best-val variables."""
    from lelp_jax.data import default_data_config, load_split, make_iterator
    from lelp_jax.models import build_model

    data_cfg = default_data_config()
    data_cfg.update(name="digits_binary", data_dir=str(tmp_path / "tfds"))
    train_src, info = load_split(data_cfg, "train")
    val_src, _ = load_split(data_cfg, "validation")
    test_src, _ = load_split(data_cfg, "test")
    cfg = small_config(batch_size=32, num_steps=60, learning_rate=3e-3, eval_every=20, checkpoint_every=30)
    model = build_model("mlp", num_outputs=info.num_classes, hidden=(32,))
    mesh = sharding.make_mesh()
    rec = train.train_and_evaluate(model=model, method=methods.get_method("ce"), cfg=cfg, train_source=train_src,
                                   val_source=val_src, test_source=test_src, mesh=mesh,
                                   workdir=str(tmp_path / "teacher"), seed=0, num_classes=info.num_classes,
                                   progress=False)
    labels = np.array([test_src[i]["label"] for i in range(len(test_src))])
    majority = max(np.mean(labels), 1 - np.mean(labels))
    assert rec["test_accuracy_best_val"] > majority + 0.2, (rec, majority)
    best = train.load_variables(str(tmp_path / "teacher"), which="best", mesh=mesh)
    ev = train.make_eval_step(model=model, method=methods.get_method("ce"), num_classes=2, mesh=mesh)
    batches = make_iterator(test_src, global_batch_size=64, seed=0, shuffle=False, num_epochs=1, drop_remainder=False)
    assert train.evaluate(ev, best["params"], {}, batches, mesh) == rec["test_accuracy_best_val"]


def test_init_variables_start_from_given_params_and_reject_mismatch(rng):
    """A pretrained start: the state's params are exactly the given ones; a wrong tree is refused."""
    cfg = small_config()
    model, method = mlp(), methods.get_method("ce")
    _, fresh = _init(model, method, cfg, seed=0)
    given = jax.tree_util.tree_map(lambda x: rng.normal(size=x.shape).astype(np.float32), fresh.params)
    opt = train.make_optimizer(cfg.train, num_steps=10)
    state = train.init_train_state(model=model, method=method, optimizer=opt,
                                   sample_batch={"features": np.zeros((1, 6), np.float32)}, seed=0,
                                   method_cfg=cfg, init_variables={"params": given})
    for a, b in zip(jax.tree_util.tree_leaves(state.params), jax.tree_util.tree_leaves(given)):
        np.testing.assert_array_equal(np.asarray(a), b)
    wrong = jax.tree_util.tree_map(lambda x: np.zeros(x.shape + (1,), np.float32), fresh.params)
    with pytest.raises(ValueError, match="does not match the model's params"):
        train.init_train_state(model=model, method=method, optimizer=opt,
                               sample_batch={"features": np.zeros((1, 6), np.float32)}, seed=0,
                               method_cfg=cfg, init_variables={"params": wrong})


def test_train_section_is_read_whole_and_a_partial_one_is_refused(tmp_path, rng):
    """``train_config`` reads the complete section (base_config() writes every default, nothing fills in a
    second time); a section missing keys is refused by name. The section's intervals drive a run, and its
    learning rate the optimizer (SGD, no momentum: update = -lr)."""
    import ml_collections

    from lelp_jax.config import base_config

    assert train.train_config(base_config().train) == base_config().train.to_dict()
    with pytest.raises(ValueError, match="lacks .*checkpoint_every.*base_config"):
        train.train_config(ml_collections.ConfigDict({"batch_size": 8, "num_steps": 6}))
    cfg = base_config()
    cfg.train.update(dict(batch_size=16, num_steps=6, eval_every=3, checkpoint_every=2, learning_rate=0.25,
                          optimizer="sgd", momentum=0.0, schedule="constant"))
    params = {"w": jnp.zeros(())}
    opt = train.make_optimizer(cfg.train, num_steps=5)
    updates, _ = opt.update({"w": jnp.ones(())}, opt.init(params), params)
    assert float(updates["w"]) == pytest.approx(-0.25, abs=1e-7)

    wd = str(tmp_path / "run")
    rec = train.train_and_evaluate(model=mlp(), method=methods.get_method("ce"), cfg=cfg,
                                   train_source=source(64, int(rng.integers(1 << 30))), val_source=source(32, 1),
                                   test_source=source(32, 2), mesh=sharding.make_mesh(), workdir=wd, seed=0,
                                   num_classes=NUM_CLASSES, progress=False)
    assert [h["step"] for h in rec["history"]] == [3, 6]
    assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["4", "6"]  # every 2 steps, 2 kept


def test_batch_format_mask_and_model_inputs():
    """The one reading of a batch: mask (or ones) in float32; model inputs without teacher outputs,
    float inputs cast to the compute dtype, the mask and integer entries left as they are."""
    batch = {"features": jnp.ones((3, 2), jnp.float32), "label": jnp.array([0, 1, 1], jnp.int32),
             "mask": jnp.array([1.0, 1.0, 0.0], jnp.float32), "teacher_embedding": jnp.ones((3, 4)),
             "teacher_logits": jnp.ones((3, 2))}
    np.testing.assert_array_equal(train.batch_mask(batch), [1.0, 1.0, 0.0])
    no_mask = {k: v for k, v in batch.items() if k != "mask"}
    assert train.batch_mask(no_mask).dtype == jnp.float32
    np.testing.assert_array_equal(train.batch_mask(no_mask), [1.0, 1.0, 1.0])
    cast = train.model_inputs(batch, jnp.bfloat16)
    assert sorted(cast) == ["features", "label", "mask"]
    assert (cast["features"].dtype, cast["label"].dtype, cast["mask"].dtype) == (jnp.bfloat16, jnp.int32, jnp.float32)
    assert train.model_inputs(batch)["features"].dtype == jnp.float32

"""A teacher split over a 2-D ('data', 'model') mesh (8 emulated CPU devices) == the same teacher on 1 device.

Parameters split along 'model' by the rule of ``sharding.param_spec``; batches split along
'data'. Tolerances: the sharded programs sum the same float32 products in another order
(a kernel split along its input dimension becomes partial sums + an all-reduce), so
embeddings and logits agree to a few float32 ulps of their scale (rtol 1e-5, atol 1e-5),
second moments to rtol 1e-4 of their largest entry; the fitted directions agree to the
Davis-Kahan bound of that moment difference plus float32 eigh's backward error (the span of
the top-S eigenvectors moves by at most (2 ||dSigma|| + D eps ||Sigma||) / eigengap).
"""
import json

import jax
import numpy as np
import pytest

from lelp_jax import train
from lelp_jax.runtime import sharding
from lelp_jax.pipeline import teacher
from lelp_jax.data.sources import ArraySource, TextSource
from lelp_jax.models import build_model
from lelp_jax.core.projections import fit_projections

MESHES = ((4, 2), (2, 4))


def test_param_spec_rule():
    P = jax.sharding.PartitionSpec
    spec = sharding.param_spec
    # the largest dimension the axis divides; ties -> the first; small or indivisible leaves replicated
    assert spec((30522, 384), 2) == P("model")
    assert spec((30522, 384), 4) == P(None, "model")  # 30522 % 4 != 0
    assert spec((128, 4, 32), 2) == P("model")
    assert spec((512, 512), 4) == P("model")
    assert spec((256, 2), 2) == P()  # 512 elements: below MIN_SHARD_SIZE
    assert spec((30001, 7), 2) == P()  # no dimension divisible by 2
    assert spec((64, 256), 1) == P()  # no 'model' axis
    assert spec((64, 256), 2, min_size=1 << 20) == P()


def test_make_mesh_2d_and_errors():
    mesh = sharding.make_mesh(model=2)
    assert mesh.axis_names == ("data", "model") and dict(mesh.shape) == {"data": 4, "model": 2}
    assert sharding.model_axis_size(mesh) == 2 and sharding.model_axis_size(sharding.make_mesh()) == 1
    assert dict(sharding.make_mesh({"num_devices": 4, "model": 4}).shape) == {"data": 1, "model": 4}
    assert sharding.make_mesh({"num_devices": None, "model": 1}).axis_names == ("data",)
    with pytest.raises(ValueError, match="mesh.model=3"):
        sharding.make_mesh(model=3)


def test_shard_batch_on_2d_mesh_splits_rows_over_data_only(rng):
    mesh = sharding.make_mesh(model=2)
    x = rng.normal(size=(12, 3)).astype(np.float32)  # 12 rows: divisible by the 4 data slices, not by 8
    g = sharding.shard_batch({"x": x}, mesh)
    assert {s.data.shape for s in g["x"].addressable_shards} == {(3, 3)}
    np.testing.assert_array_equal(np.asarray(g["x"]), x)
    with pytest.raises(ValueError, match="data slices"):
        sharding.shard_batch({"x": x[:10]}, mesh)


def _mlp_case(rng):
    """The digits teacher's shape: MLP 64 -> 256 -> 256 -> 2 (kernels 64x256 and 256x256 are split)."""
    n = 200
    x = rng.normal(size=(n, 64)).astype(np.float32)
    y = (x[:, 0] + 0.5 * rng.normal(size=n) > 0).astype(np.int32)
    model = build_model("mlp", num_outputs=2, hidden=(256, 256))
    variables = jax.jit(lambda k: model.init(k, {"features": x[:1]}))(jax.random.PRNGKey(int(rng.integers(1 << 30))))
    return model, variables, ArraySource({"features": x, "label": y})


def _text_case(rng):
    """A 1-layer text transformer, d_model 128, vocabulary 2048: its token embedding is split along the
    vocabulary (a gather from a sharded table), attention kernels along d_model, the MLP along its width."""
    n, length, vocab = 64, 16, 2048
    ids = rng.integers(1, vocab, (n, length)).astype(np.int32)
    model = build_model("text_transformer", num_outputs=2, vocab_size=vocab, d_model=128, num_layers=1,
                        num_heads=4, max_len=length)
    sample = {"input_ids": ids[:1], "attention_mask": np.ones_like(ids[:1])}
    variables = jax.jit(lambda k: model.init(k, sample))(jax.random.PRNGKey(int(rng.integers(1 << 30))))
    return model, variables, TextSource(list(ids), rng.integers(0, 2, n))


def _large(variables):
    return [(jax.tree_util.keystr(p), leaf) for p, leaf in jax.tree_util.tree_leaves_with_path(variables)
            if leaf.size >= sharding.MIN_SHARD_SIZE]


@pytest.mark.parametrize("case,meshes", [("mlp", MESHES), ("text_transformer", MESHES[1:])])
def test_2d_mesh_matches_one_device(rng, case, meshes):
    """Both meshes for the MLP (the digits teacher's shape); the (2 x 4) one for the transformer (compiles slowly)."""
    model, variables, source = (_mlp_case if case == "mlp" else _text_case)(rng)
    runs = {}
    for shape in ((8, 1),) + meshes:  # (8, 1): the reference, on device 0 alone
        mesh = sharding.make_mesh(1) if shape == (8, 1) else sharding.make_mesh(model=shape[1])
        cache = teacher.cache_teacher_outputs(model.apply, variables, source, mesh=mesh, batch_size=32)
        moments = sharding.to_host(teacher.accumulate_moments(model.apply, variables, source, mesh=mesh,
                                                              num_classes=2, batch_size=32))
        w = np.asarray(variables["params"]["head"]["kernel"]).T
        proj = fit_projections(moments, classifier_weights=w, num_subclasses=2, key=0)
        runs[shape] = cache, moments, proj
        if shape[1] > 1:
            # each device holds 1/model of every large kernel (jax.jit refuses an argument laid out otherwise
            # than declared, so the runs above also show the teacher step declared with this layout)
            placed = sharding.shard_params(variables, mesh)
            large = _large(placed)
            assert large
            for name, leaf in large:
                spec = sharding.param_spec(leaf.shape, shape[1])
                axis = list(spec).index("model")
                want = leaf.shape[:axis] + (leaf.shape[axis] // shape[1],) + leaf.shape[axis + 1:]
                assert {s.data.shape for s in leaf.addressable_shards} == {want}, name
                assert sum(s.data.size for s in leaf.addressable_shards) == leaf.size * mesh.shape["data"]
    ref_cache, ref_m, ref_p = runs[(8, 1)]
    # the reference itself against float64 NumPy moments of its embeddings
    emb = ref_cache.embeddings.astype(np.float64)
    labels = np.array([int(source[i]["label"]) for i in range(len(source))])
    for c in range(2):
        h = emb[labels == c]
        np.testing.assert_allclose(ref_m.mean[c], h.mean(0), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(ref_m.m2[c], (h - h.mean(0)).T @ (h - h.mean(0)), rtol=1e-4,
                                   atol=1e-4 * np.abs(ref_m.m2[c]).max())
    for shape in meshes:
        cache, m, p = runs[shape]
        np.testing.assert_allclose(cache.embeddings, ref_cache.embeddings, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(cache.logits, ref_cache.logits, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(m.count, ref_m.count)
        np.testing.assert_allclose(m.mean, ref_m.mean, rtol=1e-5, atol=1e-5)
        scale = np.abs(ref_m.m2).max()
        np.testing.assert_allclose(m.m2, ref_m.m2, rtol=1e-4, atol=1e-4 * scale)
        np.testing.assert_allclose(p.eigenvalues, ref_p.eigenvalues, rtol=1e-4, atol=1e-4 * scale / ref_m.count.min())
        for c in range(2):
            u, v = np.asarray(p.directions[c], np.float64), np.asarray(ref_p.directions[c], np.float64)
            ev = np.asarray(ref_p.eigenvalues[c], np.float64)
            gap = ev[1] - ev[2]
            d_sigma = np.linalg.norm((np.asarray(m.m2[c], np.float64) - np.asarray(ref_m.m2[c], np.float64))
                                     / float(ref_m.count[c]), 2)
            dist = np.linalg.norm(u @ u.T - v @ v.T, 2)
            # perturbation + float32 eigh's own backward error (D eps ||Sigma||), both over the gap
            eigh_err = u.shape[0] * np.finfo(np.float32).eps * ev[0]
            assert dist <= (2 * d_sigma + eigh_err) / gap, (shape, c, dist, d_sigma, gap)


def test_restored_teacher_is_sharded_and_online_step_matches(tmp_path, rng):
    """load_variables(shard_params=True) restores the large kernels split; a KD train step with the
    teacher inside it, declared with that layout, equals the same step with a replicated teacher."""
    from _multihost_worker import small_config

    from lelp_jax import methods

    model, variables, source = _mlp_case(rng)
    mesh = sharding.make_mesh(model=4)
    cfg = small_config(num_steps=1, eval_every=1, checkpoint_every=1)
    train.train_and_evaluate(model=model, method=methods.get_method("ce"), cfg=cfg, train_source=source,
                             val_source=source, test_source=source, mesh=mesh, workdir=str(tmp_path / "t"),
                             seed=0, num_classes=2, progress=False)
    restored = train.load_variables(str(tmp_path / "t"), which="last", mesh=mesh, shard_params=True)
    kernels = {leaf.shape: leaf for leaf in jax.tree_util.tree_leaves(restored)}
    assert {s.data.shape for s in kernels[(256, 256)].addressable_shards} == {(64, 256)}
    assert {s.data.shape for s in kernels[(64, 256)].addressable_shards} == {(64, 64)}
    assert restored["params"]["head"]["kernel"].sharding.is_fully_replicated

    student = build_model("mlp", num_outputs=2, hidden=(8,))
    kd = methods.get_method("kd")
    opt = train.make_optimizer(cfg.train, num_steps=5)
    state = train.init_train_state(model=student, method=kd, optimizer=opt, sample_batch={"features": np.zeros(
        (1, 64), np.float32)}, seed=1, method_cfg=cfg)
    batch = sharding.shard_batch({k: np.stack([source[i][k] for i in range(16)]) for k in ("features", "label")},
                                 mesh)
    losses = []
    for t_sharding, t_vars in ((None, sharding.replicate(restored, mesh)),
                               (sharding.param_shardings(restored, mesh), restored)):
        step = train.make_train_step(model=student, method=kd, optimizer=opt, num_classes=2, method_cfg=cfg,
                                     teacher_apply=model.apply, mesh=mesh, teacher_sharding=t_sharding)
        _, metrics = step(sharding.replicate(state, mesh), batch, t_vars, None)
        losses.append(float(metrics["loss"]))
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)


def test_cli_run_with_model_axis(tmp_path, monkeypatch):
    """`lelp run ... --config.mesh.model=2`: the pipeline builds the (4 x 2) mesh, restores the teacher split,
    and its cached outputs equal a float64 NumPy forward of the checkpoint (rtol 1e-5: float32 sums in
    another order); the statistics equal float64 moments of those outputs."""
    from lelp_jax import cli, pipeline
    from lelp_jax.config import load_config

    monkeypatch.setenv("LELP_JAX_CACHE_DIR", "off")
    wd = tmp_path / "wd"
    args = ["--config", "configs/digits_binary.py", "--workdir", str(wd), "--config.smoke=true",
            f"--config.data.data_dir={tmp_path / 'tfds'}", "--config.teacher.train.num_steps=20",
            "--config.train.num_steps=10", "--config.train.checkpoint_every=0",
            "--config.teacher.train.checkpoint_every=0", "--config.teacher_cache=true", "--config.mesh.model=2"]
    assert cli.main(["run", *args, "--methods", "lelp"]) == 0
    config = load_config("configs/digits_binary.py", args[4:])
    run = pipeline.Run(config, wd)
    assert dict(run.mesh.shape) == {"data": 4, "model": 2}
    _, variables = run.teacher
    kernel = variables["params"]["dense_1"]["kernel"]  # 256 x 256, split in two
    assert {s.data.shape for s in kernel.addressable_shards} == {(128, 256)}
    source, _ = run.split("train")
    key = "features" if "features" in source[0] else "image"  # the MLP flattens either
    x = np.stack([np.asarray(source[i][key], np.float64).reshape(-1) for i in range(len(source))])
    labels = np.array([int(source[i]["label"]) for i in range(len(source))])
    h = x
    params = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), sharding.to_host(variables["params"]))
    for i in range(2):
        h = np.maximum(h @ params[f"dense_{i}"]["kernel"] + params[f"dense_{i}"]["bias"], 0.0)
    with np.load(wd / "teacher_outputs" / "train.npz") as f:
        np.testing.assert_allclose(f["embeddings"], h, rtol=1e-5, atol=1e-5)
    with np.load(wd / "statistics.npz") as f:
        for c in range(2):
            hc = h[labels == c]
            assert f["count"][c] == len(hc)
            np.testing.assert_allclose(f["mean"][c], hc.mean(0), rtol=1e-5, atol=1e-5)
            m2 = (hc - hc.mean(0)).T @ (hc - hc.mean(0))
            np.testing.assert_allclose(f["m2"][c], m2, rtol=1e-4, atol=1e-4 * np.abs(m2).max())
    assert json.loads((wd / "results.json").read_text())["runs"][0]["method"] == "lelp"

"""Contract tests for every registered model: shapes, head, train/eval, jit/grad, sizes."""
import dataclasses
import functools
from collections.abc import Callable
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lelp_jax.models import (MLP, ModelInfo, Teacher, build_model, count_params, describe_model,
                             flops_per_example, model_names, model_table, register_model, teacher_from_flax)

B = 3


def _key(seed: int) -> jax.Array:
    """A PRNG key whose impl is 'rbg': XLA compiles its random bits much faster on CPU
    than the default threefry (about 2 s instead of 10 s for a ResNet-8 init), which keeps
    this file fast. Typed keys carry their impl, so nothing global changes."""
    return jax.random.key(seed, impl="rbg")


def _image(rng, h=12, w=12, ch=1):
    return {"image": rng.random((B, h, w, ch), dtype=np.float32)}


def _tokens(rng, vocab=100, length=10):
    ids = rng.integers(1, vocab, size=(B, length)).astype(np.int32)
    lengths = np.array([length, 4, 1])
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int32)
    return {"input_ids": ids * mask, "attention_mask": mask}


# name -> (registry kwargs, batch maker, uses BatchNorm). Small so the file runs fast
# (MobileNetV2 with a two-stage plan here; the full plan is traced in
# test_mobilenet_full_plan_shapes). MiniLM has its own file: it needs the pretrained weights.
CASES = {
    "mlp": (dict(hidden=(16, 8), dropout_rate=0.5), lambda r: {"features": r.random((B, 10), dtype=np.float32)}, False),
    "mlp_image": (dict(hidden=(8,), dropout_rate=0.5), lambda r: _image(r, 8, 8), False),
    "small_cnn": (dict(conv_features=(4, 8), hidden=(16,), dropout_rate=0.5, batch_norm=True), _image, True),
    "resnet": (dict(depth=8, width=0.5, dropout_rate=0.5), lambda r: _image(r, 8, 8, 3), True),
    "mobilenet_v2": (dict(width=0.5, dropout_rate=0.5, plan=((1, 8, 1, 1), (6, 16, 2, 2)), last_channels=32),
                     lambda r: _image(r, 8, 8, 3), True),
    "text_transformer": (dict(vocab_size=100, d_model=16, num_layers=1, num_heads=2, max_len=16, dropout_rate=0.5),
                         _tokens, False),
    "text_cnn": (dict(vocab_size=100, embed_dim=8, kernel_sizes=(2, 3), features=4, dropout_rate=0.5), _tokens, False),
    "embedding_bag": (dict(vocab_size=100, embed_dim=8, hidden=(8,), dropout_rate=0.5), _tokens, False),
}
K = 4  # num_outputs, as if C * S = 2 * 2


def _registry_name(case):
    return "mlp" if case == "mlp_image" else case


class Compiled(NamedTuple):
    model: nn.Module
    variables: dict
    make_batch: Callable
    has_bn: bool
    eval_fn: Callable  # (variables, batch) -> ((emb, logits), state); no rngs: eval must need none
    train_fn: Callable  # (params, others, batch, labels, key) -> ((loss, (out, new_state)), grads)


@functools.cache
def _compiled(case: str) -> Compiled:
    """One model, fresh-seeded variables and jitted eval / train-grad functions per case,
    shared by the tests below so each case compiles once."""
    kwargs, make_batch, has_bn = CASES[case]
    model = build_model(_registry_name(case), num_outputs=K, **kwargs)
    seed = int(np.random.SeedSequence().entropy % 2**31)
    print(f"{case} init seed: {seed}")
    variables = jax.jit(lambda k: model.init(k, make_batch(np.random.default_rng(seed)), train=False))(_key(seed))
    mutable = ["batch_stats"] if has_bn else []

    def loss(params, others, batch, labels, key):
        out, state = model.apply({"params": params, **others}, batch, train=True, rngs={"dropout": key},
                                 mutable=mutable)
        logp = jax.nn.log_softmax(out[1])
        return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1)), (out, state)

    return Compiled(model, variables, make_batch, has_bn,
                    jax.jit(lambda v, b: model.apply(v, b, train=False, mutable=mutable)),
                    jax.jit(jax.value_and_grad(loss, has_aux=True)))


def _train(c: Compiled, batch, key, rng):
    others = {k: v for k, v in c.variables.items() if k != "params"}
    labels = jnp.asarray(rng.integers(0, K, size=B))
    return c.train_fn(c.variables["params"], others, batch, labels, key)


def test_every_registered_model_has_a_case():
    covered = {_registry_name(c) for c in CASES} | {"minilm"}  # minilm: tests/test_models_minilm.py
    assert covered == set(model_names())


@pytest.mark.parametrize("case", sorted(CASES))
def test_shapes_dtypes_and_head_contract(case, rng):
    c = _compiled(case)
    assert set(c.variables) == ({"params", "batch_stats"} if c.has_bn else {"params"})
    (emb, logits), _ = c.eval_fn(c.variables, c.make_batch(rng))
    assert emb.ndim == 2 and emb.shape[0] == B and emb.dtype == jnp.float32
    assert logits.shape == (B, K) and logits.dtype == jnp.float32
    head = c.variables["params"]["head"]
    assert head["kernel"].shape == (emb.shape[1], K)
    # logits = h W^T + b with W = kernel^T, checked in float64.
    ref = np.asarray(emb, np.float64) @ np.asarray(head["kernel"], np.float64) + np.asarray(head["bias"], np.float64)
    np.testing.assert_allclose(np.asarray(logits), ref, rtol=1e-5, atol=1e-5)
    w, b = teacher_from_flax(c.model, c.variables, name=case).classifier_weights()
    assert w.shape == (K, emb.shape[1]) and b.shape == (K,)


@pytest.mark.parametrize("case", sorted(CASES))
def test_wrong_batch_key_is_a_clear_error(case, rng):
    c = _compiled(case)
    with pytest.raises(ValueError, match="reads batch key"):
        c.model.apply(c.variables, {"nothing_useful": np.zeros((B, 4), np.float32)}, train=False)
    with pytest.raises(ValueError, match="batch dict"):
        c.model.apply(c.variables, next(iter(c.make_batch(rng).values())), train=False)


@pytest.mark.parametrize("case", sorted(CASES))
def test_train_and_eval_modes_jit_and_grad(case, rng):
    c = _compiled(case)
    batch = c.make_batch(rng)
    (loss1, ((_, t1), s1)), grads = _train(c, batch, _key(11), rng)
    (_, ((_, t2), _)), _ = _train(c, batch, _key(12), rng)
    (_, ((_, t1_again), _)), _ = _train(c, batch, _key(11), rng)
    assert not np.allclose(np.asarray(t1), np.asarray(t2))  # train dropout depends on the rng
    np.testing.assert_allclose(np.asarray(t1), np.asarray(t1_again), rtol=1e-6, atol=1e-6)
    (_, e_logits), eval_state = c.eval_fn(c.variables, batch)  # eval runs with no dropout rng at all
    assert not np.allclose(np.asarray(t1), np.asarray(e_logits))
    assert np.isfinite(float(loss1))
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree_util.tree_leaves(grads))
    assert np.any(np.asarray(grads["head"]["kernel"]) != 0)
    if c.has_bn:
        old = jax.tree_util.tree_leaves(c.variables["batch_stats"])
        new = jax.tree_util.tree_leaves(s1["batch_stats"])
        assert any(not np.allclose(np.asarray(a), np.asarray(b)) for a, b in zip(old, new))  # train updates
        for a, b in zip(old, jax.tree_util.tree_leaves(eval_state["batch_stats"])):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # eval leaves them alone
    else:
        assert s1 == {} and eval_state == {}


def test_mobilenet_full_plan_shapes():
    model = build_model("mobilenet_v2", num_outputs=3, width=0.25)
    batch = {"image": jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)}
    variables = jax.eval_shape(lambda b: model.init(_key(0), b), batch)
    emb, logits = jax.eval_shape(lambda v, b: model.apply(v, b), variables, batch)
    assert emb.shape == (2, 1280) and logits.shape == (2, 3)
    assert 0.2e6 < count_params(variables) < 0.3e6
    full = jax.eval_shape(lambda b: build_model("mobilenet_v2", num_outputs=3).init(_key(0), b), batch)
    assert 2.1e6 < count_params(full) < 2.4e6  # MobileNetV2 1.0 without the 1000-way head: ~2.2M


def test_mlp_matches_numpy_reference(rng):
    model = build_model("mlp", num_outputs=3, hidden=(7, 5))
    x = rng.normal(size=(4, 6)).astype(np.float32)
    variables = model.init(_key(int(rng.integers(2**31))), {"features": x})
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), variables["params"])
    h = np.maximum(x @ p["dense_0"]["kernel"] + p["dense_0"]["bias"], 0)
    h = np.maximum(h @ p["dense_1"]["kernel"] + p["dense_1"]["bias"], 0)
    emb, logits = model.apply(variables, {"features": x})
    np.testing.assert_allclose(np.asarray(emb), h, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(logits), h @ p["head"]["kernel"] + p["head"]["bias"], rtol=1e-5, atol=1e-6)


def test_batchnorm_running_stats_follow_the_formula(rng):
    """After one train call: mean' = 0.9 * 0 + 0.1 * mean_bhw(conv), var' = 0.9 * 1 + 0.1 * var_bhw(conv)."""
    model = build_model("small_cnn", num_outputs=2, conv_features=(3,), hidden=(), batch_norm=True)
    x = rng.random((4, 6, 6, 1), dtype=np.float32)
    variables = model.init(_key(0), {"image": x})
    _, state = model.apply(variables, {"image": x}, train=True, mutable=["batch_stats"])
    kern = np.asarray(variables["params"]["conv_0"]["kernel"], np.float64)  # (3, 3, 1, 3), no bias with BN
    xp = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    conv = sum(xp[:, i:i + 6, j:j + 6, :] @ kern[i, j] for i in range(3) for j in range(3))
    stats = state["batch_stats"]["bn_0"]
    np.testing.assert_allclose(np.asarray(stats["mean"]), 0.1 * conv.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(stats["var"]), 0.9 + 0.1 * conv.var(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("case", ["text_transformer", "text_cnn", "embedding_bag"])
def test_text_models_ignore_padding_tokens(case, rng):
    c = _compiled(case)
    batch = c.make_batch(rng)
    noisy = dict(batch)
    pad = batch["attention_mask"] == 0
    noisy["input_ids"] = np.where(pad, rng.integers(1, 100, size=pad.shape), batch["input_ids"]).astype(np.int32)
    assert not np.array_equal(noisy["input_ids"], batch["input_ids"])
    np.testing.assert_allclose(np.asarray(c.eval_fn(c.variables, noisy)[0][1]),
                               np.asarray(c.eval_fn(c.variables, batch)[0][1]), rtol=1e-5, atol=1e-6)


def test_build_model_errors():
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        build_model("nope", num_outputs=2)
    with pytest.raises(ValueError, match="has no option"):
        build_model("mlp", num_outputs=2, widths=(3,))
    with pytest.raises(ValueError, match="num_outputs"):
        build_model("mlp", num_outputs=0)
    with pytest.raises(ValueError, match="6n\\+2"):
        build_model("resnet", num_outputs=2, depth=10).init(_key(0), {"image": np.zeros((1, 8, 8, 3))})
    with pytest.raises(ValueError, match="already registered"):
        register_model("mlp", MLP)
    with pytest.raises(ValueError, match="max_len 16"):
        c = _compiled("text_transformer")
        c.model.apply(c.variables, {"input_ids": np.ones((1, 20), np.int32)})


def _param_count(name, batch, **kwargs):
    model = build_model(name, num_outputs=2, **kwargs)
    shapes = jax.eval_shape(lambda: model.init(_key(0), batch, train=False))
    return count_params(shapes)


def test_count_params_exact_for_mlp():
    assert _param_count("mlp", {"features": np.zeros((1, 64))}, hidden=(256, 256)) == \
        (64 * 256 + 256) + (256 * 256 + 256) + (256 * 2 + 2)
    variables = _compiled("resnet").variables
    assert count_params(variables) == sum(a.size for a in jax.tree_util.tree_leaves(variables["params"]))
    assert count_params(variables) < sum(a.size for a in jax.tree_util.tree_leaves(variables))  # no batch_stats


def test_documented_teacher_student_ratios_are_at_least_10x():
    img32 = {"image": np.zeros((1, 32, 32, 3), np.float32)}
    img28 = {"image": np.zeros((1, 28, 28, 1), np.float32)}
    ids = {"input_ids": np.zeros((1, 16), np.int32)}
    digits = {"features": np.zeros((1, 64), np.float32)}
    resnet56 = _param_count("resnet", img32, depth=56)
    assert 0.8e6 < resnet56 < 0.9e6
    assert resnet56 / _param_count("small_cnn", img32, conv_features=(8, 16), hidden=(32,)) >= 10
    assert _param_count("small_cnn", img28) / _param_count("small_cnn", img28, conv_features=(8, 16), hidden=(32,)) >= 10
    minilm = _param_count("minilm", ids)
    assert 22.5e6 < minilm < 22.8e6
    assert minilm / _param_count("text_transformer", ids) >= 10
    assert minilm / _param_count("embedding_bag", ids) >= 10
    assert minilm / _param_count("mlp", {"features": np.zeros((1, 384))}, hidden=(64,)) >= 10
    assert _param_count("mlp", digits, hidden=(256, 256)) / _param_count("mlp", digits, hidden=(8,)) >= 10


def test_flops_describe_and_table():
    batch = {"features": np.zeros((5, 64), np.float32)}
    linear = build_model("mlp", num_outputs=2, hidden=())
    v_lin = linear.init(_key(0), batch)
    flops = flops_per_example(linear, v_lin, batch)
    assert 2 * 64 * 2 <= flops <= 2 * 64 * 2 + 2 * 2  # one (1,64)x(64,2) matmul + bias, batch 1
    big = build_model("mlp", num_outputs=2, hidden=(32,))
    v_big = big.init(_key(0), batch)
    assert flops_per_example(big, v_big, batch) >= 2 * (64 * 32 + 32 * 2)
    line = describe_model(big, v_big, batch, name="mlp32")
    assert line.startswith("mlp32: 2.15k params") and "D=32" in line and "outputs=2" in line
    table = model_table([(ModelInfo("big", big, v_big, batch), ModelInfo("linear", linear, v_lin, batch))])
    assert "| big | 2.15k |" in table and f"{2146 / 130:.1f}x" in table


class UserNet(nn.Module):
    """A user's own model, as in the interface docstring; no `train` argument."""

    @nn.compact
    def __call__(self, batch):
        h = nn.relu(nn.Dense(6)(batch["features"]))
        return h, nn.Dense(3, name="classifier")(h)


def test_teacher_from_flax_on_a_user_module(rng):
    net = UserNet()
    x = rng.normal(size=(4, 5)).astype(np.float32)
    variables = net.init(_key(0), {"features": x})
    with pytest.raises(ValueError, match="head_path"):
        teacher_from_flax(net, variables, apply_kwargs={})
    teacher = teacher_from_flax(net, variables, head_path=("classifier",), apply_kwargs={}, name="user")
    assert isinstance(teacher, Teacher) and teacher.name == "user"
    emb, logits = jax.jit(teacher.apply_fn)(teacher.variables, {"features": x})
    w, b = teacher.classifier_weights()
    assert w.shape == (3, 6) and b.shape == (3,)
    ref = np.asarray(emb, np.float64) @ np.asarray(w, np.float64).T + np.asarray(b, np.float64)
    np.testing.assert_allclose(np.asarray(logits), ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(teacher({"features": x})[1]), np.asarray(logits), rtol=1e-6)
    frozen = dataclasses.FrozenInstanceError
    with pytest.raises(frozen):
        teacher.name = "other"


def test_interface_docstring_example_runs():
    """The wrapping example in lelp_jax.models.interface (copied to the README) must work."""
    import textwrap

    from lelp_jax.models import interface

    doc = interface.__doc__
    code = textwrap.dedent(doc[doc.index("    import flax.linen"):doc.index("A teacher that is not Flax")])
    scope: dict = {}
    exec(compile(code, "interface_example", "exec"), scope)
    assert scope["embedding"].shape == (4, 64) and scope["logits"].shape == (4, 2)
    assert scope["W"].shape == (2, 64) and scope["b"].shape == (2,)


@pytest.mark.parametrize("hw", [(8, 8), (7, 5)])
def test_max_pool_2x2_equals_flax_max_pool(rng, hw):
    """The reshape + max pool gives nn.max_pool's values and gradients (even and odd sizes)."""
    from lelp_jax.models.vision import max_pool_2x2

    x = jnp.asarray(rng.normal(size=(3, *hw, 4)).astype(np.float32))
    want = nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
    np.testing.assert_array_equal(np.asarray(max_pool_2x2(x)), np.asarray(want))
    g = jax.grad(lambda v: jnp.sum(max_pool_2x2(v) ** 2))(x)
    g_ref = jax.grad(lambda v: jnp.sum(nn.max_pool(v, (2, 2), strides=(2, 2), padding="SAME") ** 2))(x)
    np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), rtol=1e-6)

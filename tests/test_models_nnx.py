"""Flax NNX models as teachers and students: the adapter matches the NNX module, the registry builds it,
the head is read as for Linen, and an NNX teacher and student train through ``lelp run``."""
import json
import math
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx, serialization

from lelp_jax import cli, load_projections, models
from lelp_jax.models import NNXModel, build_model, from_nnx, head_weights, nnx_variables, register_model
from lelp_jax.models import teacher_from_flax
from lelp_jax.models.common import get_input
from lelp_jax.train import load_variables

# The NNX model of these tests, also written to a file for the `lelp run` test (a user's module).
NNX_MLP = '''
from flax import nnx

from lelp_jax.models.common import get_input


class NNXMLP(nnx.Module):
    """relu layers in an nnx.List (int paths: checkpoints must map them back), dropout, BatchNorm option."""

    def __init__(self, num_outputs: int, hidden=(16,), dropout_rate: float = 0.0, batch_norm: bool = False,
                 in_features: int = 64, *, rngs: nnx.Rngs):
        dims = (in_features, *hidden)
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(dims[:-1], dims[1:])])
        self.norm = nnx.BatchNorm(dims[-1], rngs=rngs) if batch_norm else None
        self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)
        self.head = nnx.Linear(dims[-1], num_outputs, rngs=rngs)

    def __call__(self, batch, *, train: bool = False):
        x = get_input(batch, "image" if "image" in batch else "features", "NNXMLP")
        h = x.reshape(x.shape[0], -1)  # digits' 8x8 images, flattened
        for layer in self.layers:
            h = nnx.relu(layer(h))
        if self.norm is not None:
            h = self.norm(h, use_running_average=not train)
        return h, self.head(self.dropout(h, deterministic=not train))
'''
_ns: dict = {}
exec(NNX_MLP, _ns)  # noqa: S102  (the same source as the user module below)
NNXMLP = _ns["NNXMLP"]

ATOL = 1e-6  # float32; the adapter runs the same ops on the same weights, so in practice it is bit-exact


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the model registry: what a test registers is gone afterwards."""
    monkeypatch.setattr(models, "_REGISTRY", dict(models._REGISTRY))  # noqa: SLF001


def _batch(rng, n=5, f=64):
    return {"features": rng.normal(size=(n, f)).astype(np.float32)}


def test_adapter_matches_the_nnx_module_on_its_weights(rng):
    module = NNXMLP(num_outputs=3, hidden=(16, 8), dropout_rate=0.5, rngs=nnx.Rngs(0))
    variables = nnx_variables(module)
    batch = _batch(rng)
    emb, logits = from_nnx(NNXMLP, num_outputs=3, hidden=(16, 8), dropout_rate=0.5).apply(variables, batch)
    want_emb, want_logits = module(batch, train=False)
    np.testing.assert_allclose(emb, want_emb, rtol=0, atol=ATOL)
    np.testing.assert_allclose(logits, want_logits, rtol=0, atol=ATOL)
    assert sorted(variables["params"]["layers"]) == ["0", "1"]  # string keys, as a checkpoint restores them


def test_batch_norm_state_moves_like_linen_batch_stats(rng):
    """train + mutable=['batch_stats'] gives the NNX module's own updated statistics; eval changes nothing."""
    module = NNXMLP(num_outputs=2, batch_norm=True, rngs=nnx.Rngs(1))
    model = from_nnx(NNXMLP, num_outputs=2, batch_norm=True)
    variables = nnx_variables(module)
    batch = _batch(rng)
    (_, logits), updates = model.apply(variables, batch, train=True, mutable=["batch_stats"])
    _, want = module(batch, train=True)  # updates module.norm's statistics in place
    np.testing.assert_allclose(logits, want, rtol=0, atol=ATOL)
    for stat in ("mean", "var"):
        np.testing.assert_allclose(updates["batch_stats"]["norm"][stat], getattr(module.norm, stat).get_value(),
                                   rtol=0, atol=ATOL)
    _, eval_logits = model.apply({**variables, **updates}, batch, train=False)
    np.testing.assert_allclose(eval_logits, module(batch, train=False)[1], rtol=0, atol=ATOL)


def test_dropout_follows_the_linen_dropout_rng(rng):
    model = from_nnx(NNXMLP, num_outputs=2, dropout_rate=0.5)
    batch = _batch(rng)
    variables = model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, batch)
    train = jax.jit(lambda v, k: model.apply(v, batch, train=True, rngs={"dropout": k})[1])
    a, b, a2 = train(variables, jax.random.key(2)), train(variables, jax.random.key(3)), train(variables, jax.random.key(2))
    assert not np.allclose(a, b) and np.array_equal(a, a2)
    np.testing.assert_array_equal(model.apply(variables, batch)[1], model.apply(variables, batch)[1])


def test_checkpoint_shaped_variables_apply_and_wrong_ones_fail_clearly(rng):
    model = from_nnx(NNXMLP, num_outputs=2, hidden=(8, 8))
    batch = _batch(rng)
    variables = model.init(jax.random.key(0), batch)
    restored = serialization.msgpack_restore(serialization.msgpack_serialize(serialization.to_state_dict(variables)))
    np.testing.assert_array_equal(model.apply(restored, batch)[1], model.apply(variables, batch)[1])
    with pytest.raises(ValueError, match="no params/layers/1"):
        model.apply(from_nnx(NNXMLP, num_outputs=2, hidden=(8,)).init(jax.random.key(0), batch), batch)
    with pytest.raises(ValueError, match="hold 2 array"):  # a layers/1 kernel and bias too many
        from_nnx(NNXMLP, num_outputs=2, hidden=(8,)).apply(variables, batch)


def test_nnx_teacher_head_is_read_like_a_linen_head(rng):
    module = NNXMLP(num_outputs=3, hidden=(8,), rngs=nnx.Rngs(2))
    w, b = head_weights(nnx_variables(module))
    np.testing.assert_array_equal(w, module.head.kernel.get_value().T)
    np.testing.assert_array_equal(b, module.head.bias.get_value())
    teacher = teacher_from_flax(from_nnx(NNXMLP, num_outputs=3, hidden=(8,)), nnx_variables(module), name="nnx")
    batch = _batch(rng)
    emb, logits = teacher(batch)
    np.testing.assert_allclose(logits, emb @ w.T + b, rtol=1e-5, atol=1e-5)  # logits = h W^T + b

    class Headless(nnx.Module):
        def __init__(self, num_outputs: int, *, rngs: nnx.Rngs):
            self.out = nnx.Linear(64, num_outputs, rngs=rngs)

        def __call__(self, batch, *, train: bool = False):
            return batch["features"], self.out(batch["features"])

    with pytest.raises(ValueError, match=r"no Dense head at params\['head'\].*'out'.*nnx\.Linear"):
        head_weights(nnx_variables(Headless(2, rngs=nnx.Rngs(0))))


def test_registry_builds_nnx_classes_and_checks_them(registry, rng):
    register_model("nnx_mlp", NNXMLP)
    model = build_model("nnx_mlp", num_outputs=4, hidden=(8,))
    assert isinstance(model, NNXModel)
    variables = jax.jit(lambda k, b: model.init(k, b))(jax.random.key(0), _batch(rng))
    assert variables["params"]["head"]["kernel"].shape == (8, 4)
    assert jax.tree_util.tree_structure(variables) == jax.tree_util.tree_structure(
        nnx_variables(NNXMLP(num_outputs=4, hidden=(8,), rngs=nnx.Rngs(0))))
    with pytest.raises(ValueError, match=r"no option\(s\) \['depth'\].*'dropout_rate'"):
        build_model("nnx_mlp", num_outputs=2, depth=3)

    class NoOutputs(nnx.Module):
        def __init__(self, *, rngs: nnx.Rngs):
            self.head = nnx.Linear(2, 2, rngs=rngs)

    with pytest.raises(ValueError, match="must take 'num_outputs'"):
        register_model("no_outputs", NoOutputs)

    class Counter(nnx.Module):
        def __init__(self, num_outputs: int, *, rngs: nnx.Rngs):
            self.head = nnx.Linear(64, num_outputs, rngs=rngs)
            self.calls = nnx.Variable(jnp.zeros(()))

        def __call__(self, batch, *, train: bool = False):
            return batch["features"], self.head(batch["features"])

    with pytest.raises(ValueError, match="calls is a Variable; the train step keeps nnx.Param and nnx.BatchStat"):
        from_nnx(Counter, num_outputs=2).init(jax.random.key(0), _batch(rng))


def test_extending_nnx_example_builds_and_has_a_head(registry, rng):
    """docs/EXTENDING.md's NNX block (its test_docs run only imports it): built from the registry, it runs
    on the blobs' 16 features in train and eval mode, and its head is the teacher classifier."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "EXTENDING.md").read_text()
    section = doc[doc.index("## An NNX model"):]
    code = section[section.index("```python\n") + len("```python\n"):section.index("```\n", section.index("```python"))]
    scope = {"jnp": jnp, "get_input": get_input, "model_names": models.model_names, "register_model": register_model}
    exec(compile(code, "EXTENDING.md", "exec"), scope)  # noqa: S102
    model = build_model("nnx_gated_mlp", num_outputs=6, hidden=4, dropout_rate=0.5)
    batch = _batch(rng, f=16)
    variables = model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, batch)
    emb, logits = model.apply(variables, batch)
    w, b = head_weights(variables)
    assert emb.shape == (5, 4) and logits.shape == (5, 6) and w.shape == (6, 4)
    np.testing.assert_allclose(logits, emb @ w.T + b, rtol=1e-5, atol=1e-5)
    assert model.apply(variables, batch, train=True, rngs={"dropout": jax.random.key(2)})[1].shape == (5, 6)


def test_nnx_teacher_and_student_train_through_lelp_run(tmp_path, monkeypatch, registry, capsys):
    """A user's module registers an NNX MLP; a user config (digits, smoke) makes it the teacher and the
    student; `lelp run` trains both, fits LELP on the NNX teacher's head and beats chance."""
    monkeypatch.setenv("LELP_JAX_CACHE_DIR", "off")
    (tmp_path / "nnx_models.py").write_text(NNX_MLP + textwrap.dedent('''
        from lelp_jax.models import model_names, register_model

        if "nnx_mlp" not in model_names():
            register_model("nnx_mlp", NNXMLP)
    '''))
    (tmp_path / "nnx_digits.py").write_text(textwrap.dedent('''
        import ml_collections

        import nnx_models  # noqa: F401  (registers nnx_mlp)
        from lelp_jax.config import config_from_file


        def get_config():
            c = config_from_file("digits_binary")
            c.teacher.model = "nnx_mlp"
            c.teacher.model_kwargs = ml_collections.ConfigDict(dict(hidden=(64, 64), dropout_rate=0.1))
            c.student.model = "nnx_mlp"
            c.student.model_kwargs = ml_collections.ConfigDict(dict(hidden=(8,)))
            return c
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    wd = tmp_path / "wd"
    rc = cli.main(["run", "--config", str(tmp_path / "nnx_digits.py"), "--workdir", str(wd), "--config.smoke=true",
                   "--methods", "ce,lelp", "--config.teacher.train.num_steps=60", "--config.train.num_steps=100"])
    assert rc == 0, capsys.readouterr().err
    results = json.loads((wd / "results.json").read_text())
    assert results["teacher"]["model"] == "nnx_mlp"
    runs = {r["method"]: r for r in results["runs"]}
    assert sorted(runs) == ["ce", "lelp"]
    for r in runs.values():
        acc = r["test_accuracy_best_val"]
        assert math.isfinite(acc) and acc > 0.6, r  # two balanced classes: chance is 0.5
    # LELP's directions lie in the null space of the NNX teacher's head, read from its checkpoint.
    w, _ = head_weights(load_variables(str(wd / "teacher"), which="best"))
    directions = load_projections(str(wd / "projections.npz")).directions  # (C, D, S)
    assert w.shape == (2, 64) and float(jnp.max(jnp.abs(jnp.einsum("cd,kds->kcs", w, directions)))) < 1e-4

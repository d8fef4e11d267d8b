"""The grain iterator (order, resume, sharding, padding, buckets) and digits_binary."""
import json

import numpy as np
import pytest

from lelp_jax.data import DATASETS, DatasetInfo, default_data_config, load_split, make_iterator, register_dataset
from lelp_jax.data.sources import ArraySource, TextSource
from lelp_jax.data.tokenizer import bucket_lengths


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def _digits(data_dir, split, **overrides):
    cfg = default_data_config()
    cfg.data_dir = data_dir
    for k, v in overrides.items():
        cfg[k] = v
    return load_split(cfg, split)


def _toy(n, rng):
    return ArraySource({"features": rng.normal(size=(n, 3)).astype(np.float32),
                        "label": rng.integers(0, 2, n)})


def _indices(it, k):
    return [next(it)["index"].tolist() for _ in range(k)]


def test_registry_names():
    assert {"digits_binary", "fashion_mnist_binary", "rotten_tomatoes", "sentiment140",
            "amazon_us_reviews", "cifar100_binary", "local", "synthetic_subclasses"} <= set(DATASETS)


def test_register_dataset_is_the_one_way_in(rng, monkeypatch):
    """A registered loader answers load_split for its name; a taken name or a non-function is refused."""
    monkeypatch.setattr("lelp_jax.data.loaders.DATASETS", dict(DATASETS))  # leave the real registry as it was
    from lelp_jax.data import loaders

    x = rng.normal(size=(7, 3)).astype(np.float32)
    y = rng.integers(0, 2, 7).astype(np.int32)

    def loader(name, data_config, split):
        info = DatasetInfo(name=name, num_classes=2, num_fine_classes=None, input_kind="features",
                           class_names=("a", "b"), split_sizes={split: 7}, input_shape=(3,))
        return ArraySource({"features": x, "label": y}), info

    assert loaders.register_dataset("toy_registered", loader) is loader
    src, info = load_split({"name": "toy_registered"}, "train")
    assert info.name == "toy_registered" and len(src) == 7
    np.testing.assert_array_equal(np.stack([src[i]["features"] for i in range(7)]), x)
    np.testing.assert_array_equal([src[i]["label"] for i in range(7)], y)
    with pytest.raises(ValueError, match="'toy_registered' is already registered"):
        loaders.register_dataset("toy_registered", loader)
    with pytest.raises(ValueError, match="must be a function"):
        loaders.register_dataset("toy_other", "not a loader")
    with pytest.raises(ValueError, match="Unknown dataset 'toy_other'"):
        load_split({"name": "toy_other"}, "train")
    assert "toy_registered" not in DATASETS  # the real registry is untouched


def test_digits_binary_counts_balance_fine_labels(digits_dir):
    sizes = {}
    for split, n in (("train", 1433), ("validation", 179), ("test", 185)):
        src, info = _digits(digits_dir, split)
        assert len(src) == n
        rows = [src[i] for i in range(len(src))]
        label = np.array([r["label"] for r in rows])
        fine = np.array([r["fine_label"] for r in rows])
        images = np.stack([r["image"] for r in rows])
        np.testing.assert_array_equal(label, fine % 2)
        assert set(fine.tolist()) == set(range(10))  # stratified on the digit
        assert 0.45 < label.mean() < 0.55
        assert images.shape == (n, 8, 8, 1) and images.dtype == np.float32
        assert images.min() == 0.0 and images.max() == 1.0
        np.testing.assert_array_equal([r["index"] for r in rows], np.arange(n))
        sizes[split] = n
    assert info.split_sizes == sizes
    assert (info.num_classes, info.num_fine_classes, info.input_kind) == (2, 10, "image")
    assert info.class_names == ("even", "odd") and info.input_shape == (8, 8, 1)


def test_stratified_split_disjoint_covering_proportional(rng):
    from lelp_jax.data.builders import stratified_split

    labels = rng.integers(0, 3, 1000)
    parts = stratified_split(labels, fractions=(0.8, 0.1, 0.1), seed=int(rng.integers(1000)))
    rows = np.concatenate(parts)
    assert sorted(rows.tolist()) == list(range(1000))
    for part, frac in zip(parts, (0.8, 0.1, 0.1)):
        for c in range(3):  # floor per class: off by at most one per class
            assert abs((labels[part] == c).sum() - frac * (labels == c).sum()) <= 1


def test_digits_features_view_and_cap(tmp_path):
    src, info = _digits(str(tmp_path), "train", input_kind="features", max_examples_per_split=50)
    assert len(src) == 50 and info.input_kind == "features" and info.input_shape == (64,)
    assert src[3]["features"].shape == (64,)
    with pytest.raises(ValueError, match="unknown split"):
        _digits(str(tmp_path), "dev", max_examples_per_split=50)


def test_digits_in_memory_equals_lazy(digits_dir):
    lazy, _ = _digits(digits_dir, "validation")
    mem, info = _digits(digits_dir, "validation", in_memory=True, input_kind="features")
    flat, _ = _digits(digits_dir, "validation", input_kind="features")
    kw = dict(global_batch_size=50, seed=4, num_epochs=1, drop_remainder=False)
    lazy_threads = make_iterator(lazy, num_threads=3, **kw)  # concurrent reads of the tfds source
    compared = 0
    for a, b, c in zip(lazy_threads, make_iterator(mem, **kw), make_iterator(flat, num_threads=0, **kw)):
        np.testing.assert_array_equal(a["image"].reshape(50, -1), b["features"])
        for key in c:
            np.testing.assert_array_equal(b[key], c[key])
        compared += 1
    assert compared == -(-len(mem) // 50)  # every batch of the split was compared


def test_batch_contract_dtypes(digits_dir):
    src, _ = _digits(digits_dir, "train")
    b = next(make_iterator(src, global_batch_size=32, seed=0))
    assert b["image"].shape == (32, 8, 8, 1) and b["image"].dtype == np.float32
    assert b["label"].dtype == np.int32 and b["fine_label"].dtype == np.int32
    assert b["index"].dtype == np.int64 and b["mask"].dtype == np.float32
    np.testing.assert_array_equal(b["mask"], 1.0)


def test_seeded_order(rng):
    src = _toy(103, rng)
    a = _indices(make_iterator(src, global_batch_size=10, seed=1), 25)
    b = _indices(make_iterator(src, global_batch_size=10, seed=1), 25)
    c = _indices(make_iterator(src, global_batch_size=10, seed=2), 25)
    assert a == b and a != c
    # every epoch is a fresh permutation: 10 batches of distinct examples, epochs differ
    e0, e1 = sum(a[:10], []), sum(a[10:20], [])
    assert len(set(e0)) == 100 and len(set(e1)) == 100 and e0 != e1
    plain = _indices(make_iterator(src, global_batch_size=10, seed=1, shuffle=False), 2)
    assert plain == [list(range(10)), list(range(10, 20))]


@pytest.mark.parametrize("num_threads", [0, 2])
def test_resume_continues_exactly(rng, num_threads):
    src = _toy(57, rng)
    kw = dict(global_batch_size=8, seed=7, num_threads=num_threads)
    it = make_iterator(src, **kw)
    _indices(it, 9)  # crosses an epoch boundary (7 batches per epoch)
    state = json.loads(json.dumps(it.get_state()))
    rest = [next(it) for _ in range(6)]
    again = make_iterator(src, **kw)
    again.set_state(state)
    for want in rest:
        got = next(again)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
    with pytest.raises(ValueError, match="seed"):
        make_iterator(src, global_batch_size=8, seed=8).set_state(state)


def test_state_resumes_on_another_process_count(rng):
    src = _toy(40, rng)
    one = make_iterator(src, global_batch_size=8, seed=5)
    _indices(one, 3)
    state = one.get_state()
    want = next(one)["index"]
    halves = []
    for p in range(2):
        it = make_iterator(src, global_batch_size=8, seed=5, process_index=p, process_count=2)
        it.set_state(state)
        halves.append(next(it)["index"])
    np.testing.assert_array_equal(np.concatenate(halves), want)


@pytest.mark.parametrize("procs", [2, 4])
def test_sharding_disjoint_and_covering(rng, procs):
    n, g = 50, 8
    src = _toy(n, rng)
    kw = dict(global_batch_size=g, seed=3, num_epochs=1, drop_remainder=False)
    single = list(make_iterator(src, **kw))
    hosts = [list(make_iterator(src, process_index=p, process_count=procs, **kw)) for p in range(procs)]
    assert all(len(h) == len(single) == 7 for h in hosts)
    seen = []
    for k, batch in enumerate(single):
        parts = [h[k] for h in hosts]
        assert all(len(p["index"]) == g // procs for p in parts)
        for key in batch:  # host batches concatenated in process order = the global batch
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), batch[key])
        real = [p["index"][p["mask"] > 0] for p in parts]
        flat = np.concatenate(real)
        assert len(set(flat.tolist())) == len(flat)  # hosts disjoint
        seen.extend(flat.tolist())
    assert sorted(seen) == list(range(n))  # together they cover the epoch once


def test_padded_last_batch_counts_each_example_once(rng):
    n, g = 45, 16
    src = _toy(n, rng)
    batches = list(make_iterator(src, global_batch_size=g, seed=0, num_epochs=2, drop_remainder=False))
    assert len(batches) == 6 and all(len(b["index"]) == g for b in batches)
    for epoch in (batches[:3], batches[3:]):
        counts = np.zeros(n)
        np.add.at(counts, np.concatenate([b["index"] for b in epoch]),
                  np.concatenate([b["mask"] for b in epoch]))
        np.testing.assert_array_equal(counts, 1.0)
    assert epoch[-1]["mask"].sum() == n - 2 * g
    # padding rows are copies of real rows of the same batch (same index, same input)
    last = epoch[-1]
    pad = last["mask"] == 0
    assert set(last["index"][pad].tolist()) <= set(last["index"][~pad].tolist())
    dropped = list(make_iterator(src, global_batch_size=g, seed=0, num_epochs=1))
    assert len(dropped) == 2 and all(b["mask"].min() == 1 for b in dropped)


def test_iterator_errors(rng):
    src = _toy(10, rng)
    with pytest.raises(ValueError, match="multiple of process_count"):
        make_iterator(src, global_batch_size=6, seed=0, process_count=4)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        make_iterator(src, global_batch_size=16, seed=0)
    with pytest.raises(ValueError, match="process_index"):
        make_iterator(src, global_batch_size=4, seed=0, process_index=2, process_count=2)


def test_text_batches_use_only_bucket_lengths(rng):
    n = 200
    lengths = rng.integers(2, 100, n)
    src = TextSource([rng.integers(1, 1000, k) for k in lengths], rng.integers(0, 2, n))
    src.buckets = bucket_lengths(100, (16, 32, 64, 128))
    assert src.buckets == (16, 32, 64, 100)
    kw = dict(global_batch_size=4, seed=0, num_epochs=1, drop_remainder=False)
    hosts = [list(make_iterator(src, process_index=p, process_count=2, **kw)) for p in range(2)]
    shapes = set()
    for b0, b1 in zip(*hosts):
        length = b0["input_ids"].shape[1]
        assert b1["input_ids"].shape[1] == length  # every host pads to the global batch's bucket
        real = np.concatenate([b0["index"][b0["mask"] > 0], b1["index"][b1["mask"] > 0]])
        longest = lengths[real].max()
        assert length == min(b for b in src.buckets if b >= longest)
        for b in (b0, b1):
            for row, i in zip(range(len(b["index"])), b["index"]):
                k = lengths[i]
                np.testing.assert_array_equal(b["input_ids"][row, :k], src[int(i)]["input_ids"])
                assert b["input_ids"][row, k:].sum() == 0
                np.testing.assert_array_equal(b["attention_mask"][row], np.arange(length) < k)
        shapes.add(length)
    assert shapes <= set(src.buckets) and len(shapes) > 1

"""synthetic_subclasses (generator, loader) and k-fold splits (lelp_jax.data.folds)."""
import numpy as np
import pytest

from lelp_jax.config import base_config, load_config, validate_config
from lelp_jax.runtime.errors import ConfigError
from lelp_jax.data import default_data_config, load_split
from lelp_jax.data.folds import fold_rows
from lelp_jax.data.synthetic import synthetic_arrays


def _cfg(**kw):
    cfg = default_data_config()
    for k, v in kw.items():
        cfg[k] = v
    return cfg


SMALL = dict(num_train=300, num_validation=200, num_test=500)


def test_synthetic_deterministic_shapes_and_fine_labels():
    a = synthetic_arrays(dict(SMALL, modes_per_class=3, seed=4))
    b = synthetic_arrays(dict(SMALL, modes_per_class=3, seed=4))
    other = synthetic_arrays(dict(SMALL, modes_per_class=3, seed=5))
    for split, n in (("train", 300), ("validation", 200), ("test", 500)):
        for k in ("features", "label", "fine_label"):
            np.testing.assert_array_equal(a[split][k], b[split][k])
        assert a[split]["features"].shape == (n, 64) and a[split]["features"].dtype == np.float32
        assert a[split]["label"].dtype == a[split]["fine_label"].dtype == np.int32
        assert not np.allclose(a[split]["features"], other[split]["features"])
    # every fine class belongs to exactly one class, and each class owns exactly K = 3 of the 6
    fine = np.concatenate([a[s]["fine_label"] for s in a])
    label = np.concatenate([a[s]["label"] for s in a])
    owner = {}
    for f, y in zip(fine, label):
        assert owner.setdefault(int(f), int(y)) == int(y)
    assert sorted(owner) == list(range(6))
    assert sorted(np.bincount(list(owner.values()))) == [3, 3]
    # the splits are different draws of the same distribution
    assert not np.allclose(a["train"]["features"][:200], a["validation"]["features"][:200])


def test_synthetic_knobs_reach_the_data():
    base = synthetic_arrays(dict(SMALL, seed=1))["train"]
    noisier = synthetic_arrays(dict(SMALL, seed=1, noise=2.0))["train"]
    np.testing.assert_array_equal(base["fine_label"], noisier["fine_label"])  # same draws, more noise
    # within a mode, inputs spread more with more latent noise
    f0 = base["fine_label"] == base["fine_label"][0]
    assert noisier["features"][f0].std(0).mean() > base["features"][f0].std(0).mean()
    wide = synthetic_arrays(dict(SMALL, input_dim=10, num_classes=3, modes_per_class=2))["test"]
    assert wide["features"].shape == (500, 10) and set(np.unique(wide["label"])) == {0, 1, 2}
    assert set(np.unique(wide["fine_label"])) <= set(range(6))


def test_synthetic_loader_and_bad_knobs():
    src, info = load_split(_cfg(name="synthetic_subclasses", synthetic=dict(SMALL, modes_per_class=4),
                                max_examples_per_split=100), "validation")
    assert len(src) == 100 and info.num_fine_classes == 8 and info.input_shape == (64,)
    assert info.input_kind == "features" and info.split_sizes == {"train": 100, "validation": 100, "test": 100}
    ref = synthetic_arrays(dict(SMALL, modes_per_class=4))["validation"]
    np.testing.assert_array_equal(src[7]["features"], ref["features"][7])
    assert int(src[7]["fine_label"]) == ref["fine_label"][7] and int(src[7]["index"]) == 7
    for bad, match in ((dict(noise=0.0), "noise must be > 0"), (dict(modes_per_class=0), "modes_per_class"),
                       (dict(num_classes=1), "num_classes must be >= 2"), (dict(nosie=1.0), "no key 'nosie'")):
        with pytest.raises(ValueError, match=match):
            load_split(_cfg(name="synthetic_subclasses", synthetic=bad), "train")


def test_fold_rows_partition_and_stratify(rng):
    strata = rng.integers(0, 7, size=503)
    tests = []
    for f in range(5):
        rows = fold_rows(strata, num_folds=5, fold=f, val_fraction=0.1, seed=3)
        tr, va, te = rows["train"], rows["validation"], rows["test"]
        assert len(np.intersect1d(tr, va)) == len(np.intersect1d(tr, te)) == len(np.intersect1d(va, te)) == 0
        assert len(tr) + len(va) + len(te) == 503
        # floor(10 %) of the training folds per stratum is validation
        for s in range(7):
            n_rest = int(np.sum(strata[np.concatenate([tr, va])] == s))
            assert np.sum(strata[va] == s) == int(n_rest * 0.1)
        tests.append(te)
    pooled = np.concatenate(tests)
    np.testing.assert_array_equal(np.sort(pooled), np.arange(503))  # every row tested exactly once
    sizes = [len(t) for t in tests]
    assert max(sizes) - min(sizes) <= 1
    # each stratum spread over the folds within one row
    for s in range(7):
        per_fold = [int(np.sum(strata[t] == s)) for t in tests]
        assert max(per_fold) - min(per_fold) <= 1
    again = fold_rows(strata, num_folds=5, fold=2, val_fraction=0.1, seed=3)
    np.testing.assert_array_equal(again["test"], tests[2])
    with pytest.raises(ValueError, match="0 <= fold < num_folds"):
        fold_rows(strata, num_folds=5, fold=5, val_fraction=0.1, seed=3)


def test_digits_kfold_covers_all_1797_images():
    seen = []
    for f in range(3):
        cfg = _cfg(name="digits_binary", num_folds=3, fold=f)
        test, info = load_split(cfg, "test")
        train, _ = load_split(cfg, "train")
        val, _ = load_split(cfg, "validation")
        assert len(train) + len(val) + len(test) == 1797 == sum(info.split_sizes.values())
        x = np.stack([test[i]["image"] for i in range(len(test))]).reshape(len(test), -1)
        y = np.asarray([int(test[i]["label"]) for i in range(len(test))])
        d = np.asarray([int(test[i]["fine_label"]) for i in range(len(test))])
        np.testing.assert_array_equal(y, d % 2)
        train_x = {train[i]["image"].tobytes() for i in range(len(train))}
        assert not any(row.reshape(8, 8, 1).tobytes() in train_x for row in x[:50])  # (digits has no duplicates in 50)
        seen.append(x)
    from sklearn.datasets import load_digits

    ref = np.sort((load_digits().data / 16.0).astype(np.float32), axis=0)
    np.testing.assert_array_equal(np.sort(np.concatenate(seen), axis=0), ref)


def test_fold_config_errors():
    c = base_config()
    c.data.num_folds = 1
    with pytest.raises(ConfigError, match="num_folds must be 0"):
        validate_config(c)
    c.data.num_folds, c.data.fold = 5, 5
    with pytest.raises(ConfigError, match=r"data.fold must be in \[0, data.num_folds\)"):
        validate_config(c)
    with pytest.raises(ConfigError, match="val_fraction must be in \\(0, 1\\)"):
        load_config("digits_binary", ["--config.data.num_folds=5", "--config.data.val_fraction=0"])


def test_regroup_relabels_and_caps_train_per_fine_class(tmp_path):
    cfg = _cfg(name="digits_binary", class_one_fine=(7, 0, 3, 8, 9), train_per_fine_class=20)
    train, info = load_split(cfg, "train")
    test, _ = load_split(cfg, "test")
    whole, _ = load_split(_cfg(name="digits_binary"), "train")
    fine = np.asarray([int(train[i]["fine_label"]) for i in range(len(train))])
    assert len(train) == 200 and np.all(np.bincount(fine) == 20) and info.split_sizes["train"] == 200
    for src in (train, test):
        for i in range(len(src)):
            assert int(src[i]["label"]) == int(int(src[i]["fine_label"]) in (0, 3, 7, 8, 9))
    # the kept rows are the first 20 of each digit, in split order
    whole_fine = np.asarray([int(whole[i]["fine_label"]) for i in range(len(whole))])
    first = np.sort(np.concatenate([np.flatnonzero(whole_fine == d)[:20] for d in range(10)]))
    np.testing.assert_array_equal(np.stack([train[i]["image"] for i in range(200)]),
                                  np.stack([whole[int(r)]["image"] for r in first]))
    assert len(test) == 185 and info.class_names == ("other", "0+3+7+8+9")
    for bad, match in ((dict(class_one_fine=tuple(range(10))), "some but not all"),
                       (dict(class_one_fine=(11,)), "some but not all"),
                       (dict(train_per_fine_class=-1), ">= 0"),
                       (dict(train_per_fine_class=5, num_folds=3), "cannot be combined")):
        with pytest.raises(ValueError, match=match):
            load_split(_cfg(name="digits_binary", **bad), "train")
    path = tmp_path / "coarse.npz"
    np.savez(path, features=np.zeros((6, 3), np.float32), labels=np.asarray([0, 1] * 3))
    with pytest.raises(ValueError, match="no fine labels"):
        load_split(_cfg(name="local", files={"train": str(path)}, num_classes=2, train_per_fine_class=3), "train")

"""lelp kfold: every fold runs without its test fold; pooled accuracies are exact count-weighted means."""
import json

import numpy as np
import pytest

from lelp_jax import kfold
from lelp_jax.config import load_config
from lelp_jax.errors import ConfigError


def _tiny(extra=()):
    steps = ["teacher.train.num_steps=6", "train.num_steps=6"] + [
        f"{s}.{k}=3" for s in ("teacher.train", "train") for k in ("eval_every", "checkpoint_every", "log_every")]
    return load_config("digits_kfold", ["smoke=true", "methods=ce", "seeds=0", "data.num_folds=2",
                                        "data.max_examples_per_split=60"] + steps + list(extra))


def test_kfold_runs_every_fold_and_pools_exactly(tmp_path, capsys):
    from lelp_jax.cli import main

    rc = main(["kfold", "--config", "digits_kfold", "--workdir", str(tmp_path), "--methods", "ce", "--seeds", "0",
               "--config.smoke", "--config.data.num_folds=2", "--config.data.max_examples_per_split=60",
               "--config.teacher.train.num_steps=6", "--config.train.num_steps=6", "--quiet"])
    assert rc == 0
    pooled = json.loads((tmp_path / "kfold.json").read_text())
    assert pooled["num_folds"] == 2 and sum(pooled["n_test"]) == 180  # 3 capped splits x 60, each tested once
    (row,) = pooled["rows"]
    accs, n = [], []
    for f in range(2):
        res = json.loads((tmp_path / f"fold_{f}" / "runs" / "ce" / "seed_0" / "result.json").read_text())
        cfg = json.loads((tmp_path / f"fold_{f}" / "config.json").read_text())
        assert cfg["data"]["fold"] == f
        accs.append(res["test_accuracy_best_val"])
        n.append(pooled["n_test"][f])
    # hand computation: correct predictions over both folds / all examples
    correct = sum(round(a * k) for a, k in zip(accs, n))
    assert row["test_accuracy"] == pytest.approx(correct / 180, abs=1e-9)
    assert row["folds"] == accs and "| – | ce |" in capsys.readouterr().out


def test_pool_folds_weights_by_fold_size(tmp_path, rng):
    config = _tiny()
    sizes = [kfold._split_sizes(kfold.fold_config(config, f)) for f in range(2)]
    truth = {}
    for f in range(2):
        for method in ("ce", "kd"):
            for seed in (0, 1):
                acc, val = rng.uniform(0.5, 1.0, size=2)
                d = tmp_path / f"fold_{f}" / "runs" / method / f"seed_{seed}"
                d.mkdir(parents=True)
                (d / "result.json").write_text(json.dumps({
                    "method": method, "seed": seed, "test_accuracy_best_val": acc,
                    "test_accuracy_last": acc, "best_val_accuracy": val}))
                truth.setdefault((method, seed), []).append((acc, val))
    pooled = kfold.pool_folds(config, tmp_path)
    md = kfold.table(pooled)
    assert "| – | kd |" in md and "Δ vs kd" in md and "Δ vs ce" in md  # paired by seed on pooled accuracies
    nt = np.asarray([s[0] for s in sizes], np.float64)
    nv = np.asarray([s[1] for s in sizes], np.float64)
    assert len(pooled["rows"]) == 4
    for row in pooled["rows"]:
        a = np.asarray(truth[(row["method"], row["seed"])], np.float64)
        assert row["test_accuracy"] == pytest.approx(float(a[:, 0] @ nt / nt.sum()), rel=1e-12)
        assert row["validation_accuracy"] == pytest.approx(float(a[:, 1] @ nv / nv.sum()), rel=1e-12)


def test_kfold_refuses_bad_setups(tmp_path):
    with pytest.raises(ConfigError, match="data.num_folds >= 2"):
        kfold.run_kfold(load_config("digits_binary", ["smoke=true"]), tmp_path)
    with pytest.raises(ConfigError, match="student-side"):
        kfold.run_kfold(_tiny(), tmp_path, {"teacher.train.num_steps": ["3"]})
    with pytest.raises(ConfigError, match="export them per fold"):
        kfold.run_kfold(load_config("digits_binary", ["smoke=true", "data.num_folds=3", "teacher.model=precomputed",
                                                      "teacher.outputs.train=t.npz", "teacher.outputs.test=x.npz"]),
                        tmp_path)

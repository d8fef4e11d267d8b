"""lelp kfold: every fold runs without its test fold; pooled accuracies are exact count-weighted means."""
import json

import numpy as np
import pytest

from lelp_jax.protocol import kfold
from lelp_jax.config import load_config
from lelp_jax.runtime.errors import ConfigError
from lelp_jax.protocol.grids import point_config


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
    vals = [json.loads((tmp_path / f"fold_{f}" / "runs" / "ce" / "seed_0" / "result.json").read_text())[
        "best_val_accuracy"] for f in range(2)]  # the exported student: the fold whose run is best on validation
    spec = json.loads((tmp_path / "student" / "student.json").read_text())
    assert spec["run"]["workdir"] == str((tmp_path / f"fold_{int(np.argmax(vals))}").resolve())


def test_pool_folds_weights_by_fold_size(tmp_path, rng):
    config = _tiny()
    sizes = [kfold._split_sizes(point_config(config, {"data.fold": f})) for f in range(2)]
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


_TINY_FLAGS = ["--config.smoke", "--config.data.num_folds=2", "--config.data.max_examples_per_split=60",
               "--config.teacher.train.num_steps=6", "--config.train.num_steps=6"] + [
    f"--config.{s}.{k}=3" for s in ("teacher.train", "train") for k in ("eval_every", "checkpoint_every", "log_every")]


def test_kfold_nests_selection_in_each_fold_and_pools_the_chosen_settings(tmp_path, capsys):
    """Each fold chooses on its own validation carve among its 2-point grids, runs the choice on the test seeds;
    the pooled test rows equal a hand computation from the folds' own result files."""
    from lelp_jax.cli import main

    rc = main(["kfold", "--config", "digits_kfold", "--workdir", str(tmp_path), "--methods", "kd,oracle",
               "--grid", "kd:kd.tau=1,4", "--grid", "oracle:lelp.tau=0.5,2", "--seeds", "0", "--test-seeds", "1,2",
               "--quiet", *_TINY_FLAGS])
    assert rc == 0
    out = capsys.readouterr().out
    pooled = json.loads((tmp_path / "kfold.json").read_text())
    n = np.asarray(pooled["n_test"], np.float64)
    assert n.sum() == 180 and pooled["test_seeds"] == [1, 2] and pooled["seeds"] == [0]
    grids_of = {"kd": ["kd.tau=1.0", "kd.tau=4.0"], "oracle": ["lelp.tau=0.5", "lelp.tau=2.0"]}
    truth = {}
    for f in range(2):
        sweep_dir = tmp_path / f"fold_{f}" / "sweep"
        summary = json.loads((sweep_dir / "summary.json").read_text())
        for m, points in grids_of.items():
            res = lambda p, s: json.loads((sweep_dir / p / "runs" / m / f"seed_{s}" / "result.json").read_text())  # noqa: E731
            assert json.loads((sweep_dir / points[0] / "config.json").read_text())["data"]["fold"] == f
            # nested: the fold's choice is the best validation accuracy on seed 0 of its own runs (first wins a tie)
            vals = [res(p, 0)["best_val_accuracy"] for p in points]
            point = summary["selection"][m]["point"]
            assert point == points[int(np.argmax(vals))]
            assert pooled["selection"][m][f]["point"] == point
            assert pooled["selection"][m][f]["val_accuracy"] == pytest.approx(max(vals), abs=1e-12)
            for s in (1, 2):
                acc = res(point, s)["test_accuracy_best_val"]
                assert abs(acc * n[f] - round(acc * n[f])) < 1e-6  # n_f is fold f's test-set size
                truth.setdefault((m, s), []).append(round(acc * n[f]))
    rows = {(r["method"], r["seed"]): r for r in pooled["test_rows"]}
    assert set(rows) == set(truth)
    for key, correct in truth.items():  # correct predictions over both test folds / all 180 examples
        assert rows[key]["test_accuracy"] == pytest.approx(sum(correct) / 180, abs=1e-12)
    assert {r["seed"] for r in pooled["rows"]} == {0}  # the grid rows hold the selection seed only
    d = np.asarray([rows[("oracle", s)]["test_accuracy"] - rows[("kd", s)]["test_accuracy"] for s in (1, 2)])
    half = np.tan(np.pi * 0.475) * d.std(ddof=1) / np.sqrt(2)  # t_{0.975, 1} = tan(0.475 pi) (Cauchy)
    assert f"| oracle | {100 * d.mean():+.2f} [{100 * (d.mean() - half):+.2f}, {100 * (d.mean() + half):+.2f}] (n=2) |" in out
    assert "Selection nested in each fold" in out and "| kd | 2 |" in out


def _fabricate(root, sizes, rng, choices, methods=("ce", "kd", "oracle"), seeds=(0,), test_seeds=(1, 2, 3)):
    """Sweep summaries and result files for 2 folds: per method two points; fold f chooses ``choices[f][m]``.
    The summaries' recorded workdirs point elsewhere (a copied workdir must pool its own files). Returns the
    chosen runs' (acc, last, val) per (method, test seed) and the chosen points' validation accuracy per (fold, method)."""
    truth, chosen_val, ranges = {}, {}, {"ce": (0.5, 0.6), "kd": (0.6, 0.8), "oracle": (0.8, 0.9)}  # the oracle has room over ce
    points = {"ce": ["defaults"], "kd": ["kd.tau=2.0", "kd.tau=4.0"], "oracle": ["lelp.tau=1.0", "lelp.tau=2.0"]}
    for f in range(2):
        sweep_dir = root / f"fold_{f}" / "sweep"
        summary_points, selection = [], {}
        for m in methods:
            for p in points[m]:
                ov = {} if p == "defaults" else {p.split("=")[0]: float(p.split("=")[1])}
                summary_points.append({"name": p, "overrides": ov, "methods": [m], "status": "done",
                                       "workdir": f"/elsewhere/{p}"})
                chosen = choices[f][m] == p
                for s in (*seeds, *(test_seeds if chosen else ())):
                    acc, last = rng.uniform(*ranges[m], size=2)
                    val = rng.uniform(0.9, 1.0) if chosen else rng.uniform(0.5, 0.9)  # the chosen point's val is best
                    if chosen and s in seeds:
                        chosen_val[(f, m)] = val
                    d = sweep_dir / p / "runs" / m / f"seed_{s}"
                    d.mkdir(parents=True)
                    (d / "result.json").write_text(json.dumps({
                        "method": m, "seed": s, "test_accuracy_best_val": acc, "test_accuracy_last": last,
                        "best_val_accuracy": val}))
                    if chosen and s in test_seeds:
                        truth.setdefault((m, s), []).append((acc, last, val))
            selection[m] = {"point": choices[f][m], "overrides": next(
                q["overrides"] for q in summary_points if q["name"] == choices[f][m]),
                "val_accuracy": chosen_val[(f, m)], "status": "done"}
        (sweep_dir / "summary.json").write_text(json.dumps({
            "seeds": list(seeds), "test_seeds": list(test_seeds), "methods": list(methods),
            "grid_sizes": {"ce": 1, "kd": 2, "oracle": 2}, "points": summary_points, "selection": selection}))
    return truth, chosen_val


def test_pool_only_pools_each_folds_own_choice(tmp_path, rng, capsys):
    from lelp_jax.cli import main

    config = _tiny(["methods=ce,kd,oracle", "seeds=0"])
    sizes = np.asarray([kfold._split_sizes(point_config(config, {"data.fold": f})) for f in range(2)], np.float64)
    choices = [{"ce": "defaults", "kd": "kd.tau=2.0", "oracle": "lelp.tau=1.0"},
               {"ce": "defaults", "kd": "kd.tau=4.0", "oracle": "lelp.tau=1.0"}]
    truth, chosen_val = _fabricate(tmp_path, sizes, rng, choices)
    args = ["kfold", "--config", "digits_kfold", "--workdir", str(tmp_path), "--methods", "ce,kd,oracle",
            "--grid", "kd:kd.tau=2,4", "--grid", "oracle:lelp.tau=1,2", "--seeds", "0", "--test-seeds", "1,2,3",
            "--pool-only", *_TINY_FLAGS]
    assert main(args) == 0
    out = capsys.readouterr().out
    pooled = json.loads((tmp_path / "kfold.json").read_text())
    assert pooled["n_test"] == sizes[:, 0].tolist()
    assert [p["point"] for p in pooled["selection"]["kd"]] == ["kd.tau=2.0", "kd.tau=4.0"]
    assert [p["val_accuracy"] for p in pooled["selection"]["kd"]] == [chosen_val[(0, "kd")], chosen_val[(1, "kd")]]
    assert len(pooled["test_rows"]) == 9 and pooled["grid_sizes"] == {"ce": 1, "kd": 2, "oracle": 2}
    for row in pooled["test_rows"]:
        a = np.asarray(truth[(row["method"], row["seed"])], np.float64)  # (fold, [acc, last, val])
        assert row["points"] == [c[row["method"]] for c in choices]
        np.testing.assert_allclose(row["test_accuracy"], a[:, 0] @ sizes[:, 0] / sizes[:, 0].sum(), rtol=1e-12)
        np.testing.assert_allclose(row["test_accuracy_last"], a[:, 1] @ sizes[:, 0] / sizes[:, 0].sum(), rtol=1e-12)
        np.testing.assert_allclose(row["validation_accuracy"], a[:, 2] @ sizes[:, 1] / sizes[:, 1].sum(), rtol=1e-12)
    assert {r["seed"] for r in pooled["rows"]} == {0}  # grid rows: the selection seed only
    val = {k: f"{100 * v:.2f}" for k, v in chosen_val.items()}
    assert f"f0: kd.tau=2.0 ({val[(0, 'kd')]}); f1: kd.tau=4.0 ({val[(1, 'kd')]})" in out
    assert f"all folds: lelp.tau=1.0 ({val[(0, 'oracle')]}, {val[(1, 'oracle')]})" in out
    assert "| ce | 1 | all folds: (config settings)" in out
    acc = {m: {s: float(np.asarray(truth[(m, s)])[:, 0] @ sizes[:, 0] / sizes[:, 0].sum()) for s in (1, 2, 3)}
           for m in ("ce", "kd", "oracle")}
    room = (np.mean(list(acc["kd"].values())) - np.mean(list(acc["ce"].values()))) / (
        np.mean(list(acc["oracle"].values())) - np.mean(list(acc["ce"].values())))
    kd_line = next(line for line in out.splitlines() if line.startswith("| kd | – | – |"))
    assert "oracle room" in out and 0 < room < 1 and kd_line.endswith(f"| {room:.2f} |")
    # the choice is recomputed from the runs: a summary without its selection block pools the same
    summary = tmp_path / "fold_1" / "sweep" / "summary.json"
    s = json.loads(summary.read_text())
    summary.write_text(json.dumps({k: v for k, v in s.items() if k != "selection"}))
    assert main(args) == 0 and json.loads((tmp_path / "kfold.json").read_text())["test_rows"] == pooled["test_rows"]
    capsys.readouterr()
    # refused, with the fix: selected on other seeds, a recorded choice the runs contradict, an unfinished grid
    summary.write_text(json.dumps({**s, "seeds": [0, 5]}))
    assert main(args) == 2 and "chose its settings on seeds [0, 5]" in capsys.readouterr().err
    summary.write_text(json.dumps({**s, "selection": {**s["selection"], "kd": {"point": "kd.tau=2.0"}}}))
    assert main(args) == 2 and "runs' validation accuracies choose 'kd.tau=4.0'" in capsys.readouterr().err
    summary.write_text(json.dumps(s))
    (tmp_path / "fold_1" / "sweep" / "kd.tau=2.0" / "runs" / "kd" / "seed_0" / "result.json").unlink()
    assert main(args) == 2 and "'kd' on every selection seed [0] in only 1 of its 2 grid points" in capsys.readouterr().err


def test_kfold_refuses_overlapping_test_seeds_in_one_error_line(tmp_path, capsys):
    from lelp_jax.cli import main

    for extra in ([], ["--pool-only"]):
        rc = main(["kfold", "--config", "digits_kfold", "--workdir", str(tmp_path), "--methods", "kd,lelp",
                   "--default-grids", "--seeds", "0,1", "--test-seeds", "1,2", *extra, *_TINY_FLAGS])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and err[0].startswith("lelp: error: test seeds [1] are also selection seeds")
    assert not any(tmp_path.iterdir())  # refused before anything was written
    with pytest.raises(ConfigError, match="need grids"):
        kfold.run_kfold(_tiny(), tmp_path, test_seeds=[3])

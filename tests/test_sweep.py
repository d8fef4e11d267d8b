"""`lelp sweep`: grid parsing, one sub-workdir per point, summary, resume after a kill."""
import json
import re
import warnings

import ml_collections
import numpy as np
import pytest

from lelp_jax.protocol import grids, sweep
from lelp_jax.config import base_config
from lelp_jax.runtime.errors import ConfigError


def _config(methods=("kd", "lelp"), seeds=(0, 1)):
    c = base_config()
    c.methods = methods
    c.seeds = seeds
    c.lock()
    return c


def test_parse_grid_and_points():
    grid = grids.parse_grid(["lelp.num_subclasses=1,2,4", "--config.lelp.beta=0.5, 1", "student.model_kwargs.hidden=[16],[8,8]"])
    assert grid == {"lelp.num_subclasses": ["1", "2", "4"], "lelp.beta": ["0.5", "1"],
                    "student.model_kwargs.hidden": ["[16]", "[8,8]"]}
    pts = grids.grid_points(grid)
    assert len(pts) == 12 and pts[0] == {"lelp.num_subclasses": "1", "lelp.beta": "0.5", "student.model_kwargs.hidden": "[16]"}
    assert grids.point_name({"lelp.num_subclasses": 4, "lelp.beta": 0.5}) == "lelp.num_subclasses=4,lelp.beta=0.5"
    assert grids.point_name({"data.class_one_fine": [0, 1, 4], "lelp.beta": 0.5}) == "data.class_one_fine=0+1+4,lelp.beta=0.5"
    for bad, msg in ((["lelp.beta"], "no values"), (["lelp.beta=1", "lelp.beta=2"], "twice"), (["lelp.beta=1,1"], "repeats")):
        with pytest.raises(ConfigError, match=msg):
            grids.parse_grid(bad)


def test_point_config_types_values_and_rejects_bad_keys():
    cfg = grids.point_config(_config(), {"lelp.num_subclasses": "8", "lelp.beta": "2", "student.model_kwargs.hidden": "[8,8]"}, seeds=[3])
    assert cfg.lelp.num_subclasses == 8 and cfg.lelp.beta == 2.0 and isinstance(cfg.lelp.beta, float)
    assert tuple(cfg.student.model_kwargs.hidden) == (8, 8) and tuple(cfg.seeds) == (3,)
    with pytest.raises(ConfigError, match="did you mean 'lelp.beta'"):
        grids.point_config(_config(), {"lelp.betta": "2"})
    with pytest.raises(ConfigError, match="beta must be > 0"):
        grids.point_config(_config(), {"lelp.beta": "-1"})


class _FakePipeline:
    """Writes a results.json whose accuracies are a known function of the point; can fail once."""

    def __init__(self, fail_on=None):
        self.calls, self.fail_on = [], fail_on

    def acc(self, cfg, method, seed):
        return 0.5 + 0.01 * cfg.lelp.num_subclasses + 0.1 * cfg.lelp.beta + 0.001 * seed + (0.05 if method == "lelp" else 0)

    def __call__(self, cfg, workdir, *, log=print):
        self.calls.append(workdir)
        if self.fail_on is not None and len(self.calls) == self.fail_on:
            raise KeyboardInterrupt
        runs = [{"method": m, "seed": s, "test_accuracy_last": self.acc(cfg, m, s) - 0.01,
                 "test_accuracy_best_val": self.acc(cfg, m, s), "student_params": 10, "history": []}
                for m in cfg.methods for s in cfg.seeds]
        import os

        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump({"dataset": cfg.data.name, "config_name": cfg.name, "teacher": {}, "runs": runs}, f)


def test_sweep_summary_and_resume_after_kill(tmp_path):
    grid = {"lelp.num_subclasses": [1, 2], "lelp.beta": ["0.5", "2"]}
    fake = _FakePipeline(fail_on=2)
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(_config(), tmp_path, grid, share_teacher=False, run_fn=fake, log=lambda m: None)
    summary = json.loads((tmp_path / "sweep" / "summary.json").read_text())
    assert [p["status"] for p in summary["points"]] == ["done", "failed", "pending", "pending"]
    assert "KeyboardInterrupt" in summary["points"][1]["error"]
    first = summary["points"][0]["workdir"]
    assert first.endswith("sweep/lelp.num_subclasses=1,lelp.beta=0.5")

    fake2 = _FakePipeline()
    summary = sweep.run_sweep(_config(), tmp_path, grid, share_teacher=False, run_fn=fake2, log=lambda m: None)
    assert first not in fake2.calls and len(fake2.calls) == 3  # the finished point was not recomputed
    assert all(p["status"] == "done" for p in summary["points"])
    assert summary["grid"] == {"lelp.num_subclasses": [1, 2], "lelp.beta": [0.5, 2.0]}
    assert summary["axes"] == ["lelp.num_subclasses", "lelp.beta"]
    for p in summary["points"]:
        s_, b = p["overrides"]["lelp.num_subclasses"], p["overrides"]["lelp.beta"]
        for m in ("kd", "lelp"):
            ref = [0.5 + 0.01 * s_ + 0.1 * b + 0.001 * seed + (0.05 if m == "lelp" else 0) for seed in (0, 1)]
            st = p["summary"][m]
            np.testing.assert_allclose([st["test_accuracy_best_val"]["mean"], st["test_accuracy_best_val"]["std"]],
                                       [np.mean(ref), np.std(ref)], atol=1e-12)
            assert st["n"] == 2
    assert json.loads((tmp_path / "sweep" / "summary.json").read_text()) == summary
    fake3 = _FakePipeline()
    sweep.run_sweep(_config(), tmp_path, grid, share_teacher=False, run_fn=fake3, log=lambda m: None)
    assert fake3.calls == []  # everything done: nothing runs


def test_sweep_point_missing_runs_is_an_error(tmp_path):
    def incomplete(cfg, workdir, *, log=print):
        import os

        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump({"runs": []}, f)

    with pytest.raises(RuntimeError, match="without every method"):
        sweep.run_sweep(_config(), tmp_path, {"lelp.beta": [1.0]}, share_teacher=False, run_fn=incomplete, log=lambda m: None)


# ----------------------------------------------------------------------------- real pipeline, tiny


def _tiny_config():
    from lelp_jax.config import load_config

    steps = ["teacher.train.num_steps=6", "train.num_steps=6"] + [
        f"{s}.{k}=3" for s in ("teacher.train", "train") for k in ("eval_every", "checkpoint_every", "log_every")]
    return load_config("digits_binary", ["smoke=true", "methods=lelp", "seeds=0"] + steps)


def test_tiny_sweep_resumes_after_kill_and_reports(tmp_path):
    from lelp_jax import pipeline, report

    calls = []

    def killed_on_second(cfg, workdir, *, log=print):
        calls.append(workdir)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return pipeline.run_all(cfg, workdir, log=log)

    grid = grids.parse_grid(["lelp.num_subclasses=1,3"])
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(_tiny_config(), tmp_path, grid, run_fn=killed_on_second, log=lambda m: None)
    first = tmp_path / "sweep" / "lelp.num_subclasses=1"
    stamp = (first / "results.json").stat().st_mtime_ns
    calls.clear()

    def counting(cfg, workdir, *, log=print):
        calls.append(workdir)
        return pipeline.run_all(cfg, workdir, log=log)

    summary = sweep.run_sweep(_tiny_config(), tmp_path, grid, run_fn=counting, log=lambda m: None)
    assert calls == [str(tmp_path / "sweep" / "lelp.num_subclasses=3")]
    assert (first / "results.json").stat().st_mtime_ns == stamp  # not recomputed
    assert [p["status"] for p in summary["points"]] == ["done", "done"]
    # the points share the one teacher trained in sweep/_teacher
    for p in summary["points"]:
        cfg = json.loads((tmp_path / "sweep" / p["name"] / "config.json").read_text())
        assert cfg["teacher"]["checkpoint"] == str((tmp_path / "sweep" / "_teacher").resolve())
    res = json.loads((first / "results.json").read_text())
    assert res["runs"][0]["student_params"] < res["teacher"]["params"]

    out = report.build_report([tmp_path, first], tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    names = sorted(p.rsplit("/", 1)[-1] for p in out["plots"])
    assert names == ["digits_binary_digits_binary_2_curves.png", "digits_binary_digits_binary_2_spectrum.png",
                     "digits_binary_digits_binary_sweep_lelp.num_subclasses.png"]
    assert "| lelp |" in md and "| 1 | " in md and "| 3 | " in md


def test_sweep_main_checks_the_grid_before_writing(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'lelp.beta'"):
        sweep.main(["--config", "digits_binary", "--workdir", str(tmp_path / "w"), "--grid", "lelp.betta=1,2"])
    with pytest.raises(ConfigError, match="num_subclasses must be >= 1"):
        sweep.main(["--config", "digits_binary", "--workdir", str(tmp_path / "w"), "--grid", "lelp.num_subclasses=2,0"])
    assert not (tmp_path / "w").exists()


# ----------------------------------------------------------------------------- selection on validation


class _ValTestPipeline:
    """val and test accuracies as known, *different* functions of the point (selection must follow val)."""

    def __init__(self):
        self.calls = []

    @staticmethod
    def val(cfg, method):
        return {"kd": 0.8 - 0.01 * (cfg.kd.tau - 2) ** 2, "lelp": 0.8 + 0.01 * cfg.lelp.beta, "ce": 0.7}[method]

    @staticmethod
    def test(cfg, method, seed):
        return {"kd": 0.9 - 0.01 * cfg.kd.tau, "lelp": 0.9 - 0.01 * cfg.lelp.beta, "ce": 0.85}[method] + 0.001 * seed

    def __call__(self, cfg, workdir, *, log=print):
        import os

        self.calls.append((os.path.basename(workdir), tuple(cfg.methods), tuple(cfg.seeds)))
        path = os.path.join(workdir, "results.json")
        old = json.load(open(path))["runs"] if os.path.exists(path) else []
        have = {(r["method"], r["seed"]) for r in old}
        runs = old + [{"method": m, "seed": s, "best_val_accuracy": self.val(cfg, m) + 0.0001 * s,
                       "test_accuracy_last": self.test(cfg, m, s), "test_accuracy_best_val": self.test(cfg, m, s),
                       "student_params": 10} for m in cfg.methods for s in cfg.seeds if (m, s) not in have]
        os.makedirs(workdir, exist_ok=True)
        with open(path, "w") as f:
            json.dump({"dataset": cfg.data.name, "config_name": cfg.name, "teacher": {}, "runs": runs}, f)


def test_per_method_grids_select_on_validation_and_test_on_fresh_seeds(tmp_path):
    from lelp_jax import report

    shared, own = grids.parse_grids(["kd:kd.tau=1,2,4", "lelp:lelp.beta=0.5,1,3"])
    assert shared == {} and own == {"kd": {"kd.tau": ["1", "2", "4"]}, "lelp": {"lelp.beta": ["0.5", "1", "3"]}}
    fake = _ValTestPipeline()
    cfg = _config(methods=("ce", "kd", "lelp"), seeds=(0, 1))
    summary = sweep.run_sweep(cfg, tmp_path, {}, own_grids=own, test_seeds=[5, 6, 7], share_teacher=False,
                              run_fn=fake, log=lambda m: None)
    # 1 + 3 + 3 points on the selection seeds, each running only its own method
    assert fake.calls[:7] == [("defaults", ("ce",), (0, 1))] + [
        (f"kd.tau={t}", ("kd",), (0, 1)) for t in (1.0, 2.0, 4.0)] + [
        (f"lelp.beta={b}", ("lelp",), (0, 1)) for b in (0.5, 1.0, 3.0)]
    # chosen on validation: kd.tau=2 (val peak; test prefers tau=1), lelp.beta=3 (test prefers 0.5)
    assert summary["selection"]["kd"]["point"] == "kd.tau=2.0"
    assert summary["selection"]["lelp"]["point"] == "lelp.beta=3.0"
    assert summary["selection"]["ce"]["point"] == "defaults"
    assert sorted(fake.calls[7:]) == sorted([("defaults", ("ce",), (5, 6, 7)), ("kd.tau=2.0", ("kd",), (5, 6, 7)),
                                             ("lelp.beta=3.0", ("lelp",), (5, 6, 7))])
    assert summary["grid_sizes"] == {"ce": 1, "kd": 3, "lelp": 3}
    # the point summaries hold the selection seeds only
    kd2 = next(p for p in summary["points"] if p["name"] == "kd.tau=2.0")
    assert kd2["summary"]["kd"]["n"] == 2

    report.build_report([tmp_path], tmp_path / "out", select_on="validation")
    md = (tmp_path / "out" / "report.md").read_text()
    rows = {m: next(line for line in md.splitlines() if line.startswith(f"| {m} | ") and "(selection)" not in line
                    and "±" in line) for m in ("ce", "kd", "lelp")}
    for m, ov, val, tests in (("kd", "kd.tau=2.0", 0.8, [0.88 + 0.001 * s for s in (5, 6, 7)]),
                              ("lelp", "lelp.beta=3.0", 0.83, [0.87 + 0.001 * s for s in (5, 6, 7)]),
                              ("ce", "(config settings)", 0.7, [0.85 + 0.001 * s for s in (5, 6, 7)])):
        cells = [c.strip() for c in rows[m].split("|")[1:-1]]
        assert cells[2] == ov and cells[5] == "3"
        np.testing.assert_allclose(float(cells[3]), 100 * (val + 0.00005), atol=0.006)
        mean, std = (float(x) for x in cells[4].split("±"))
        np.testing.assert_allclose([mean, std], [100 * np.mean(tests), 100 * np.std(tests)], atol=0.006)
    assert "| lelp | -1.00 [-1.00, -1.00] (n=3) | below |" in md  # paired on the test seeds: 0.87 vs 0.88
    # rerun: everything done, nothing runs
    fake.calls.clear()
    sweep.run_sweep(cfg, tmp_path, {}, own_grids=own, test_seeds=[5, 6, 7], share_teacher=False, run_fn=fake,
                    log=lambda m: None)
    assert fake.calls == []


def test_selection_refuses_overlapping_or_missing_test_seeds_and_unequal_grids(tmp_path):
    from lelp_jax import report

    cfg = _config(methods=("kd", "lelp"), seeds=(0, 1))
    own = {"kd": {"kd.tau": [1, 2]}, "lelp": {"lelp.beta": [1, 2]}}
    with pytest.raises(ConfigError, match="also selection seeds"):
        sweep.run_sweep(cfg, tmp_path, {}, own_grids=own, test_seeds=[1, 2], run_fn=_ValTestPipeline())
    with pytest.raises(ConfigError, match="equal sizes.*kd: 2 points, lelp: 3 points"):
        sweep.run_sweep(cfg, tmp_path, {}, own_grids={**own, "lelp": {"lelp.beta": [1, 2, 3]}},
                        run_fn=_ValTestPipeline())
    with pytest.raises(ConfigError, match="not among the methods"):
        sweep.run_sweep(cfg, tmp_path, {}, own_grids={**own, "pca": {"lelp.beta": [1, 2]}}, run_fn=_ValTestPipeline())
    assert not (tmp_path / "sweep").exists()  # refused before anything was written
    sweep.run_sweep(cfg, tmp_path, {}, own_grids=own, share_teacher=False, run_fn=_ValTestPipeline(),
                    log=lambda m: None)
    with pytest.raises(ValueError, match="no test seeds"):
        report.build_report([tmp_path], tmp_path / "out", select_on="validation")
    path = tmp_path / "sweep" / "summary.json"
    summary = json.loads(path.read_text())
    path.write_text(json.dumps({**summary, "test_seeds": [1, 9]}))  # a tampered / hand-made summary
    with pytest.raises(ValueError, match=r"test seeds \[1\] were also selection seeds"):
        report.build_report([tmp_path], tmp_path / "out", select_on="validation")
    with pytest.raises(ValueError, match="never test"):
        report.build_report([tmp_path], tmp_path / "out", select_on="test")


def test_default_grids_have_equal_sizes_and_valid_keys():
    cfg = base_config()
    from lelp_jax.methods import method_names

    defaults = grids.default_grids(cfg, method_names())
    sizes = {m: len(grids.grid_points(g)) for m, g in defaults.items() if g}
    assert set(defaults) == set(method_names()) and len(set(sizes.values())) == 1 and defaults["ce"] == {}
    grids.method_grids(list(method_names()), {}, defaults)  # the equal-size check passes
    for m, g in defaults.items():  # every value types and validates
        for ov in grids.grid_points(g):
            grids.point_config(cfg, ov)
    # no method gets a setting twice under two names: KD's student_tau=None means student_tau = tau
    effective = set()
    for ov in grids.grid_points(defaults["kd"]):
        kd = grids.point_config(cfg, ov).kd
        effective.add((kd.tau, kd.alpha, kd.tau if kd.student_tau is None else kd.student_tau))
    assert len(effective) == sizes["kd"]
    c = base_config()
    c.selection.grids.kd = "kd.tau=1,2 kd.alpha=0,x"
    with pytest.raises(ConfigError, match="kd.alpha"):
        grids.point_config(c, grids.grid_points(grids.default_grids(c, ["kd"])["kd"])[1])


def test_set_grid_axis_changes_that_axis_everywhere_and_keeps_sizes():
    cfg = base_config()
    before = {m: cfg.selection.grids[m] for m in cfg.selection.grids}
    changed = grids.set_grid_axis(cfg, "lelp.num_subclasses", (4, 8))
    assert set(changed) == {"lelp", "random", "pca", "kmeans", "agglomerative", "lelp_kmeans"}
    for m in cfg.selection.grids:
        g = grids.default_grids(cfg, [m])[m]
        if m in changed:
            assert g["lelp.num_subclasses"] == ["4", "8"] and list(g) == list(grids.default_grids(
                ml_collections.ConfigDict({"selection": {"grids": before}}), [m])[m])  # same axes, same order
        else:
            assert cfg.selection.grids[m] == before[m]
    from lelp_jax.methods import method_names
    grids.method_grids(list(method_names()), {}, grids.default_grids(cfg, method_names()))  # equal sizes
    with pytest.raises(ConfigError, match="as many values"):
        grids.set_grid_axis(cfg, "lelp.num_subclasses", (2, 4, 8))
    with pytest.raises(ConfigError, match="no grid"):
        grids.set_grid_axis(cfg, "lelp.nope", (1, 2))


def test_tiny_select_on_validation_end_to_end(tmp_path, capsys):
    """`lelp sweep` (per-method grids, selection + test seeds) then `lelp report --select-on validation`, real pipeline."""
    from lelp_jax import cli

    steps = ["--config.smoke=true", "--config.teacher.train.num_steps=6", "--config.train.num_steps=6"] + [
        f"--config.{s}.{k}=3" for s in ("teacher.train", "train") for k in ("eval_every", "checkpoint_every", "log_every")]
    wd = str(tmp_path / "sel")
    assert cli.main(["sweep", "--config", "digits_binary", "--workdir", wd, "--methods", "kd,lelp",
                     "--grid", "kd:kd.tau=1,4", "--grid", "lelp:lelp.beta=0.5,2", "--seeds", "0",
                     "--test-seeds", "1,2", "--quiet", *steps]) == 0
    summary = json.loads((tmp_path / "sel" / "sweep" / "summary.json").read_text())
    assert set(summary["selection"]) == {"kd", "lelp"}
    assert all(s["status"] == "done" for s in summary["selection"].values())
    sel = summary["selection"]  # the protocol's choice (best mean validation of the chosen settings) is exported
    spec = json.loads((tmp_path / "sel" / "student" / "student.json").read_text())
    assert spec["method"] == max(sel, key=lambda m: sel[m]["val_accuracy"]) and spec["run"]["seed"] in (1, 2)
    capsys.readouterr()
    assert cli.main(["report", wd, "--select-on", "validation"]) == 0
    md = capsys.readouterr().out
    assert "Selected on validation" in md and "| method | Δ vs kd (pp) [95 % CI] | vs kd |" in md
    assert re.search(r"^\| lelp \| [+-]\d+\.\d\d \[[+-]\d+\.\d\d, [+-]\d+\.\d\d\] \(n=2\) \|", md, re.M)
    for m in ("kd", "lelp"):
        assert re.search(rf"^\| {m} \| \d+ \| [^|]+ \| \d+\.\d\d \| \d+\.\d\d ± \d+\.\d\d \| 2 \|", md, re.M), m
    assert cli.main(["sweep", "--config", "digits_binary", "--workdir", wd, "--methods", "kd,lelp",
                     "--grid", "kd:kd.tau=1,4", "--grid", "lelp:lelp.beta=0.5,2", "--seeds", "0",
                     "--test-seeds", "0,2", "--quiet", *steps]) == 2  # overlap refused
    assert "also selection seeds" in capsys.readouterr().err


def test_point_folder_of_a_list_value_holds_a_restorable_checkpoint(tmp_path, rng):
    """A point's folder name must be a path Orbax can reopen (tensorstore fails on '[' in a path)."""
    from lelp_jax import train

    folder = tmp_path / grids.point_name({"data.class_one_fine": [0, 1, 4], "lelp.seed": 3}) / "checkpoints"
    x = rng.normal(size=(3, 2)).astype(np.float32)
    ckpt = train.checkpoints.Checkpoints(str(folder))
    ckpt.save(1, {"x": x}, {"note": "point"})
    ckpt.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an unreadable step is a warning + deletion, not a silent pass
        step, state, meta = train.checkpoints.Checkpoints(str(folder)).restore_latest({"x": np.zeros_like(x)})
    assert step == 1 and meta == {"note": "point"}
    np.testing.assert_array_equal(np.asarray(state["x"]), x)

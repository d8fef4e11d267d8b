"""`lelp sweep`: grid parsing, one sub-workdir per point, summary, resume after a kill."""
import json

import numpy as np
import pytest

from lelp_jax import sweep
from lelp_jax.config import ConfigError, base_config


def _config(methods=("kd", "lelp"), seeds=(0, 1)):
    c = base_config()
    c.methods = methods
    c.seeds = seeds
    c.lock()
    return c


def test_parse_grid_and_points():
    grid = sweep.parse_grid(["lelp.num_subclasses=1,2,4", "--config.lelp.beta=0.5, 1", "student.model_kwargs.hidden=[16],[8,8]"])
    assert grid == {"lelp.num_subclasses": ["1", "2", "4"], "lelp.beta": ["0.5", "1"],
                    "student.model_kwargs.hidden": ["[16]", "[8,8]"]}
    pts = sweep.grid_points(grid)
    assert len(pts) == 12 and pts[0] == {"lelp.num_subclasses": "1", "lelp.beta": "0.5", "student.model_kwargs.hidden": "[16]"}
    assert sweep.point_name({"lelp.num_subclasses": 4, "lelp.beta": 0.5}) == "lelp.num_subclasses=4,lelp.beta=0.5"
    for bad, msg in ((["lelp.beta"], "no values"), (["lelp.beta=1", "lelp.beta=2"], "twice"), (["lelp.beta=1,1"], "repeats")):
        with pytest.raises(ConfigError, match=msg):
            sweep.parse_grid(bad)


def test_point_config_types_values_and_rejects_bad_keys():
    cfg = sweep.point_config(_config(), {"lelp.num_subclasses": "8", "lelp.beta": "2", "student.model_kwargs.hidden": "[8,8]"}, seeds=[3])
    assert cfg.lelp.num_subclasses == 8 and cfg.lelp.beta == 2.0 and isinstance(cfg.lelp.beta, float)
    assert tuple(cfg.student.model_kwargs.hidden) == (8, 8) and tuple(cfg.seeds) == (3,)
    with pytest.raises(ConfigError, match="did you mean 'lelp.beta'"):
        sweep.point_config(_config(), {"lelp.betta": "2"})
    with pytest.raises(ConfigError, match="beta must be > 0"):
        sweep.point_config(_config(), {"lelp.beta": "-1"})


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

    grid = sweep.parse_grid(["lelp.num_subclasses=1,3"])
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

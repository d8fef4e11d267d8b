"""The `lelp` command: argument handling and user errors that must stop before touching the workdir."""
import json
import os

import numpy as np
import pytest

from lelp_jax import cli


@pytest.fixture(autouse=True)
def no_compilation_cache(monkeypatch):
    """Commands that get past the checks must not point JAX's cache at the home folder."""
    monkeypatch.setenv("LELP_JAX_CACHE_DIR", "off")


def snapshot(root):
    """Every path under root with its size and mtime (ns): proves a command touched nothing."""
    if not os.path.exists(root):
        return None
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.stat(p)
            out[os.path.relpath(p, root)] = (st.st_size, st.st_mtime_ns)
    return out


def run_cli(argv, capsys):
    rc = cli.main(argv)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


@pytest.fixture
def used_workdir(tmp_path):
    """A workdir made by digits_binary with 30 student steps (only config.json + a marker file)."""
    from lelp_jax import pipeline
    from lelp_jax.config import load_config

    wd = tmp_path / "wd"
    config = load_config("configs/digits_binary.py", ["--config.train.num_steps=30"])
    pipeline.init_workdir(config, wd)
    (wd / "teacher").mkdir()
    (wd / "teacher" / "marker.txt").write_text("keep me")
    return wd


def test_split_overrides_both_forms():
    rest, ov = cli.split_overrides(
        ["--config", "c.py", "--config.train.num_steps=5", "--workdir", "w", "--config.lelp.beta", "2.5"]
    )
    assert rest == ["--config", "c.py", "--workdir", "w"]
    assert ov == ["--config.train.num_steps=5", "--config.lelp.beta=2.5"]
    rest, ov = cli.split_overrides(["--config.smoke", "--workdir", "w", "--config.lelp.rotate"])
    assert rest == ["--workdir", "w"] and ov == ["--config.smoke=true", "--config.lelp.rotate=true"]


def test_bare_flag_on_a_non_bool_key_is_a_clear_error(tmp_path, capsys):
    rc, _, err = run_cli(["run", "--config", "configs/digits_binary.py", "--workdir", str(tmp_path / "w"),
                          "--config.train.num_steps"], capsys)
    assert rc == 2 and "'train.num_steps' is an int; got 'true'" in err


def test_config_command_prints_typed_overrides(capsys):
    rc, out, _ = run_cli(
        ["config", "--config", "configs/digits_binary.py", "--config.train.num_steps=7", "--seeds", "3,4",
         "--methods", "ce,lelp", "--config.lelp.rotate=false"],
        capsys,
    )
    assert rc == 0
    printed = json.loads(out)
    assert printed["train"]["num_steps"] == 7 and printed["lelp"]["rotate"] is False
    assert printed["seeds"] == [3, 4] and printed["methods"] == ["ce", "lelp"]


def test_typo_key_stops_before_workdir_exists(tmp_path, capsys):
    wd = tmp_path / "new"
    rc, _, err = run_cli(
        ["run", "--config", "configs/digits_binary.py", "--workdir", str(wd), "--config.train.num_step=5"], capsys
    )
    assert rc == 2
    assert "unknown config key 'train.num_step'" in err and "did you mean 'train.num_steps'" in err
    assert "Traceback" not in err
    assert not wd.exists()


def test_typo_key_leaves_existing_workdir_untouched(used_workdir, capsys):
    before = snapshot(used_workdir)
    rc, _, err = run_cli(
        ["run", "--config", "configs/digits_binary.py", "--workdir", str(used_workdir), "--config.lelp.betta=3"],
        capsys,
    )
    assert rc == 2 and "did you mean 'lelp.beta'" in err
    assert snapshot(used_workdir) == before


def test_missing_teacher_checkpoint_stops_and_touches_nothing(tmp_path, capsys):
    fresh = tmp_path / "fresh"
    missing = tmp_path / "no_such_teacher"
    rc, _, err = run_cli(
        ["teacher", "--config", "configs/digits_binary.py", "--workdir", str(fresh),
         f"--config.teacher.checkpoint={missing}"],
        capsys,
    )
    assert rc == 2
    assert "teacher.checkpoint" in err and "does not exist" in err and "Traceback" not in err
    assert not fresh.exists()

    # A folder without checkpoints is refused too, and an existing workdir is left alone.
    empty = tmp_path / "empty_teacher"
    empty.mkdir()
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine")
    before = snapshot(existing)
    rc, _, err = run_cli(
        ["run", "--config", "configs/digits_binary.py", "--workdir", str(existing),
         f"--config.teacher.checkpoint={empty}"],
        capsys,
    )
    assert rc == 2 and "holds no checkpoints/" in err
    assert snapshot(existing) == before


def test_workdir_of_another_config_is_refused(used_workdir, capsys):
    before = snapshot(used_workdir)
    rc, _, err = run_cli(
        ["run", "--config", "configs/digits_binary.py", "--workdir", str(used_workdir),
         "--config.train.num_steps=31"],
        capsys,
    )
    assert rc == 2
    assert f"workdir {str(used_workdir)!r} was made by config 'digits_binary'" in err
    assert "train.num_steps: 30 -> 31" in err
    assert "use a new --workdir or --force" in err
    assert snapshot(used_workdir) == before
    stored = json.loads((used_workdir / "config.json").read_text())
    assert stored["train"]["num_steps"] == 30


def test_unknown_command_and_method_are_user_errors(tmp_path, capsys):
    rc, _, err = run_cli(["rn"], capsys)
    assert rc == 2 and "did you mean 'run'" in err
    rc, _, err = run_cli(
        ["run", "--config", "configs/digits_binary.py", "--workdir", str(tmp_path / "w"), "--methods", "ce,lepl"],
        capsys,
    )
    assert rc == 2 and "unknown method 'lepl'" in err and "did you mean 'lelp'" in err
    assert not (tmp_path / "w").exists()


def test_missing_required_argument_exits_2(capsys):
    rc, _, err = run_cli(["run", "--config", "configs/digits_binary.py"], capsys)
    assert rc == 2 and "--workdir" in err


def test_every_subcommand_is_registered():
    for name in ("run", "teacher", "fit", "distill", "eval", "report", "sweep", "config"):
        assert name in cli.COMMANDS


def test_local_data_without_files_and_unavailable_method_stop_early(tmp_path, capsys, monkeypatch):
    wd = tmp_path / "w"
    rc, _, err = run_cli(["run", "--config", "configs/text_csv.py", "--workdir", str(wd)], capsys)
    assert rc == 2 and "needs data.files.train" in err and not wd.exists()
    rc, _, err = run_cli(
        ["run", "--config", "configs/text_csv.py", "--workdir", str(wd),
         f"--config.data.files.train={tmp_path / 'missing.csv'}", f"--config.data.files.test={tmp_path / 'x.csv'}"],
        capsys,
    )
    assert rc == 2 and "missing.csv' does not exist" in err and not wd.exists()

    from lelp_jax import methods

    monkeypatch.delitem(methods.METHODS, "kd")
    rc, _, err = run_cli(["run", "--config", "configs/digits_binary.py", "--workdir", str(wd), "--methods", "ce,kd"],
                         capsys)
    assert rc == 2 and "unknown method 'kd'" in err and not wd.exists()  # checked against the registry


def test_text_csv_with_string_labels_and_no_class_names_runs(tmp_path, capsys):
    """configs/text_csv.py on CSV files labelled negative/positive, data.class_names unset: the labels
    map to ids in sorted order of the training file (printed once) and the whole run finishes.
    The MiniLM teacher is swapped for a one-layer transformer to keep the test seconds-long."""
    data = os.path.join(os.path.dirname(__file__), "data")
    wd = tmp_path / "w"
    rc, out, err = run_cli(
        ["run", "--config", "configs/text_csv.py", "--workdir", str(wd), "--config.smoke=true", "--methods", "lelp",
         f"--config.data.files.train={data}/reviews_train.csv", f"--config.data.files.test={data}/reviews_test.csv",
         "--config.teacher.model=text_transformer", "--config.teacher.pretrained=none",
         "--config.teacher.model_kwargs.d_model=16", "--config.teacher.model_kwargs.num_layers=1",
         "--config.teacher.model_kwargs.num_heads=2", "--config.teacher.train.num_steps=4",
         "--config.train.num_steps=4", "--config.lelp.num_subclasses=2"], capsys)
    assert rc == 0, err
    assert out.count("classes: negative=0, positive=1\n") == 1
    results = json.loads((wd / "results.json").read_text())
    assert [r["method"] for r in results["runs"]] == ["lelp"] and results["runs"][0]["steps"] == 4


def test_run_ends_with_paired_differences_to_kd_and_ce(tmp_path, rng):
    """`lelp run`'s last lines: per method, mean [95 % t-interval] of the per-seed difference to kd and ce
    (float64 NumPy reference, t_{0.975, 4} = 2.776445); runs of other methods or seeds in the workdir do not count."""
    from lelp_jax.config import load_config

    config = load_config("configs/digits_binary.py", methods="ce,kd,lelp_kmeans", seeds="1,2,3,4,5")
    acc = {m: rng.uniform(0.85, 0.97, 5) for m in ("ce", "kd", "lelp_kmeans")}
    runs = [{"method": m, "seed": s + 1, "test_accuracy_best_val": float(a[s])} for m, a in acc.items() for s in range(5)]
    runs += [{"method": "lelp", "seed": 1, "test_accuracy_best_val": 0.5},            # not in config.methods
             {"method": "kd", "seed": 9, "test_accuracy_best_val": 0.1}]              # not in config.seeds
    (tmp_path / "results.json").write_text(json.dumps({"runs": runs}))
    lines = cli.paired_lines(config, tmp_path)
    assert lines[0].startswith("[paired]") and "seeds [1, 2, 3, 4, 5]" in lines[0]
    rows = {line.split(" | ")[0].strip("| "): line for line in lines[3:]}
    assert list(rows) == ["ce", "kd", "lelp_kmeans"]
    for ref, col in (("kd", 1), ("ce", 3)):
        d = 100 * (acc["lelp_kmeans"] - acc[ref])
        half = 2.776445 * d.std(ddof=1) / np.sqrt(5)
        cell = rows["lelp_kmeans"].split(" | ")[col]
        assert cell == f"{d.mean():+.2f} [{d.mean() - half:+.2f}, {d.mean() + half:+.2f}] (n=5)", cell
    one_seed = load_config("configs/digits_binary.py", methods="ce,kd,lelp_kmeans", seeds="1")
    assert cli.paired_lines(one_seed, tmp_path) == []
def test_a_diverged_run_exits_non_zero_is_recorded_failed_and_averaged_nowhere(tmp_path, capsys):
    """#21 item 2: learning_rate=1e30 used to end rc 0 with '49.7 %' averaged into results.json."""
    wd = tmp_path / "w"
    rc, out, err = run_cli(["run", "--config", "configs/digits_binary.py", "--workdir", str(wd),
                            "--config.smoke=true", "--methods", "ce,lelp", "--seeds", "0,1",
                            "--config.train.learning_rate=1e30"], capsys)
    assert rc != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lelp: error: 4 of 4 runs failed"), err
    assert "ce seed 0 diverged at step" in err and "learning rate is likely too high" in err
    assert out.count("FAILED: ") == 4
    results = json.loads((wd / "results.json").read_text())
    assert [(r["method"], r["seed"], r["status"]) for r in results["runs"]] == [
        ("ce", 0, "failed"), ("ce", 1, "failed"), ("lelp", 0, "failed"), ("lelp", 1, "failed")]
    assert not any("test_accuracy_best_val" in r for r in results["runs"])
    rc, out, err = run_cli(["report", str(wd)], capsys)
    assert rc == 0, err
    table = (wd / "report" / "report.md").read_text()
    assert "| ce (failed: seeds [0, 1], diverged; not averaged) | n/a | n/a |" in table, table
    rc, _, err = run_cli(["run", "--config", "configs/digits_binary.py", "--workdir", str(wd),
                          "--config.smoke=true", "--methods", "ce,lelp", "--seeds", "0,1",
                          "--config.train.learning_rate=1e30"], capsys)
    assert rc != 0 and "4 of 4 runs failed" in err  # a rerun skips the failed runs and fails again

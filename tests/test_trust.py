"""No silent wrong numbers, no lost work (#21): the workdir lock, preflight before any work, clean
OS/input errors, and the other guarantees docs/LAUNCHING.md lists under "What is guaranteed"."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lelp_jax import cli
from lelp_jax.runtime import lock

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def no_compilation_cache(monkeypatch):
    monkeypatch.setenv("LELP_JAX_CACHE_DIR", "off")


def run_cli(argv, capsys):
    rc = cli.main(argv)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def listing(root):
    """Every path under ``root`` with its size and mtime (ns), less the lock file."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            if name != lock.LOCK_NAME:
                st = os.stat(p)
                out[os.path.relpath(p, root)] = (st.st_size, st.st_mtime_ns)
    return out


# ----------------------------------------------------------------------------- the workdir lock


@pytest.fixture
def held_elsewhere(tmp_path):
    """A second process holding the lock of ``tmp_path/wd`` as ``lelp run``; yields (workdir, process)."""
    wd = tmp_path / "wd"
    code = textwrap.dedent(f"""
        import sys, time
        from lelp_jax.runtime import lock
        with lock.hold({str(wd)!r}, "lelp run"):
            print("held", flush=True)
            time.sleep(120)
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "held"
        yield wd, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_second_command_on_a_locked_workdir_stops_at_once(held_elsewhere, capsys):
    wd, proc = held_elsewhere
    before = listing(wd)
    t0 = time.perf_counter()
    rc, _, err = run_cli(["run", "--config", "configs/digits_binary.py", "--workdir", str(wd),
                          "--config.smoke=true", "--methods", "ce"], capsys)
    assert rc == 2 and time.perf_counter() - t0 < 60
    line = err.strip()
    assert "\n" not in line and line.startswith("lelp: error: ")
    assert f"workdir {str(wd)!r} is in use by pid {proc.pid} (lelp run, started " in line
    assert "use another --workdir" in line
    assert listing(wd) == before  # no config.json, no checkpoints, no metrics: nothing was written

    # Read-only commands do not need the lock.
    rc, out, _ = run_cli(["config", "--config", "configs/digits_binary.py"], capsys)
    assert rc == 0 and json.loads(out)["name"] == "digits_binary"

    # The kernel releases the lock when its holder dies, however it dies.
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with lock.hold(wd, "test"):
        assert lock.holder(wd)["pid"] == os.getpid()


def test_lock_is_reentrant_within_a_process_and_exclusive_across(tmp_path):
    wd = tmp_path / "w"
    with lock.hold(wd, "outer"):
        with lock.hold(wd, "inner"):
            assert lock.holder(wd)["command"] == "outer"
        # still held after the inner block: another process is refused
        code = (f"from lelp_jax.runtime import lock\ntry:\n    with lock.hold({str(wd)!r}): pass\n"
                "except Exception as e: print(type(e).__name__, e)\n")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout
        assert out.startswith("WorkdirError") and f"pid {os.getpid()} (outer, started" in out
    with lock.hold(wd):  # released: the same process takes it afresh
        assert lock.holder(wd)["pid"] == os.getpid()


# ----------------------------------------------------------------------------- every check before any work

DIGITS = ["--config", "configs/digits_binary.py", "--config.smoke=true"]


@pytest.mark.parametrize("extra, expected", [
    (["--config.lelp.num_subclasses=300"], "lelp.num_subclasses=300 exceeds the teacher embedding's D - C = 256 - 2"),
    (["--methods", "pca", "--config.lelp.num_subclasses=257"], "exceeds the teacher embedding's D = 256"),
    (["--methods", "lelp", "--config.lelp.num_subclasses=200"], "train examples, fewer than lelp.num_subclasses + 1"),
    (["--config.train.num_epochs=-1"], "train.num_epochs must be > 0"),
    (["--config.teacher.train.num_epochs=0"], "teacher.train.num_epochs must be > 0"),
    (["--config.data.eval_batch_size=0"], "data.eval_batch_size must be >= 1"),
    (["--config.train.eval_batch_size=-4"], "train.eval_batch_size must be >= 1 (or 0"),
    (["--seeds", str(2**32)], f"seeds[0] must be an int in [0, 2**31), got {2**32}"),
    (["--seeds", f"0,{2**64}"], f"seeds[1] must be an int in [0, 2**31), got {2**64}"),
    ([f"--config.teacher.seed={2**63}"], "teacher.seed must be an int in [0, 2**31)"),
    ([f"--config.lelp.seed={2**31}"], "lelp.seed must be an int in [0, 2**31)"),
])
def test_value_errors_stop_before_the_teacher_and_write_nothing(tmp_path, capsys, extra, expected):
    """Each is refused before any work (the workdir is not even made), so the corrected command is not
    refused by a config.json of the wrong one."""
    wd = tmp_path / "wd"
    rc, _, err = run_cli(["run", *DIGITS, "--workdir", str(wd), *extra], capsys)
    assert rc == 2, err
    assert err.startswith("lelp: error: ") and err.count("\n") == 1 and expected in err, err
    assert not wd.exists()


def _csv(path, labels):
    path.write_text("text,label\n" + "".join(f"review number {i},{y}\n" for i, y in enumerate(labels)))
    return path


@pytest.mark.parametrize("declared", [[], ["--config.data.num_classes=2"]])
def test_one_class_data_is_refused_whatever_the_label_type(tmp_path, capsys, declared):
    """An all-``1`` integer label column was taken as binary (C = 2 assumed, class 0 empty) and ce scored 100 %."""
    train = _csv(tmp_path / "train.csv", [1] * 40)
    wd = tmp_path / "wd"
    rc, _, err = run_cli(["run", "--config", "configs/text_csv.py", "--workdir", str(wd), "--methods", "ce,kd",
                          f"--config.data.files.train={train}", f"--config.data.files.test={train}", *declared],
                         capsys)
    assert rc == 2 and err.count("\n") == 1, err
    if declared:  # the classes are declared, so the loader takes the file: preflight counts the classes
        assert "the train split has one class (class 1 only, 36 examples, 2 classes declared)" in err, err
    else:
        assert "all 40 examples have the label '1' (1 class)" in err and "train.csv" in err, err
    assert not wd.exists()


def test_a_data_error_in_the_test_file_stops_before_anything_is_written(tmp_path, capsys):
    train = _csv(tmp_path / "train.csv", [0, 1] * 20)
    test = _csv(tmp_path / "test.csv", [0, 1, 7])
    wd = tmp_path / "wd"
    rc, _, err = run_cli(["run", "--config", "configs/text_csv.py", "--workdir", str(wd), "--methods", "ce",
                          f"--config.data.files.train={train}", f"--config.data.files.test={test}"], capsys)
    assert rc == 2 and "test.csv" in err and err.count("\n") == 1, err
    assert not wd.exists()


# ----------------------------------------------------------------------------- clean OS and input errors


@pytest.mark.parametrize("code, fix", [
    (28, "the disk is full: free space"),  # ENOSPC
    (30, "the filesystem is read-only: pass a --workdir on a writable disk"),  # EROFS
    (13, "permission denied: make the folder writable"),  # EACCES
])
def test_disk_errors_are_one_line_naming_the_file_and_the_fix(tmp_path, capsys, monkeypatch, code, fix):
    """The OS error surfaces from the first write (config.json), bare or wrapped the way Orbax's tensorstore
    wraps it (a ValueError carrying only the text)."""
    from lelp_jax.core import atomic

    def failing(path, obj):
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr(atomic, "write_json", failing)
    wd = tmp_path / "wd"
    rc, _, err = run_cli(["run", *DIGITS, "--workdir", str(wd), "--methods", "ce"], capsys)
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"lelp: error: {os.strerror(code)} ({wd / 'config.json'}); {fix}"), err

    def wrapped(path, obj):
        raise ValueError(f"Error writing local file \"{path}\": [OS error: {os.strerror(code)}]")

    monkeypatch.setattr(atomic, "write_json", wrapped)
    rc, _, err = run_cli(["run", *DIGITS, "--workdir", str(wd), "--methods", "ce"], capsys)
    assert rc == 2 and err.count("\n") == 1 and f"(under workdir {wd}); {fix}" in err, err


def test_csv_fields_over_the_default_limit_load(tmp_path):
    from lelp_jax.data.local import read_rows

    path = tmp_path / "long.csv"
    long_text = "word " * 60_000  # 300,000 characters: Python's csv refuses fields over 131,072 by default
    path.write_text(f'text,label\n"{long_text}",1\nshort,0\n')
    rows = read_rows(str(path))
    assert [len(r["text"]) for r in rows] == [len(long_text), 5] and [r["label"] for r in rows] == ["1", "0"]
    import csv

    assert csv.field_size_limit() == 131072  # the process-wide limit is restored


def test_truncated_json_names_the_file_and_the_fix(tmp_path, capsys):
    from lelp_jax.pipeline.workdir import read_json
    from lelp_jax.runtime.errors import ArtifactError

    path = tmp_path / "result.json"
    path.write_text('{"method": "ce", "test_acc')
    with pytest.raises(ArtifactError, match=f"{path} is truncated or corrupt .*rerun the same command"):
        read_json(path)

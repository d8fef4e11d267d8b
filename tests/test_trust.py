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

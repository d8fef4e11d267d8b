"""Kill -9 during training, restart, same result; a corrupt latest checkpoint falls back to the previous."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from _multihost_worker import run_train

WORKER = os.path.join(os.path.dirname(__file__), "_multihost_worker.py")
STEPS, EVERY = 30, 5


def _same(a: dict, b: dict) -> None:
    drop = ("wall_time_s", "resumed_from_step")
    assert {k: v for k, v in a.items() if k not in drop} == {k: v for k, v in b.items() if k not in drop}


def _committed_steps(wd: str) -> list[int]:
    d = os.path.join(wd, "checkpoints")
    return sorted(int(x) for x in os.listdir(d) if x.isdigit()) if os.path.isdir(d) else []


def _start(wd: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, WORKER, "train", wd, str(STEPS), str(EVERY)], env=dict(os.environ),
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run in this process: (workdir, record)."""
    wd = str(tmp_path_factory.mktemp("reference") / "run")
    return wd, run_train(wd, num_steps=STEPS, checkpoint_every=EVERY)


def test_sigkill_then_restart_gives_the_uninterrupted_result(tmp_path, reference):
    wd = str(tmp_path / "killed")
    proc = _start(wd)
    try:
        deadline = time.time() + 120
        while not _committed_steps(wd):
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.time() < deadline, "no checkpoint within 120 s"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        _kill(proc)
    assert proc.returncode == -signal.SIGKILL
    assert not os.path.exists(os.path.join(wd, "result.json")), "the run ended before it was killed"
    killed_at = max(_committed_steps(wd))
    assert killed_at < STEPS
    proc = _start(wd)  # restart with the same call: resumes from the newest checkpoint
    try:
        _, err = proc.communicate(timeout=180)
    finally:
        _kill(proc)
    assert proc.returncode == 0, err.decode()[-3000:]
    with open(os.path.join(wd, "result.json")) as f:
        resumed = json.load(f)
    assert reference[1]["resumed_from_step"] is None
    assert resumed["resumed_from_step"] == killed_at  # it continued from the checkpoint, not from step 0
    _same(resumed, json.loads(json.dumps(reference[1])))
    with open(os.path.join(wd, "metrics.jsonl")) as f:
        evals = [json.loads(x)["step"] for x in f if "val_accuracy" in x]
    assert evals == list(range(EVERY, STEPS + 1, EVERY))  # no line lost or repeated across the kill


def test_corrupt_latest_checkpoint_falls_back_to_previous(tmp_path, reference):
    wd = str(tmp_path / "run")
    shutil.copytree(reference[0], wd)
    last, previous = STEPS, STEPS - EVERY
    assert _committed_steps(wd) == [previous, last]
    latest = os.path.join(wd, "checkpoints", str(last), "state")
    corrupted = 0
    for root, _, files in os.walk(latest):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"garbage")
            corrupted += 1
    assert corrupted  # the latest checkpoint really was damaged
    with open(os.path.join(wd, "metrics.jsonl"), "a") as f:
        f.write('{"step": 3, "train_lo')  # a line cut by a kill mid-write
    with pytest.warns(RuntimeWarning, match=f"step {last}\\) differs from its manifest .*kept, not deleted"):
        again = run_train(wd, num_steps=STEPS, checkpoint_every=EVERY)
    assert again["resumed_from_step"] == previous  # the fallback checkpoint was restored
    assert os.path.isdir(os.path.join(wd, "quarantine", "checkpoints", str(last), "state"))  # kept for inspection
    _same(again, reference[1])
    assert _committed_steps(wd) == [previous, last]
    with open(os.path.join(wd, "metrics.jsonl")) as f:
        evals = [json.loads(x)["step"] for x in f if "val_accuracy" in x]
    assert evals == list(range(EVERY, STEPS + 1, EVERY))


def _largest_file(folder: str) -> str:
    files = [os.path.join(r, n) for r, _, names in os.walk(folder) for n in names]
    return max(files, key=os.path.getsize)


def test_flipped_bytes_in_a_checkpoint_are_caught_by_its_manifest(tmp_path, reference):
    """Orbax restores a checkpoint with 64 flipped bytes in its array data without complaint (the run then
    trains on garbage): its step manifest catches them, the step is quarantined and the run falls back."""
    wd = str(tmp_path / "run")
    shutil.copytree(reference[0], wd)
    last, previous = STEPS, STEPS - EVERY
    target = _largest_file(os.path.join(wd, "checkpoints", str(last), "state"))
    with open(target, "r+b") as f:
        f.seek(os.path.getsize(target) // 3)
        chunk = f.read(64)
        f.seek(os.path.getsize(target) // 3)
        f.write(bytes(b ^ 0xFF for b in chunk))
    with pytest.warns(RuntimeWarning, match=f"step {last}\\) differs from its manifest"):
        again = run_train(wd, num_steps=STEPS, checkpoint_every=EVERY)
    assert again["resumed_from_step"] == previous
    _same(again, reference[1])
    kept = os.path.join(wd, "quarantine", "checkpoints", str(last), os.path.relpath(target, os.path.join(
        wd, "checkpoints", str(last))))
    assert os.path.isfile(kept)  # the damaged file is kept, not deleted


def test_unreadable_checkpoint_without_manifest_is_quarantined_not_deleted(tmp_path, reference):
    """A step from before manifests (none recorded) that Orbax cannot read falls back too, and is kept."""
    wd = str(tmp_path / "run")
    shutil.copytree(reference[0], wd)
    last = STEPS
    step_dir = os.path.join(wd, "checkpoints", str(last))
    os.remove(os.path.join(step_dir, "lelp_manifest.json"))
    with open(os.path.join(step_dir, "meta", "metadata"), "w") as f:
        f.write('{"trunc')
    with pytest.warns(RuntimeWarning, match=f"step {last}\\) is unreadable"):
        again = run_train(wd, num_steps=STEPS, checkpoint_every=EVERY)
    assert again["resumed_from_step"] == STEPS - EVERY
    _same(again, reference[1])
    assert os.path.isdir(os.path.join(wd, "quarantine", "checkpoints", str(last), "meta"))

"""Progress lines for log files (fake clock), and a `lelp run` log free of absl/tfds chatter."""
import os
import subprocess
import sys

import numpy as np

from lelp_jax.runtime.progress import Progress, format_duration


def _drive(progress, clock, steps, seconds_per_step, examples_per_step):
    """Run ``steps`` updates; return the clock time of every written line."""
    times = []
    for step in range(progress._step + 1, progress._step + steps + 1):
        clock[0] += seconds_per_step(step)
        n = len(progress.lines)
        progress.update(step, examples_per_step)
        if len(progress.lines) > n:
            times.append(clock[0])
    return times


def _progress(total, clock, **kw):
    lines = []
    p = Progress(total, desc="teacher", bar=False, clock=lambda: clock[0], write=lines.append, heartbeat=False, **kw)
    p.lines = lines
    return p


def test_a_line_at_least_every_30_s_with_step_rate_and_eta(rng):
    clock = [100.0]
    p = _progress(200, clock)
    durations = rng.uniform(0.5, 9.0, size=201)  # fresh, uneven step times (seconds)
    times = _drive(p, clock, 200, lambda s: durations[s], 32)
    gaps = np.diff([100.0] + times)
    assert len(times) >= int((clock[0] - 100.0) // 39)  # the loop ran ~1000 s: dozens of lines
    assert gaps.max() < 30.0 + 9.0 and gaps.min() >= 30.0  # every 30 s (+ at most one step), never more often
    # the first line, by hand: written after the step that first reaches 30 s
    first = int(np.argmax(np.cumsum(durations[1:]) >= 30.0)) + 1
    elapsed = float(np.sum(durations[1:first + 1]))
    eta = format_duration((200 - first) * elapsed / first)
    assert p.lines[0] == (f"teacher: step {first}/200 ({100 * first / 200:.0f}%), "
                          f"{32 * first / elapsed:.0f} examples/s, ETA {eta}")


def test_resumed_progress_counts_from_the_restored_step():
    clock = [0.0]
    p = _progress(100, clock, initial=40)
    _drive(p, clock, 10, lambda s: 3.0, 64)  # 10 steps of 3 s: one line at 30 s
    assert p.lines == ["teacher: step 50/100 (50%), 21 examples/s, ETA 2m30s"]  # 50 left at 3 s each


def test_a_long_first_step_still_gets_lines():
    """While one step runs for minutes (compilation), ``tick`` (the heartbeat thread's call) writes
    a line every 30 s; after ``close`` it writes nothing."""
    clock = [0.0]
    p = _progress(30, clock)
    for t in range(1, 95):  # 94 s inside the first step, ticking each second
        clock[0] = float(t)
        p.tick()
    assert p.lines == ["teacher: step 0/30 (0%), 0 examples/s, ETA ?"] * 3  # at 30, 60 and 90 s
    p.update(1, 32)
    assert len(p.lines) == 3  # 4 s since the last line
    clock[0] = 200.0
    p.close()
    p.tick()
    assert len(p.lines) == 3


def test_format_duration():
    assert [format_duration(x) for x in (9, 75, 3725)] == ["9s", "1m15s", "1h02m"]


def test_lelp_run_log_file_has_no_absl_or_tfds_lines(tmp_path):
    """A smoke `lelp run` with its output in a file, the dataset prepared fresh (tfds's preparation
    would print "Downloading and preparing dataset ..." and absl warnings)."""
    log = tmp_path / "run.log"
    env = {**os.environ, "LELP_DATA_DIR": str(tmp_path / "data"), "LELP_JAX_CACHE_DIR": "off"}
    with open(log, "w") as f:
        rc = subprocess.call(
            [sys.executable, "-m", "lelp_jax.cli", "run", "--config", "configs/digits_binary.py",
             "--workdir", str(tmp_path / "wd"), "--config.smoke=true", "--methods", "ce",
             "--config.teacher.train.num_steps=4", "--config.train.num_steps=4"],
            stdout=f, stderr=subprocess.STDOUT, env=env, cwd=os.path.dirname(os.path.dirname(__file__)))
    text = log.read_text()
    assert rc == 0, text[-3000:]
    assert "[run] all done" in text and os.path.isdir(tmp_path / "data" / "digits_binary")
    for chatter in ("absl", "Using custom data configuration", "Downloading and preparing", "Generating splits",
                    "dataset_info.json"):
        assert chatter not in text, text


def test_a_phase_replaces_the_stalled_rate_and_stays_out_of_the_eta():
    """#22 item 6: compiling / evaluating is named, and the ETA extrapolates stepping time only."""
    clock = [0.0]
    p = _progress(100, clock)
    _drive(p, clock, 10, lambda s: 1.0, 64)  # 10 steps of 1 s
    with p.phase("compiling the train step (bucket 64)"):
        clock[0] += 45.0
        p.tick()
    assert p.lines[-1] == "teacher: compiling the train step (bucket 64) for 45s, at step 10/100 (10%), ETA 1m30s"
    _drive(p, clock, 30, lambda s: 1.0, 64)  # the next line: 30 s of stepping after the phase
    assert p.lines[-1] == "teacher: step 40/100 (40%), 64 examples/s, ETA 1m00s"

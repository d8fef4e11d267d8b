"""Two local processes x 2 CPU devices (a pod's topology) agree with a single-process run.

Each process: jax.distributed.initialize on 127.0.0.1, 4 kd train steps with an
online teacher on global batches built from its own rows, streaming teacher
moments, a teacher-output cache, then a short train_and_evaluate with Orbax checkpoints written by both
processes into one directory. See /work/shared/MULTIHOST.md.
"""
import os
import signal
import socket
import subprocess
import sys

import numpy as np
from _multihost_worker import multihost_job, run_train

WORKER = os.path.join(os.path.dirname(__file__), "_multihost_worker.py")
NPROC = 2
TIMEOUT_S = 240


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_single_process(tmp_path):
    port = _free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    procs = [subprocess.Popen([sys.executable, WORKER, "multihost", str(tmp_path), str(i), str(NPROC), str(port)],
                              env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for i in range(NPROC)]
    logs = []
    try:
        for p in procs:  # a hung collective would wait forever: hard timeout, then kill the groups
            logs.append(p.communicate(timeout=TIMEOUT_S)[0].decode()[-3000:])
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log
    got = [dict(np.load(tmp_path / f"result_{i}.npz")) for i in range(NPROC)]
    assert got[0].keys() == got[1].keys()
    for k in got[0]:  # every process holds the same replicated values, bit for bit
        np.testing.assert_array_equal(got[0][k], got[1][k], err_msg=k)

    ref = multihost_job(0, 1)  # this process alone: 8 devices, the same global batches
    for k, v in ref.items():
        np.testing.assert_allclose(got[0][k], v, rtol=1e-5, atol=1e-6, err_msg=k)
    assert got[0]["moments_count"].sum() == 64

    record = run_train(str(tmp_path / "single"), num_steps=6, checkpoint_every=3)
    # accuracies of params equal to ~1e-7: the same up to (at most) one borderline example
    assert abs(float(got[0]["test_accuracy_last"]) - record["test_accuracy_last"]) <= 1 / 64 + 1e-9
    np.testing.assert_allclose(got[0]["val_accuracy"], [h["val_accuracy"] for h in record["history"]],
                               atol=1 / 64 + 1e-9)
    assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["3", "6"]
    assert (tmp_path / "run" / "result.json").exists()

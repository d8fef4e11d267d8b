"""Device-resident data in the loop changes no arithmetic; several steps per call hold a stated
tolerance; the divergence guard stops a run (or skips its steps) and records it as failed."""
import json
import os
import shutil

import jax
import numpy as np
import pytest
from _multihost_worker import NUM_CLASSES, mlp, small_config, source, synthetic_arrays

from lelp_jax import methods, train
from lelp_jax.data.sources import ArraySource
from lelp_jax.pipeline.teacher import TeacherCache
from lelp_jax.runtime import sharding
from lelp_jax.runtime.errors import ConfigError, DivergenceError

DROP = ("wall_time_s", "resumed_from_step")


def _run(workdir, *, mode="auto", method="ce", cache=None, train_src=None, model=None, seed=0, **train_kw):
    cfg = small_config(**{"num_steps": 20, "checkpoint_every": 10, "eval_every": 5, **train_kw})
    with cfg.unlocked():
        cfg.data.device_resident = mode
    return train.train_and_evaluate(
        model=model or mlp(dropout=0.2, batch_norm=True), method=methods.get_method(method), cfg=cfg,
        train_source=train_src or source(100, 0), val_source=source(40, 1), test_source=source(40, 2),
        mesh=sharding.make_mesh(), workdir=str(workdir), seed=seed, num_classes=NUM_CLASSES, teacher_cache=cache,
        progress=False)


def _params(workdir):
    return jax.tree_util.tree_leaves(train.load_variables(str(workdir), which="last"))


def _cache(n, rng):
    return TeacherCache(embeddings=rng.normal(size=(n, 5)).astype(np.float32),
                        logits=rng.normal(size=(n, NUM_CLASSES)).astype(np.float32))


@pytest.mark.parametrize("method", ["ce", "kd"])
def test_resident_run_is_bit_identical_to_host_run_and_resumes_in_the_other_mode(tmp_path, rng, method):
    seed = int(rng.integers(0, 2**31))
    cache = _cache(100, rng) if method == "kd" else None
    host = _run(tmp_path / "host", mode="off", method=method, cache=cache, seed=seed)
    dev = _run(tmp_path / "dev", mode="on", method=method, cache=cache, seed=seed)
    assert {k: v for k, v in dev.items() if k not in DROP} == {k: v for k, v in host.items() if k not in DROP}
    for a, b in zip(_params(tmp_path / "host"), _params(tmp_path / "dev")):
        np.testing.assert_array_equal(a, b)
    # killed after step 10 on the host, resumed on the device (5 batches of 16 an epoch: crosses epochs)
    shutil.rmtree(tmp_path / "host" / "checkpoints" / "20")
    os.remove(tmp_path / "host" / "result.json")
    again = _run(tmp_path / "host", mode="on", method=method, cache=cache, seed=seed)
    assert again["resumed_from_step"] == 10
    assert {k: v for k, v in again.items() if k not in DROP} == {k: v for k, v in host.items() if k not in DROP}


def test_feed_choice_follows_data_device_resident(tmp_path):
    from lelp_jax.data.iterator import BatchIterator
    from lelp_jax.train.feed import use_resident

    it = BatchIterator(source(100, 0), global_batch_size=16, seed=0)
    assert use_resident("auto", it, None, 1.0) and not use_resident("off", it, None, 1.0)
    assert not use_resident("auto", it, None, 1e-6)  # over the byte budget: stays on the host
    with pytest.raises(ConfigError, match="more than data.device_resident_max_mb=1e-06"):
        use_resident("on", it, None, 1e-6)
    with pytest.raises(ConfigError, match="device_resident must be"):
        use_resident("yes", it, None, 1.0)


@pytest.mark.parametrize("k", [4, 7])
def test_steps_per_call_matches_one_step_per_call_within_float32_rounding(tmp_path, rng, k):
    """k steps per call (a lax.scan) run the same steps on the same batches with the same cadence; the scan's
    body may be fused differently, so values agree to float32 rounding (rtol 1e-5 over 20 Adam steps)."""
    seed = int(rng.integers(0, 2**31))
    one = _run(tmp_path / "one", seed=seed, model=mlp(dropout=0.2))
    many = _run(tmp_path / "many", seed=seed, model=mlp(dropout=0.2), steps_per_call=k)
    assert [h["step"] for h in many["history"]] == [h["step"] for h in one["history"]] == [5, 10, 15, 20]
    np.testing.assert_allclose([h["train_loss"] for h in many["history"]],
                               [h["train_loss"] for h in one["history"]], rtol=1e-5)
    for a, b in zip(_params(tmp_path / "one"), _params(tmp_path / "many")):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert sorted(os.listdir(tmp_path / "many" / "checkpoints")) == ["10", "20"]


def test_a_custom_iterator_keeps_the_host_feed_and_its_results(tmp_path):
    from lelp_jax.data.iterator import BatchIterator

    class Wrapped:  # not a BatchIterator: 'auto' cannot gather its batches on the device
        def __init__(self, src, **kw):
            self.it = BatchIterator(src, **kw)

        def __iter__(self):
            return self

        def __next__(self):
            return next(self.it)

        def get_state(self):
            return self.it.get_state()

        def set_state(self, state):
            self.it.set_state(state)

    cfg = small_config(num_steps=6, checkpoint_every=3, eval_every=3, steps_per_call=3)
    common = dict(model=mlp(), method=methods.get_method("ce"), cfg=cfg, train_source=source(64, 0),
                  val_source=source(32, 1), test_source=source(32, 2), mesh=sharding.make_mesh(), seed=0,
                  num_classes=NUM_CLASSES, progress=False)
    wrapped = train.train_and_evaluate(**common, workdir=str(tmp_path / "w"), make_iterator=Wrapped)
    cfg.data.device_resident = "off"
    host = train.train_and_evaluate(**common, workdir=str(tmp_path / "h"))
    assert {k: v for k, v in wrapped.items() if k not in DROP} == {k: v for k, v in host.items() if k not in DROP}


def _poisoned_source(n, bad_row):
    arrays = synthetic_arrays(n, 0)
    arrays.pop("index")
    arrays["features"][bad_row, 0] = np.nan
    return ArraySource(arrays)


def _steps_with(row, num_steps=20, n=100, batch=16, seed=0):
    """The steps (from 1) whose batch holds split row ``row``."""
    from lelp_jax.data.iterator import BatchIterator

    it = BatchIterator(source(n, 0), global_batch_size=batch, seed=seed)
    return [k + 1 for k in range(num_steps) if row in it.positions(k)[0]]


@pytest.mark.parametrize("mode", ["off", "on"])
def test_a_non_finite_loss_stops_the_run_naming_the_step_and_records_it_failed(tmp_path, mode):
    bad = 37
    with pytest.raises(DivergenceError) as e:
        _run(tmp_path, mode=mode, train_src=_poisoned_source(100, bad), log_every=1)
    step = _steps_with(bad)[0]
    assert f"ce seed 0 diverged at step {step} (loss nan): its batch holds inf/NaN inputs" in str(e.value)
    with open(tmp_path / "result.json") as f:
        rec = json.load(f)
    assert rec["status"] == "failed" and rec["failure"] == str(e.value) and "test_accuracy_best_val" not in rec
    assert train.failed(rec) and train.succeeded([rec]) == []
    # no checkpoint holds non-finite parameters
    assert all(int(d) < step for d in os.listdir(tmp_path / "checkpoints"))


def test_learning_rate_overflow_names_the_learning_rate(tmp_path):
    # Adam's first update moves every weight by ~1e30 (finite); the next forward pass overflows
    with pytest.raises(DivergenceError, match=r"diverged at step 2 .*learning rate is likely too high"):
        _run(tmp_path, learning_rate=1e30, warmup_steps=0, model=mlp())


@pytest.mark.parametrize("mode", ["off", "on"])
def test_skip_step_leaves_the_state_of_a_non_finite_step_unchanged(tmp_path, mode):
    bad = 37
    rec = _run(tmp_path, mode=mode, train_src=_poisoned_source(100, bad), on_nonfinite="skip_step", model=mlp())
    assert rec["status"] == "ok" and rec["skipped_steps"] == len(_steps_with(bad)) > 0
    assert all(np.isfinite(h["train_loss"]) for h in rec["history"])
    assert all(np.all(np.isfinite(p)) for p in _params(tmp_path))

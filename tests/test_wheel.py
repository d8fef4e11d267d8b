"""The built wheel works without the repository: the library, the `lelp` command and its configs.

`.ci/run` builds the wheel (`python -m build`) and passes it as LELP_JAX_BUILT_WHEEL; a
local run without it skips (CI=true makes that a failure). A pure-Python wheel is a zip of
the installed files, so extracting it into an empty folder on PYTHONPATH is an install.
"""
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parent.parent


def test_built_wheel_runs_without_the_repository(tmp_path):
    wheel = os.environ.get("LELP_JAX_BUILT_WHEEL")
    if not wheel:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but LELP_JAX_BUILT_WHEEL is unset: .ci/run builds the wheel with `python -m build`.")
        pytest.skip("LELP_JAX_BUILT_WHEEL unset (.ci/run builds the wheel and sets it)")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        z.extractall(site)
    packages = {p.relative_to(ROOT).as_posix() for p in (ROOT / "lelp_jax").rglob("__init__.py")}
    assert len(packages) >= 11 and packages <= set(names), sorted(packages - set(names))  # every role package
    assert "lelp_jax/config/loading.py" in names and "lelp_jax/_configs/digits_binary.py" in names
    assert not any(n.startswith(("tests/", "configs/")) for n in names)
    work = tmp_path / "elsewhere"  # no configs/ folder, no checkout
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", "import lelp_jax; print(lelp_jax.__file__)"], cwd=work, env=env,
                         capture_output=True, text=True, check=True).stdout
    assert out.strip().startswith(str(site))  # the wheel's copy, not the checkout
    cfg = subprocess.run([sys.executable, "-m", "lelp_jax.cli", "config", "--config", "digits_binary",
                          "--config.seeds=3"], cwd=work, env=env, capture_output=True, text=True)
    assert cfg.returncode == 0, cfg.stderr
    resolved = json.loads(cfg.stdout)
    assert resolved["name"] == "digits_binary" and resolved["seeds"] == [3]

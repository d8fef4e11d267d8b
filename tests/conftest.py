"""Test-wide set-up: 8 emulated CPU devices, float32 defaults, fresh randomness.

XLA_FLAGS must be set before JAX initialises its backends, so it is set here, at
collection time. Single-device code still runs on device 0; sharded tests build
their mesh over all 8.
"""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The CLI's persistent compilation cache stays out of the user's home during tests.
os.environ.setdefault("LELP_JAX_CACHE_DIR", "off")
_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def rng():
    """A NumPy generator with a fresh seed per test; the seed is printed on failure."""
    seed = int(np.random.SeedSequence().entropy % (2**32))
    print(f"rng seed: {seed}")
    return np.random.default_rng(seed)


@pytest.fixture(scope="session", autouse=True)
def _private_data_dir(tmp_path_factory):
    """Prepare datasets in a per-session folder, never in the user's ~/tensorflow_datasets."""
    if "LELP_DATA_DIR" not in os.environ:
        os.environ["LELP_DATA_DIR"] = str(tmp_path_factory.mktemp("tensorflow_datasets"))
    yield

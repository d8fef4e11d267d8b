"""The public core's docstrings: every example in lelp_jax/core (and lelp_jax/__init__, and the student
bundle's loader) runs as written, and every name in ``lelp_jax.__all__`` has one, so a new public function without an example fails here.

Option set: NORMALIZE_WHITESPACE (NumPy's array printing wraps and pads) and ELLIPSIS (``...`` in
expected output, e.g. a traceback's stack).
"""
import doctest
import importlib
import pkgutil

import pytest

import lelp_jax
import lelp_jax.core

OPTIONS = doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS
MODULES = ["lelp_jax", "lelp_jax.core",
           *sorted(f"lelp_jax.core.{m.name}" for m in pkgutil.iter_modules(lelp_jax.core.__path__)),
           "lelp_jax.student.bundle"]  # lelp_jax.load_student (served lazily by lelp_jax.__getattr__)


@pytest.mark.parametrize("name", MODULES)
def test_module_doctests_pass(name):
    report = []
    runner = doctest.DocTestRunner(optionflags=OPTIONS)
    for test in doctest.DocTestFinder().find(importlib.import_module(name)):
        runner.run(test, out=report.append)
    assert runner.failures == 0, "".join(report)


def test_every_public_name_has_a_doctested_example():
    parser = doctest.DocTestParser()
    public = [n for n in lelp_jax.__all__ if n != "__version__"]
    missing = [n for n in public if not parser.get_examples(getattr(lelp_jax, n).__doc__ or "")]
    assert not missing, f"public names without a '>>>' example in their docstring: {missing}"
    outside = [n for n in public if getattr(lelp_jax, n).__module__ not in MODULES]
    assert not outside, f"public names defined outside the doctested modules: {outside}"

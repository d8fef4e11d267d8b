"""Executes the Python API example in README.md so the documentation never rots."""
import pathlib
import re

import numpy as np

API_MD = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_api_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", API_MD.read_text(), flags=re.S)
    assert blocks, "README.md lost its python API example"
    scope = {}
    exec(compile(blocks[0], str(API_MD), "exec"), scope)
    c, s = scope["C"], scope["S"]
    assert scope["targets"].shape == (scope["B"], c * s)
    np.testing.assert_allclose(np.asarray(scope["targets"]).sum(-1), 1.0, atol=1e-5)
    # Zero student logits: q is uniform over C*S, so the loss is log(C*S) whatever the targets.
    np.testing.assert_allclose(float(scope["loss"]), np.log(c * s), rtol=1e-6)
    assert scope["proj"].settings["fit_labels"] == "teacher"

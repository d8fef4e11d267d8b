"""The newcomer docs work as written.

- docs/EXTENDING.md: its ``# file: NAME`` python blocks are written to a fresh folder, then its
  ``lelp`` commands and its plain python block run there, in subprocesses (fresh registries),
  exactly as a user would run them; the results must hold every method named.
- docs/LAUNCHING.md and README.md: every ``lelp`` command parses (subcommand, options, config keys and values)
  through the CLI's own parser and ``load_config``; commands that need a cluster are not run.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
_FENCE = re.compile(r"```(\w+)\n(.*?)```", re.S)


def _blocks(doc: Path) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in _FENCE.finditer(doc.read_text())]


def _lelp_commands(text: str) -> list[list[str]]:
    """``lelp ...`` commands of a shell block, with backslash continuations joined, as argv lists."""
    joined = re.sub(r"\\\n\s*", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        m = re.search(r"(?:^|\s|/)(lelp\s.*)$", line)  # also `.venv/bin/lelp ...`
        if m and not line.startswith("#"):
            out.append(shlex.split(m.group(1))[1:])
    return out


def _env(folder: Path) -> dict[str, str]:
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    env.update(XLA_FLAGS=" ".join(flags), JAX_PLATFORMS="cpu", LELP_JAX_CACHE_DIR="off",
               PYTHONPATH=os.pathsep.join([str(folder), env.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    return env


def _run(argv: list[str], folder: Path) -> str:
    proc = subprocess.run(argv, cwd=folder, env=_env(folder), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{argv} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_extending_examples_run_as_written(tmp_path):
    workdir = tmp_path / "lelp_blobs"
    files: dict[str, str] = {}
    commands: list[list[str]] = []
    scripts: list[str] = []
    for lang, body in _blocks(DOCS / "EXTENDING.md"):
        body = body.replace("/tmp/lelp_blobs", str(workdir))
        first = body.splitlines()[0]
        if lang == "python" and first.startswith("# file: "):
            name = first[len("# file: "):].split()[0]
            files[name] = files.get(name, "") + body + "\n"
        elif lang == "python":
            scripts.append(body)
        elif lang == "bash":
            commands += _lelp_commands(body)
    assert set(files) == {"my_extensions.py", "blobs_config.py"} and len(scripts) == 1 and len(commands) == 2
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    for argv in commands:
        _run([sys.executable, "-m", "lelp_jax.cli", *argv], tmp_path)
    results = json.loads((workdir / "results.json").read_text())
    assert [r["method"] for r in results["runs"]] == ["ce", "kd", "lelp", "random"]
    assert results["teacher"]["model"] == "gated_mlp"
    assert "| random |" in (workdir / "report" / "report.md").read_text()

    (tmp_path / "api_example.py").write_text(scripts[0])
    out = _run([sys.executable, "api_example.py"], tmp_path)
    for method in ("ce", "kd", "lelp", "random", "lelp_kd", "mean_kd"):
        assert re.search(rf"^{method}\s+\d+\.\d% \(best-val test accuracy, 1 seed\)$", out, re.M), out
    assert (workdir / "projections_lelp_kd.npz").is_file()
    # The earlier runs were reused, not retrained: their results are unchanged.
    rerun = {r["method"]: r for r in json.loads((workdir / "results.json").read_text())["runs"]}
    for r in results["runs"]:
        assert rerun[r["method"]]["test_accuracy_best_val"] == r["test_accuracy_best_val"]


def _extension_files(folder: Path) -> None:
    """EXTENDING.md's ``# file: NAME`` blocks, written to ``folder``."""
    files: dict[str, str] = {}
    for lang, body in _blocks(DOCS / "EXTENDING.md"):
        first = body.splitlines()[0]
        if lang == "python" and first.startswith("# file: "):
            name = first[len("# file: "):].split()[0]
            files[name] = files.get(name, "") + body + "\n"
    for name, text in files.items():
        (folder / name).write_text(text)


_METHOD_CHECK = """
import jax, jax.numpy as jnp, numpy as np
import my_extensions, blobs_config
from lelp_jax import methods
from lelp_jax.core import projections, statistics

config = blobs_config.get_config()
config.lelp_kd.weight = 0.0  # without its KD term, lelp_kd is LELP (alpha 0)
config.lock()
rng = np.random.default_rng(0)
b, c, d, s = 8, 2, 16, 3
h, l = jnp.asarray(rng.normal(size=(b, d)), jnp.float32), jnp.asarray(rng.normal(size=(b, c)), jnp.float32)
y = jnp.asarray(np.arange(b) % c)
w = jnp.asarray(rng.normal(size=(c, d)), jnp.float32)
fit = projections.fit_projections(statistics.batch_moments(h, y, num_classes=c), classifier_weights=w,
                                  **methods.get_method("lelp_kd").fit_options(config))
inputs = methods.LossInputs(student_logits=jnp.asarray(rng.normal(size=(b, c * s)), jnp.float32), batch={"label": y},
                            teacher_embedding=h, teacher_logits=l, aux=fit)
got = {}
for name in ("lelp_kd", "lelp", "mean_kd"):
    m = methods.get_method(name)
    assert m.student_outputs(c, config, fit) == (c if name == "mean_kd" else c * s), name
    x = inputs if name != "mean_kd" else inputs.replace(student_logits=inputs.student_logits[:, :c], aux=h[:c])
    options = m.parse_options(config)
    got[name] = float(jax.jit(lambda x: m.loss(x, options))(x))
np.testing.assert_allclose(got["lelp_kd"], got["lelp"], rtol=1e-6)
assert np.isfinite(got["mean_kd"])
print("ok", got)
"""


def test_extending_method_example_registers_and_computes(tmp_path):
    """The doc's new methods, registered from its file blocks in a fresh process, run through the typed
    contract: ``lelp_kd`` with ``lelp_kd.weight = 0`` gives LELP's loss; ``mean_kd`` reuses KD's options."""
    _extension_files(tmp_path)
    (tmp_path / "method_check.py").write_text(_METHOD_CHECK)
    assert "ok" in _run([sys.executable, "method_check.py"], tmp_path)


def _shell_commands(doc: Path) -> list[list[str]]:
    return [argv for lang, body in _blocks(doc) if lang == "bash" for argv in _lelp_commands(body)]


@pytest.mark.parametrize("doc, at_least", [(DOCS / "LAUNCHING.md", 5), (DOCS.parent / "README.md", 2)])
def test_doc_commands_parse(doc, at_least):
    from lelp_jax import cli

    commands = _shell_commands(doc)
    assert len(commands) >= at_least
    for argv in commands:
        name, rest = argv[0], argv[1:]
        assert name in cli.COMMANDS, argv
        if name not in cli.STAGE_COMMANDS:
            continue
        rest, overrides = cli.split_overrides(rest)
        args = cli._stage_parser(name).parse_args(rest)  # noqa: SLF001  (the command's own parser)
        config = cli._load(args, overrides)  # noqa: SLF001  (file + overrides + validation, as `lelp` does)
        assert config.data.name, argv


@pytest.mark.parametrize("doc", ["EXTENDING.md", "LAUNCHING.md", "../README.md"])
def test_docs_name_only_existing_files(doc):
    """Paths the docs point to (configs, modules, notebooks, tests) exist in the repository."""
    root = DOCS.parent
    text = (DOCS / doc).read_text()
    paths = set(re.findall(r"`((?:configs|lelp_jax|colab|tests|docs|scripts)/[\w./-]+\.(?:py|md|ipynb|sh|png))`", text))
    assert paths
    missing = sorted(p for p in paths if not (root / p).exists())
    assert not missing, f"{doc} names files that do not exist: {missing}"


def test_overview_picture_script_draws(tmp_path):
    """scripts/draw_overview.py (the docs' one picture) runs and writes a PNG."""
    out = tmp_path / "overview.png"
    _run([sys.executable, str(DOCS.parent / "scripts" / "draw_overview.py"), "--out", str(out)], tmp_path)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (DOCS / "img" / "lelp_overview.png").is_file()


def test_readme_lelp_kmeans_example_runs():
    """README's ``lelp_kmeans`` block runs after its first python block (they share one scope): float64 NumPy
    reference of the targets it computes, ``t_{c,s} = p_c softmax_s(z_{c,.} / beta)``, and t sums to 1 per row."""
    import numpy as np

    blocks = [code for lang, code in _blocks(DOCS.parent / "README.md") if lang == "python"]
    kmeans = [b for b in blocks if "fit_subspace_kmeans" in b]
    assert kmeans, "README.md lost its lelp_kmeans example"
    scope: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), scope)
    exec(compile(kmeans[0], "README.md", "exec"), scope)
    z, p = np.asarray(scope["scores"], np.float64), np.asarray(scope["jax"].nn.softmax(scope["h"] @ scope["W"].T / 2.0))
    e = np.exp(z - z.max(-1, keepdims=True))
    ref = (p[:, :, None] * e / e.sum(-1, keepdims=True)).reshape(len(z), -1)
    np.testing.assert_allclose(np.asarray(scope["targets"]), ref, atol=1e-5)
    np.testing.assert_allclose(np.asarray(scope["targets"]).sum(-1), 1.0, atol=1e-5)
    assert scope["fit"].clusters.centroids.shape == (scope["C"], scope["S"], 8)


def _main_summary():
    import importlib.util

    spec = importlib.util.spec_from_file_location("main_summary", DOCS / "results" / "main" / "summary.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, json.loads(module.SUMMARY.read_text())


def test_readme_main_job_figures_are_rendered_from_its_summary():
    """Every figure the README and configs/synthetic_main.py quote for the main job comes from
    docs/results/main/summary.json (a real run): the README's generated block and summary.md equal
    ``render(summary)``, the config's docstring quotes ``runtime(summary)``, the README's first command runs it."""
    module, summary = _main_summary()
    readme = (DOCS.parent / "README.md").read_text()
    block = re.search(r"<!-- BEGIN generated: main/summary.md -->\n(.*?)<!-- END generated -->", readme, re.S)
    assert block, "README.md lost the main job's generated block"
    expected = module.render(summary)
    assert block.group(1) == expected, "README.md drifted from docs/results/main/summary.json: run " \
                                       "docs/results/main/summary.py and docs/results/sync_tables.py"
    assert module.RENDERED.read_text() == expected
    config_doc = (DOCS.parent / "configs" / "synthetic_main.py").read_text()
    assert module.runtime(summary) in " ".join(config_doc.split())
    first = next(code for lang, code in _blocks(DOCS.parent / "README.md") if lang == "bash")
    assert "lelp run --config configs/synthetic_main.py --workdir runs/main" in first
    assert summary["command"] == "lelp run --config configs/synthetic_main.py --workdir runs/main"
    assert summary["test_examples"] >= 1500 and set(summary["per_seed"]) == {"ce", "kd", "lelp", "lelp_kmeans",
                                                                              "oracle"}


def test_main_config_quotes_the_validation_figures_of_its_protocol_run():
    """The validation accuracies configs/synthetic_main.py quotes for its settings are those of the selection run it
    names (docs/results/synthetic/selection.md), and its settings are the points quoted."""
    from lelp_jax.config import load_config

    doc = (DOCS.parent / "configs" / "synthetic_main.py").read_text()
    selection = (DOCS / "results" / "synthetic" / "selection.md").read_text()
    quoted = re.findall(r"(\d\d\.\d\d) %", doc.split('"""')[1])
    assert len(quoted) >= 6
    for figure in quoted:
        assert figure in selection, f"configs/synthetic_main.py quotes {figure} %, not in selection.md"
    c = load_config("configs/synthetic_main.py")
    assert (c.kd.tau, c.kd.alpha, c.kd.student_tau) == (4.0, 0.0, 1.0)
    assert (c.lelp.alpha, c.lelp.beta, c.lelp.num_subclasses, c.lelp.tau) == (0.5, 0.3, 8, 2.0)
    assert "| lelp_kmeans | 12 | lelp.alpha=0.5, lelp.beta=0.3, lelp.num_subclasses=8 |" in selection
    assert "| kd | 12 | kd.alpha=0.0, kd.student_tau=1.0, kd.tau=4.0 |" in selection

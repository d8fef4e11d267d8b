"""Regenerate the parts of docs/ARCHITECTURE.md that the code knows, between marker comments:
the module table (each module's path and the first paragraph of its docstring), the stages
(``pipeline.STAGES`` and the ``lelp`` commands of ``cli.STAGE_COMMANDS``), the fit kinds
(``pipeline.FITS``, with the methods of ``methods.METHODS`` using each) and the workdir layout
(``lelp_jax.pipeline.workdir.Workdir.layout()``).

    python scripts/gen_architecture.py           # rewrite docs/ARCHITECTURE.md
    python scripts/gen_architecture.py --check   # exit 1, naming the stale block, if it is out of date

tests/test_layout.py runs the check, so a new module without a row (or a stale row) fails the tests.
"""
from __future__ import annotations

import argparse
import ast
import re
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "ARCHITECTURE.md"
if str(ROOT) not in sys.path:  # run as a script: document this checkout's lelp_jax, not an installed one
    sys.path.insert(0, str(ROOT))


def module_rows(package: Path = ROOT / "lelp_jax") -> list[tuple[str, str]]:
    """``(path, docstring summary)`` for every module of ``package`` (the summary: the docstring's first
    paragraph, on one line); a package is listed as its folder (``lelp_jax/data/``) with its
    ``__init__.py`` docstring, before its modules."""
    rows = []
    for path in sorted(package.rglob("*.py"), key=lambda p: (p.parent.relative_to(package).parts,
                                                              p.name != "__init__.py", p.name)):
        doc = ast.get_docstring(ast.parse(path.read_text()))
        if not doc:
            raise ValueError(f"{path.relative_to(ROOT)} has no docstring; its first paragraph is its row in "
                             "docs/ARCHITECTURE.md. Add one.")
        rel = path.relative_to(ROOT)
        name = f"{rel.parent.as_posix()}/" if path.name == "__init__.py" else rel.as_posix()
        rows.append((name, _summary(doc)))
    return rows


def _summary(doc: str | None) -> str:
    """A docstring's first paragraph on one line ("" without a docstring)."""
    return " ".join((doc or "").strip().split("\n\n")[0].split())


def _md(text: str) -> str:
    """Docstring text as one Markdown table cell: Sphinx roles dropped, ``code`` as `code`, pipes escaped."""
    text = re.sub(r":(?:func|mod|class|meth|data|attr|exc):`~?", "`", text)
    return text.replace("``", "`").replace("|", "&#124;")


def modules_block() -> str:
    """The module table in Markdown."""
    lines = ["| module | what it holds |", "|---|---|"]
    lines += [f"| `{path}` | {_md(text)} |" for path, text in module_rows()]
    return "\n".join(lines)




# The layers, lowest first: a module may import its own layer and those below it, never one above
# (tests/test_layout.py checks every import). ``lelp_jax/__init__.py`` re-exports the core.
LAYERS: tuple[tuple[int, str, str], ...] = (
    (0, "core", "pure jittable math and its artifact files: what other codebases import"),
    (1, "runtime", "errors, content-addressed store, progress lines, mesh and sharding"),
    (2, "config", "the schema (every default), config files, overrides"),
    (3, "data", "datasets as random-access sources, the batch format, the batch iterator"),
    (3, "models", "Flax teachers and students behind one registry"),
    (4, "methods", "the method registry: each method's needs, targets, loss"),
    (5, "train", "optimizer, train state, the compiled steps, checkpoints, the loop"),
    (6, "pipeline", "the run: workdir, teacher, fits, stages, driver"),
    (7, "protocol", "grids, sweeps, k-fold, selection on validation, paired statistics"),
    (7, "student", "the exported student bundle, `lelp export`, `lelp predict`, `load_student`"),
    (8, "report", "tables and plots from result files"),
    (9, "cli", "the `lelp` command"),
)


def layer_of(module: str) -> int:
    """The layer of a dotted module name (``lelp_jax`` itself is the core's public face)."""
    parts = module.split(".")
    if len(parts) == 1:
        return 0
    levels = {name: level for level, name, _ in LAYERS}
    if parts[1] not in levels:
        raise ValueError(f"{module}: lelp_jax/{parts[1]} is in no layer; add it to LAYERS in scripts/gen_architecture.py")
    return levels[parts[1]]


def layers_block() -> str:
    """The layers, lowest first."""
    lines = ["| layer | package | what it holds |", "|---|---|---|"]
    lines += [f"| {level} | `lelp_jax/{name}{'.py' if name == 'cli' else '/'}` | {text} |" for level, name, text in LAYERS]
    return "\n".join(lines)


def stages_block() -> str:
    """The pipeline's stages (``pipeline.STAGES``, in order, each with its docstring's summary), then the
    ``lelp`` commands that run them (``cli.STAGE_COMMANDS``)."""
    from lelp_jax import cli, pipeline

    lines = ["| stage | function | what it does |", "|---|---|---|"]
    lines += [f"| `{name}` | `{fn.__name__}` | {_md(_summary(fn.__doc__))} |"
              for name, fn in pipeline.STAGES.items()]
    lines += ["", "| command | stages it runs, in order (done ones are skipped) |", "|---|---|"]
    lines += [f"| `lelp {cmd}` | {', '.join(f'`{s}`' for s in stages)} |" for cmd, stages in cli.STAGE_COMMANDS.items()]
    return "\n".join(lines)


def fits_block() -> str:
    """The fit kinds (``pipeline.FITS``, each with its function's docstring summary) and the methods using each."""
    from lelp_jax.methods import METHODS
    from lelp_jax.pipeline import FITS

    lines = ["| fit kind | what the pipeline builds | methods |", "|---|---|---|"]
    for kind, fn in FITS.items():
        users = ", ".join(f"`{m.name}`" for m in METHODS.values() if m.fit == kind) or "–"
        lines.append(f"| `{kind}` | {_md(_summary(fn.__doc__))} | {users} |")
    return "\n".join(lines)


def workdir_block() -> str:
    """Every file and folder a run writes (``Workdir.layout()``: path relative to the workdir, what it holds)."""
    from lelp_jax.pipeline.workdir import Workdir

    rows = [(f"WORKDIR/{path}", text) for path, text in Workdir.layout()]
    width = max(len(p) for p, _ in rows) + 2
    lines = []
    for path, text in rows:  # the description wrapped beside the path, within 110 columns
        wrapped = textwrap.wrap(text, 110 - width) or [""]
        lines += [f"{path:<{width}}{wrapped[0]}"] + [" " * width + more for more in wrapped[1:]]
    return "```\n" + "\n".join(lines) + "\n```"


BLOCKS: dict[str, Callable[[], str]] = {"layers": layers_block, "modules": modules_block, "stages": stages_block, "fits": fits_block,
                                        "workdir": workdir_block}


def render(text: str) -> str:
    """``text`` with every generated block replaced by what the code says now."""
    for name, make in BLOCKS.items():
        begin = f"<!-- BEGIN GENERATED {name} (scripts/gen_architecture.py) -->"
        end = f"<!-- END GENERATED {name} -->"
        pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
        if not pattern.search(text):
            raise ValueError(f"{DOC.name}: the markers of the generated block {name!r} are missing ({begin!r}).")
        text = pattern.sub(lambda _: f"{begin}\n{make()}\n{end}", text)
    return text


def stale_blocks(text: str) -> list[str]:
    """The names of the blocks whose text differs from what :func:`render` would write."""
    new = render(text)
    return [name for name in BLOCKS
            if _block(text, name) != _block(new, name)]


def _block(text: str, name: str) -> str:
    m = re.search(rf"<!-- BEGIN GENERATED {name} .*?-->(.*?)<!-- END GENERATED {name} -->", text, re.S)
    return m.group(1) if m else ""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="only check; exit 1 when docs/ARCHITECTURE.md is stale")
    args = p.parse_args(argv)
    text = DOC.read_text()
    if args.check:
        stale = stale_blocks(text)
        if stale:
            print(f"docs/ARCHITECTURE.md: generated block(s) {stale} are stale; run python scripts/gen_architecture.py")
            return 1
        return 0
    DOC.write_text(render(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())

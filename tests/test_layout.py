"""The package's layout, read from the code: no module over 450 lines, an import graph without cycles
(every ``import`` of a lelp_jax module, at module level or inside a function), no importlib of package
modules, and docs/ARCHITECTURE.md's generated parts (module table, workdir layout) up to date."""
from __future__ import annotations

import ast
import importlib.util
import re
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "lelp_jax"
MAX_LINES = 450


def _gen():
    """scripts/gen_architecture.py as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("gen_architecture", ROOT / "scripts" / "gen_architecture.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the package (a package is its ``__init__.py``)."""
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _resolve(name: str, modules: Mapping) -> str | None:
    """The module ``name`` lives in: itself, or its closest enclosing package that is a module."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(source: str, module: str, modules: Mapping, *, is_package: bool = False) -> set[str]:
    """The lelp_jax modules ``source`` (the text of ``module``) imports anywhere in its body:
    ``import a.b``, ``from a import b`` (b a submodule or a name in a), relative imports."""
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for name in names:
            if name == "lelp_jax" or name.startswith("lelp_jax."):
                target = _resolve(name, modules)
                if target and target != module:
                    out.add(target)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: imports_of(p.read_text(), m, modules, is_package=p.name == "__init__.py") for m, p in modules.items()}


def find_cycle(graph: Mapping[str, set[str]]) -> list[str] | None:
    """One cycle ``[a, b, ..., a]`` of ``graph`` (depth-first search), or None when it is acyclic."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_module_over_450_lines():
    sizes = {m: len(p.read_text().splitlines()) for m, p in _modules().items()}
    assert len(sizes) > 40 and sizes["lelp_jax.protocol.paired"] > 100  # the walk saw the package
    over = {m: n for m, n in sizes.items() if n > MAX_LINES}
    assert not over, f"modules over {MAX_LINES} lines (split them along their seams): {over}"


def test_import_reader_sees_every_form():
    modules = {m: None for m in ("lelp_jax", "lelp_jax.a", "lelp_jax.b", "lelp_jax.b.c", "lelp_jax.d", "lelp_jax.e")}
    src = ("import numpy\nimport lelp_jax.a as x\nfrom lelp_jax.b import c, helper\n"
           "def f():\n    from lelp_jax import d\n    from . import e\n    return numpy\n")
    assert imports_of(src, "lelp_jax.b.mod", modules) == {"lelp_jax.a", "lelp_jax.b", "lelp_jax.b.c", "lelp_jax.d"}
    assert imports_of(src, "lelp_jax.f", modules) == {"lelp_jax.a", "lelp_jax.b", "lelp_jax.b.c", "lelp_jax.d",
                                                      "lelp_jax.e"}


def test_cycle_finder():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]


def test_import_graph_has_no_cycle():
    graph = import_graph()
    assert "lelp_jax.protocol.paired" in graph["lelp_jax.report"]  # the reader sees the package's imports
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle (module-level or inside a function): " + " -> ".join(cycle)


def test_no_import_runs_up_a_layer():
    """core < runtime < config < data, models < methods < train < pipeline < protocol < report < cli
    (scripts/gen_architecture.py LAYERS, drawn in docs/ARCHITECTURE.md)."""
    gen = _gen()
    assert gen.layer_of("lelp_jax.core.losses") < gen.layer_of("lelp_jax.runtime.store") < gen.layer_of("lelp_jax.cli")
    up = sorted(f"{m} -> {d}" for m, deps in import_graph().items() for d in deps if gen.layer_of(d) > gen.layer_of(m))
    assert not up, f"imports from a lower layer to a higher one: {up}"


def test_top_level_tells_the_architecture():
    """At most 13 entries, each a package of a layer (or the package's own __init__ / cli)."""
    gen = _gen()
    entries = sorted(p.name for p in PKG.iterdir() if p.name != "__pycache__")
    assert len(entries) <= 13, entries
    layers = {name for _, name, _ in gen.LAYERS}
    assert {e.removesuffix(".py") for e in entries} <= layers | {"__init__"}, entries


def _dynamic_imports(source: str) -> list[tuple[int, str]]:
    """(line, code) of every importlib.import_module / __import__ call whose target is a lelp_jax
    module or is not a literal (a name computed at run time hides an import from the graph)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        fn = node.func
        name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
        if name not in ("import_module", "__import__"):
            continue
        arg = node.args[0] if node.args else None
        literal = isinstance(arg, ast.Constant) and isinstance(arg.value, str)
        if not literal or arg.value.split(".")[0] == "lelp_jax":
            found.append((node.lineno, ast.unparse(node)))
    return found


def test_no_importlib_of_package_modules():
    assert _dynamic_imports("import importlib\nm = importlib.import_module(name)\nj = __import__('json')\n") == [
        (2, "importlib.import_module(name)")]
    # lelp_jax/__init__.py's deprecation aliases import moved modules by name: their targets are real
    # modules, which the graph sees through their own imports.
    found = {m: hits for m, p in _modules().items() if m != "lelp_jax" and (hits := _dynamic_imports(p.read_text()))}
    assert not found, f"import lelp_jax modules with `import` (visible to this test), not importlib: {found}"


def test_architecture_table_lists_every_module():
    doc = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    rows = set(re.findall(r"^\| `(lelp_jax/[\w/]*(?:\.py)?)` \|", doc, re.M))
    files = {f"{p.parent.relative_to(ROOT).as_posix()}/" if p.name == "__init__.py"
             else p.relative_to(ROOT).as_posix() for p in _modules().values()}
    assert files <= rows, (f"modules missing from docs/ARCHITECTURE.md: {sorted(files - rows)}; run "
                           "python scripts/gen_architecture.py")
    assert rows <= files, f"docs/ARCHITECTURE.md lists modules that do not exist: {sorted(rows - files)}"


def test_architecture_generated_blocks_are_current():
    gen = _gen()
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    assert gen.stale_blocks(text) == [], "docs/ARCHITECTURE.md is stale: run python scripts/gen_architecture.py"
    # the check notices a dropped row
    first = next(line for line in text.splitlines() if line.startswith("| `lelp_jax/"))
    assert gen.stale_blocks(text.replace(first + "\n", "")) == ["modules"]


def test_architecture_paths_exist():
    """Every lelp_jax/... path the prose names (not only the generated table) is a real file or folder."""
    doc = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    named = set(re.findall(r"\blelp_jax/[\w/]*\w(?:\.py)?/?", doc))
    assert len(named) > 40
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, f"docs/ARCHITECTURE.md names paths that do not exist: {missing}"

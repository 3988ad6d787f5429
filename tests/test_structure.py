"""The shape of the code, read from the source with ``ast`` (nothing is imported).

No import cycle among the project's modules, no oversized module, and the web framework only in
the HTTP layer. Imports under ``if TYPE_CHECKING:`` never run, so they never count for cycles.
Imports inside functions (lazy imports) do not run when a module is imported: the first cycle test
leaves them out, the second counts them too, since a circle of lazy imports is still a circle
(the tiles warm-up was one).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("heatmap", "tiles")

MAX_LINES = 600
ALLOWED_LONG = {
    "heatmap/cellindex.py",  # the compiled H3 indexer
    "heatmap/simulate.py",  # the simulator
}
EXEMPT_LONG: set[str] = set()  # modules over the limit while a split is in progress

# Lazy imports (inside a function) allowed to close a cycle, as (importer, imported): each needs
# a reason. A module importing itself is not a cycle and needs no entry.
LAZY_CYCLE_EXCEPTIONS: dict[tuple[str, str], str] = {}

WEB_FRAMEWORKS = {"fastapi", "starlette"}
WEB_LAYERS = ("heatmap/api/", "heatmap/web/")


def _sources() -> dict[str, Path]:
    """Dotted module name -> file, for every module under the project's packages."""
    mods: dict[str, Path] = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            mods[".".join(parts)] = path
    return mods


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(
    body: list[ast.stmt], *, lazy: bool = False
) -> Iterator[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported, and with ``lazy`` those in its functions
    too; never those for type checkers."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            if lazy:
                yield from _import_nodes(node.body, lazy=True)
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _import_nodes(node.orelse, lazy=lazy)
        else:
            for field in ("body", "orelse", "finalbody"):
                yield from _import_nodes(getattr(node, field, []), lazy=lazy)
            for handler in getattr(node, "handlers", []):
                yield from _import_nodes(handler.body, lazy=lazy)
            for case in getattr(node, "cases", []):
                yield from _import_nodes(case.body, lazy=lazy)


def _absolute(mod: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module a ``from`` import names (``node.module`` may be relative)."""
    if not node.level:
        return node.module or ""
    package = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _targets(node: ast.Import | ast.ImportFrom, mod: str, path: Path) -> Iterator[str]:
    """Every dotted name an import statement loads (``from x import y`` gives x and x.y)."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name
        return
    base = _absolute(mod, path, node)
    yield base
    for alias in node.names:
        yield f"{base}.{alias.name}"


def _project_module(name: str, mods: dict[str, Path]) -> str | None:
    """The deepest project module a dotted name falls in, or None outside the project."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in mods:
            return candidate
        parts.pop()
    return None


def _graph(mods: dict[str, Path], *, lazy: bool = False) -> dict[str, set[str]]:
    """Module -> the project modules it imports at import time (with ``lazy``, or ever)."""
    graph: dict[str, set[str]] = {}
    for mod, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        edges: set[str] = set()
        for node in _import_nodes(tree.body, lazy=lazy):
            names = list(_targets(node, mod, path))
            if isinstance(node, ast.ImportFrom):
                # ``from x import y``: y is a submodule if x.y is one, else a name defined in x.
                base, subs = names[0], [n for n in names[1:] if n in mods]
                names = subs if len(subs) == len(node.names) else [base, *subs]
            for name in names:
                target = _project_module(name, mods)
                if target is not None:
                    edges.add(target)
        if lazy:
            edges.discard(mod)  # a lazy self-import (``engines`` for Dask workers) is no cycle
        graph[mod] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle path (first module repeated last) per strongly connected group (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1 or v in graph[v]:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_path_in(group, graph) for group in groups]


def _path_in(group: set[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest cycle through the group's first module, staying inside the group."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & group):
                if w == start:
                    return [*paths[v], start]
                if w not in paths:
                    paths[w] = [*paths[v], w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {start}")  # unreachable for a strong group


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_no_import_cycle() -> None:
    cycles = _cycles(_graph(_sources()))
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_import_cycle_through_lazy_imports() -> None:
    graph = _graph(_sources(), lazy=True)
    stale = [edge for edge in LAZY_CYCLE_EXCEPTIONS if edge[1] not in graph.get(edge[0], set())]
    assert not stale, f"exceptions for imports that no longer exist: {stale}"
    for importer, imported in LAZY_CYCLE_EXCEPTIONS:
        graph[importer].discard(imported)
    cycles = _cycles(graph)
    assert not cycles, "import cycles, counting imports inside functions:\n" + "\n".join(
        " -> ".join(c) for c in cycles
    )


def test_no_module_over_the_line_limit() -> None:
    unexpected = {}
    for path in _sources().values():
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > MAX_LINES and _rel(path) not in ALLOWED_LONG | EXEMPT_LONG:
            unexpected[_rel(path)] = n
    assert not unexpected, f"modules over {MAX_LINES} lines: {unexpected}"


def test_web_framework_only_in_the_http_layer() -> None:
    # Any import counts here, lazy or for type checkers: the core must not know the framework.
    leaks = []
    for mod, path in _sources().items():
        if _rel(path).startswith(WEB_LAYERS):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            leaks += [f"{mod}: {n}" for n in names if n.split(".")[0] in WEB_FRAMEWORKS]
    assert not leaks, "fastapi/starlette imported outside heatmap/api and heatmap/web:\n" + (
        "\n".join(leaks)
    )


def test_the_graph_sees_every_kind_of_import(tmp_path: Path) -> None:
    # The cycle test is only as good as the graph: check it on a made-up package.
    pkg = tmp_path / "p"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "from p import a\n",
        "a.py": "from . import b\nimport p.sub.c\n",
        "b.py": "from .sub import c as _c\nfrom p.a import thing\n",
        "sub/__init__.py": "def h():\n    from p import d\n",
        "sub/c.py": (
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from p import b\n"
            "def f():\n    from p import a\n"
            "from .. import b as _b\n"
        ),
        "d.py": "from p.sub import nothing_here\nimport os\ndef g():\n    import p.d\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    mods = {}
    for name in files:
        parts = ["p", *Path(name).with_suffix("").parts]
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = pkg / name
    graph = _graph(mods)
    assert graph == {
        "p": {"p.a"},
        "p.a": {"p.b", "p.sub.c"},
        "p.b": {"p.sub.c", "p.a"},
        "p.sub": set(),
        "p.sub.c": {"p.b"},
        "p.d": {"p.sub"},
    }
    assert sorted(map(tuple, _cycles(graph))) == [("p.a", "p.b", "p.a")]
    # Counting lazy imports adds sub -> d (inside ``h``) and c -> a (inside ``f``), still not the
    # type checkers' c -> b, and not d's import of itself.
    lazy = _graph(mods, lazy=True)
    assert lazy == {**graph, "p.sub": {"p.d"}, "p.sub.c": {"p.b", "p.a"}}
    assert sorted(map(tuple, _cycles(lazy))) == [("p.a", "p.b", "p.a"), ("p.d", "p.sub", "p.d")]

"""Layering of the ``deepsad`` and ``orchestration`` packages, read from their source (AST; nothing is
imported).

Two rules per package:

* privacy: no module uses another module's private name (``_x``: one leading underscore, not a
  dunder) — neither ``from pkg.mod import _x`` nor ``mod._x`` on a module bound by an import (a
  private submodule ``pkg/_m.py`` is a private name of ``pkg``);
* no import cycles: the graph of imports between the package's modules has no cycle.

Import edges come from every ``import`` / ``from ... import`` statement of a module — at module level,
under ``if TYPE_CHECKING:`` and inside functions alike — with relative names resolved. ``import a.b.c``
is an edge to ``a.b.c``; ``from a.b import name`` is an edge to the submodule ``a.b.name`` when there
is one, else to ``a.b``. Implicit imports of parent packages (their ``__init__``) are not edges.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGES = [pytest.param("deepsad", id="deepsad"), pytest.param("orchestration", id="orchestration")]


# --------------------------------------------------------------------------- the checker


def is_private(name: str) -> bool:
    """``_x`` is private; ``__x__`` (dunder) and ``x`` are not."""
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


@dataclass(frozen=True)
class Module:
    name: str  # dotted, e.g. "deepsad.data.splits"; a package's __init__ is the package's name
    path: Path
    is_package: bool

    @property
    def package(self) -> str:
        """The package that relative imports start from."""
        return self.name if self.is_package else self.name.rpartition(".")[0]


def package_modules(root: Path, package: str) -> dict[str, Module]:
    """Every module of ``root/package`` by dotted name."""
    modules = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        modules[name] = Module(name, path, is_package)
    return modules


def _from_base(module: Module, node: ast.ImportFrom) -> str:
    """The absolute module name a ``from X import ...`` statement imports from."""
    if node.level == 0:
        return node.module or ""
    base = module.package.split(".")
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


@dataclass(frozen=True)
class Imported:
    """One name an import statement brings in: ``target`` is the module the edge goes to; ``name`` is
    the imported attribute of ``target`` (None when the import names ``target`` itself)."""

    target: str
    name: str | None
    line: int


def imports_of(module: Module, modules: dict[str, Module], tree: ast.AST) -> Iterator[Imported]:
    """The in-package imports of ``module`` anywhere in its source (including function bodies)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                for n in range(len(parts), 0, -1):  # the longest prefix that is a module of the package
                    if ".".join(parts[:n]) in modules:
                        yield Imported(".".join(parts[:n]), None, node.lineno)
                        break
        elif isinstance(node, ast.ImportFrom):
            base = _from_base(module, node)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in modules:
                    yield Imported(sub, None, node.lineno)
                elif base in modules:
                    yield Imported(base, alias.name, node.lineno)


def _module_bindings(module: Module, modules: dict[str, Module], tree: ast.AST) -> dict[str, str]:
    """Local names bound to in-package modules by imports (whole file, all scopes)."""
    bound: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname is not None:
                    if alias.name in modules:
                        bound[alias.asname] = alias.name
                elif alias.name.split(".")[0] in modules:
                    bound[alias.name.split(".")[0]] = alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            base = _from_base(module, node)
            for alias in node.names:
                if f"{base}.{alias.name}" in modules:
                    bound[alias.asname or alias.name] = f"{base}.{alias.name}"
    return bound


def _resolve(expr: ast.expr, bound: dict[str, str], modules: dict[str, Module]) -> str | None:
    """The in-package module ``expr`` (a name or an attribute chain) stands for, if any."""
    if isinstance(expr, ast.Name):
        return bound.get(expr.id)
    if isinstance(expr, ast.Attribute):
        owner = _resolve(expr.value, bound, modules)
        if owner is not None and f"{owner}.{expr.attr}" in modules:
            return f"{owner}.{expr.attr}"
    return None


def private_uses(root: Path, package: str) -> list[str]:
    """``path:line: what`` for every use of another module's private name within ``package``."""
    modules = package_modules(root, package)
    problems = []
    for module in modules.values():
        tree = ast.parse(module.path.read_text(), str(module.path))
        rel = module.path.relative_to(root)
        for imp in imports_of(module, modules, tree):
            if imp.name is None:  # a submodule: its name is an attribute of its package
                owner, _, private = imp.target.rpartition(".")
            else:
                owner, private = imp.target, imp.name
            if owner != module.name and is_private(private):
                problems.append(f"{rel}:{imp.line}: imports {private} from {owner}")
        bound = _module_bindings(module, modules, tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and is_private(node.attr):
                owner = _resolve(node.value, bound, modules)
                if owner is not None and owner != module.name:
                    problems.append(f"{rel}:{node.lineno}: uses {owner}.{node.attr}")
    return problems


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """module -> the package's modules it imports (self-imports left out)."""
    modules = package_modules(root, package)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for module in modules.values():
        tree = ast.parse(module.path.read_text(), str(module.path))
        for imp in imports_of(module, modules, tree):
            if imp.target != module.name:
                graph[module.name].add(imp.target)
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle ``[a, b, ..., a]`` per strongly connected component with more than one module
    (Tarjan's algorithm, iterative), in a stable order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return [_cycle_in(graph, set(c), c[0]) for c in sorted(components)]


def _cycle_in(graph: dict[str, set[str]], component: set[str], start: str) -> list[str]:
    """A shortest cycle through ``start`` inside ``component`` (breadth-first)."""
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for child in sorted(graph[node] & component):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [start, *reversed(path[:-1]), start] if node != start else [start, start]
                if child not in parent:
                    parent[child] = node
                    nxt.append(child)
        frontier = nxt
    raise AssertionError(f"{start} is on no cycle of its component")  # Tarjan guarantees one


def describe_cycles(cycles: list[list[str]]) -> str:
    return "import cycles:\n" + "\n".join("  " + " -> ".join(c) for c in cycles)


# --------------------------------------------------------------------------- the rules


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_uses_another_modules_private_names(package: str) -> None:
    problems = private_uses(REPO, package)
    assert problems == [], "private names used across modules:\n" + "\n".join(problems)


@pytest.mark.parametrize("package", PACKAGES)
def test_the_modules_import_each_other_without_cycles(package: str) -> None:
    cycles = import_cycles(import_graph(REPO, package))
    assert cycles == [], describe_cycles(cycles)


# --------------------------------------------------------------------------- the checker can fail


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_checker_reports_private_imports_and_cycles(tmp_path: Path) -> None:
    _write(tmp_path, {
        "pkg/__init__.py": '__version__ = "1"\n',
        "pkg/a.py": "from pkg.b import helper\n_own = 1\n",
        # the cycle closes through a function-level, relative import of a submodule
        "pkg/b.py": "def helper():\n    from . import a\n    return a\n",
        "pkg/c.py": "from pkg.a import _own\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/d.py": (
            "import pkg.a\nimport pkg.b as bb\nfrom .. import c as cc\n\n"
            "def f():\n    return pkg.a._own, bb._x, cc._y\n"
        ),
    })
    problems = private_uses(tmp_path, "pkg")
    assert problems == [
        "pkg/c.py:1: imports _own from pkg.a",
        "pkg/sub/d.py:6: uses pkg.a._own",
        "pkg/sub/d.py:6: uses pkg.b._x",
        "pkg/sub/d.py:6: uses pkg.c._y",
    ]
    cycles = import_cycles(import_graph(tmp_path, "pkg"))
    assert cycles == [["pkg.a", "pkg.b", "pkg.a"]]
    assert "pkg.a -> pkg.b -> pkg.a" in describe_cycles(cycles)


def test_the_checker_accepts_what_the_rules_allow(tmp_path: Path) -> None:
    _write(tmp_path, {
        "pkg/__init__.py": '__version__ = "1"\n',
        "pkg/a.py": "import numpy._core\nimport pkg\nimport pkg.a as me\n_x = 1\n"
                    "v = (pkg.__version__, me._x)\n",
        "pkg/b.py": "from pkg import a\nfrom pkg.a import v\nfrom numpy._core import multiarray\nw = a.v\n",
        "pkg/c.py": "from . import b\n\ndef _own():\n    return b.w\n",
    })
    assert private_uses(tmp_path, "pkg") == []
    graph = import_graph(tmp_path, "pkg")
    assert graph == {"pkg": set(), "pkg.a": {"pkg"}, "pkg.b": {"pkg.a"}, "pkg.c": {"pkg.b"}}
    assert import_cycles(graph) == []


def test_a_longer_cycle_is_reported_through_a_submodule_import(tmp_path: Path) -> None:
    """``from pkg import c`` is an edge to the submodule ``pkg.c``, not to the package."""
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "import pkg.b\n",
        "pkg/b.py": "from pkg import c\n",
        "pkg/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import x\n",
        "pkg/d.py": "import pkg.a\n",
    })
    assert import_cycles(import_graph(tmp_path, "pkg")) == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]

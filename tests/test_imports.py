"""The package's import graph, read with ``ast``: data flows one way (no module imports, even
lazily inside a function, a module that imports it back) and no module reaches into another's
private (underscore) names."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "newsdl"


def _modules(root: Path) -> dict[str, Path]:
    found = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def import_graph(root: Path = PACKAGE) -> tuple[dict[str, set[str]], list[str]]:
    """(module -> the package's modules it imports, and 'importer: module.name' for every private
    name imported from another module)."""
    modules = _modules(root)
    edges: dict[str, set[str]] = {m: set() for m in modules}
    private = []
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [(alias.name, None) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets = [(base, alias.name) for alias in node.names]
            else:
                continue
            for module, attr in targets:
                full = f"{module}.{attr}" if attr else module
                target = full if full in modules else module
                if target in modules and target != name:
                    edges[name].add(target)
                if (attr and attr.startswith("_") and not attr.startswith("__") and full not in modules
                        and module.split(".")[0] == root.name and module != name):
                    private.append(f"{name}: {module}.{attr}")
    return edges, private


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iteratively)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    counter = 0
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
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
                    found.append(sorted(component))
    return found


def test_the_package_has_no_import_cycle_and_no_private_import():
    edges, private = import_graph()
    assert len(edges) > 50 and any(edges.values())
    assert cycles(edges) == []
    assert private == []


def test_the_checks_find_a_cycle_and_a_private_import(tmp_path):
    pkg = tmp_path / "newsdl"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from newsdl.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..c import _hidden\n")
    (pkg / "c.py").write_text("import newsdl.a\n_hidden = 1\n__version__ = '1'\n")
    (pkg / "d.py").write_text("from newsdl.c import __version__\n")
    edges, private = import_graph(pkg)
    assert cycles(edges) == [["newsdl.a", "newsdl.c", "newsdl.sub.b"]]
    assert private == ["newsdl.sub.b: newsdl.c._hidden"]

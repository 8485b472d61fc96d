"""The package's import graph points one way: no cycles anywhere, and `ops` depends on torch alone."""

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "inplace_ttt"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module name `path` imports (absolute; `from . import x` gives both the package and `x`)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges = {}
    for name, path in modules.items():
        # a package's __init__ is where its submodules are collected, not a dependency of them
        edges[name] = {m for m in imports_of(path) if m in modules and m != name and modules[m].name != "__init__.py"}
    return edges


def test_no_import_cycles():
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles


def test_ops_depends_on_torch_alone():
    allowed = {"torch", "__future__", *sys.stdlib_module_names}
    for path in (PACKAGE / "ops").rglob("*.py"):
        for name in imports_of(path):
            top = name.split(".")[0]
            assert top in allowed or name.startswith("inplace_ttt.ops"), (path.name, name)


def test_the_walk_sees_a_cycle_when_there_is_one(tmp_path, monkeypatch):
    """The checker itself can fail: two modules importing each other are a cycle."""
    package = tmp_path / "inplace_ttt"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from . import b\n")
    (package / "b.py").write_text("from .a import x\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", package)
    assert graph() == {"inplace_ttt": set(), "inplace_ttt.a": {"inplace_ttt.b"}, "inplace_ttt.b": {"inplace_ttt.a"}}
    try:
        test_no_import_cycles()
    except AssertionError as e:
        assert "inplace_ttt.a" in str(e)
    else:
        raise AssertionError("the cycle a <-> b was not found")

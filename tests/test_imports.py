"""The package's import graph points one way: no cycles, every import (`__init__.py` files included)
goes to a lower layer of the map in docs/design.md, families never import each other, and `ops`
depends on torch alone."""

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "inplace_ttt"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str] = frozenset()) -> set[str]:
    """Every module name `path` imports (absolute). ``from pkg import x`` gives ``pkg.x`` where that
    is one of `modules`, else ``pkg`` (and ``pkg.x``, which may be a module outside `modules`)."""
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
            named = {f"{base}.{alias.name}" for alias in node.names}
            found |= named
            if not named & modules:
                found.add(base)
    return found


def graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (a package's `__init__` counts like any module)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in imports_of(path, set(modules)) if m in modules and m != name} for name, path in modules.items()}


# the layers of the map (docs/design.md), lowest first: a module imports only from lower layers (and
# its own package); the top package and the deprecated `adapters` are facades nothing else imports
LAYERS = [
    {"ops"},
    {"files", "finite"},  # the standard library (and torch) only: every reader of a user's file checks it here
    {"config", "documents", "assets"},
    {"context", "clipping", "health"},
    {"layer"},
    {"families"},
    {"doctor"},
    {"speech"},
    {"train", "eval", "serve"},
    {"demo"},
    {"cli"},
]
FACADES = {"inplace_ttt", "inplace_ttt.adapters"}


def layer_of(module: str) -> tuple[int, str]:
    """`(layer, top-level part)` of a module of the package."""
    part = module.split(".")[1]
    return next(i for i, parts in enumerate(LAYERS) if part in parts), part


def wrong_imports(edges: dict[str, set[str]]) -> list[str]:
    """Imports that go up the map or sideways between two parts of a layer, and families importing each other."""
    wrong = []
    for name, targets in edges.items():
        if name in FACADES:
            continue
        for target in targets:
            if target in FACADES:
                wrong.append(f"{name} imports the facade {target}")
                continue
            (mine, part), (theirs, their_part) = layer_of(name), layer_of(target)
            if theirs > mine or (theirs == mine and part != their_part):
                wrong.append(f"{name} -> {target}")
            if part == their_part == "families":
                own, other = name.split(".")[2:3], target.split(".")[2:3]
                if own != other and own in (["hf"], ["moshi"]) and other in (["hf"], ["moshi"]):
                    wrong.append(f"{name} -> {target} (one family importing another)")
    return wrong


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


def test_imports_point_down_the_map():
    assert not wrong_imports(graph())
    for path in PACKAGE.rglob("*.py"):  # every module has its layer in the map
        if module_name(path) not in FACADES:
            layer_of(module_name(path))


def test_the_map_check_sees_an_upward_import_a_sideways_one_and_a_family_importing_another():
    edges = {
        "inplace_ttt.families": {"inplace_ttt.train.run"},  # a package's __init__ going up
        "inplace_ttt.eval.runner": {"inplace_ttt.train.config"},  # sideways in one layer
        "inplace_ttt.families.hf.convert": {"inplace_ttt.families.moshi.io"},
        "inplace_ttt.train.run": {"inplace_ttt.families", "inplace_ttt.ops.chunk"},  # fine: downwards
    }
    assert sorted(wrong_imports(edges)) == [
        "inplace_ttt.eval.runner -> inplace_ttt.train.config",
        "inplace_ttt.families -> inplace_ttt.train.run",
        "inplace_ttt.families.hf.convert -> inplace_ttt.families.moshi.io (one family importing another)",
    ]


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


def test_test_modules_share_helpers_only_through_conftest_and_helper_modules():
    """A test module never imports another test module (shared fixtures live in conftest.py files,
    shared builders in helper modules such as tests/tiny_hf.py)."""
    tests = Path(__file__).resolve().parent
    wrong = []
    for path in tests.rglob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[-1].startswith("test_"):
                wrong.append(f"{path.relative_to(tests)} imports {node.module}")
    assert not wrong, wrong

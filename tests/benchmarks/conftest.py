"""A script of `benchmarks/` loaded as a module, for the tests that run it at a tiny shape."""

import importlib.util
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load_benchmark(name: str, monkeypatch=None):
    """`benchmarks/<name>.py` as a module; with `monkeypatch`, registered in `sys.modules` for the
    test's duration (a script whose dataclasses look their module up there needs it)."""
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    if monkeypatch is not None:
        monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module

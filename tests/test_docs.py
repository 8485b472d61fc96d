"""The documentation's Python examples run as written, and its references to tests exist.

Every ```python block of README.md and docs/*.md runs (in a fresh folder, a file's blocks in order
in one namespace, their own asserts checking what they claim); a block that must not run is written
as ```text. The selection is the fence's language, never a block's position.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), re.S | re.M)


@pytest.mark.parametrize("path", [f for f in FILES if python_blocks(f)], ids=lambda p: p.name)
def test_python_examples_run(path, tmp_path, monkeypatch):
    blocks = python_blocks(path)
    if any("moshi" in b for b in blocks):
        pytest.importorskip("moshi")
        monkeypatch.setenv("NO_TORCH_COMPILE", "1")
    monkeypatch.chdir(tmp_path)  # examples write relative paths
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{path.name} block {i + 1}", "exec"), namespace)


def test_every_file_has_its_examples_found():
    """The fence pattern finds the blocks (a change of style would silently skip them)."""
    counted = {f.name: len(python_blocks(f)) for f in FILES}
    assert counted["README.md"] >= 1 and counted["operator.md"] >= 1 and counted["moshi.md"] >= 2, counted
    total = sum(f.read_text().count("```python") for f in FILES)
    assert total == sum(counted.values())


def test_the_tests_the_design_map_names_exist():
    text = (ROOT / "docs" / "design.md").read_text()
    for file, name in re.findall(r"`(tests/[\w/]+\.py)(?:::(\w+))?`", text):
        path = ROOT / file
        assert path.is_file(), file
        if name:
            assert re.search(rf"^def {name}\b", path.read_text(), re.M), f"{file}::{name}"
    for file, prefix in re.findall(r"`(tests/[\w/]+\.py)::(\w+)_\*`", text):
        assert re.search(rf"^def {prefix}_", (ROOT / file).read_text(), re.M), f"{file}::{prefix}_*"

"""The README's first Python example runs as written."""

import re
from pathlib import Path


def test_readme_api_example_runs():
    text = (Path(__file__).parent.parent / "README.md").read_text()
    example = re.findall(r"```python\n(.*?)```", text, re.S)[0]
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)
    assert namespace["nxt"].shape == (2, 1, 64)

"""The README's Python examples run as written."""

import re
from pathlib import Path


EXAMPLES = re.findall(r"```python\n(.*?)```", (Path(__file__).parent.parent / "README.md").read_text(), re.S)


def run(example: str) -> dict:
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)
    return namespace


def test_layer_example():
    assert run(EXAMPLES[0])["nxt"].shape == (2, 1, 64)


def test_transformers_example(tmp_path, capsys):
    ns = run(EXAMPLES[1].replace("/tmp/ittt-example", str(tmp_path / "saved")))
    assert ns["out"].shape == (2, 60)
    assert "all checks passed" in capsys.readouterr().out
    assert (tmp_path / "saved" / "model.safetensors").is_file()


def test_moshi_example(tmp_path, capsys):
    import os

    os.environ.setdefault("NO_TORCH_COMPILE", "1")
    ns = run(EXAMPLES[2].replace("/tmp/ittt-moshi", str(tmp_path / "moshi")))
    assert "{0: tensor([2, 2])}" in capsys.readouterr().out
    assert (tmp_path / "moshi" / "ttt.safetensors").is_file() and ns["again"] is not None

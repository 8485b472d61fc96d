"""`ittt` itself: the commands assembled in `inplace_ttt.cli.main`, reached as the `ittt` entry point
and as ``python -m inplace_ttt.cli`` (how torchrun starts it)."""

import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from inplace_ttt.cli import main

SRC = Path(__file__).resolve().parents[2] / "src"


def test_unknown_arguments_are_refused():
    with pytest.raises(SystemExit):
        main(["eval", "--model", "m", "--bogus", "1"])


def test_every_command_is_there(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for command in ("demo", "doctor", "eval", "export", "train", "pretrain", "moshi-encode", "moshi-infer", "moshi-eval"):
        assert f"    {command} " in out, command


@pytest.mark.integration
def test_the_entry_point_and_python_m_reach_main():
    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "ittt"]
    assert script.value == "inplace_ttt.cli:main" and script.load() is main
    done = subprocess.run(
        [sys.executable, "-m", "inplace_ttt.cli", "export", "--help"], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(SRC)}
    )
    assert done.returncode == 0 and done.stdout.startswith("usage: ittt export"), done.stderr

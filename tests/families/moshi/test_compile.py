"""moshi's lazy torch.compile is off for a run on a CPU, on for one on a GPU, and a user's own setting wins."""

import os
import subprocess
import sys

import pytest
import torch

from inplace_ttt.families.moshi.compile import compile_off_on_cpu
from tests.train.conftest import REPO


@pytest.mark.parametrize(
    ("device", "user", "expected"),
    [("cpu", None, "1"), ("cuda", None, None), ("auto", None, None if torch.cuda.is_available() else "1"), ("cpu", "", "")],
)
def test_off_on_a_cpu_only(monkeypatch, device, user, expected):
    if user is None:
        monkeypatch.delenv("NO_TORCH_COMPILE", raising=False)
    else:
        monkeypatch.setenv("NO_TORCH_COMPILE", user)
    compile_off_on_cpu(device)
    assert os.environ.get("NO_TORCH_COMPILE") == expected


@pytest.mark.integration
def test_a_cpu_training_run_leaves_moshis_kernels_uncompiled(tmp_path):
    """`ittt train` in a fresh process, as a user's shell starts it (no NO_TORCH_COMPILE): moshi's
    kernels are its plain functions, not `torch_compile_lazy`'s wrappers (whose first calls compiled
    for seconds; they carry the function as ``__wrapped__``)."""
    pytest.importorskip("moshi")
    from tests.train.conftest import write_run

    config = write_run(tmp_path, "ttt_only", steps=1)
    check = (
        "import sys; from inplace_ttt.cli import main\n"
        "assert main(['train', sys.argv[1], '--model.device', 'cpu', '--train.report_to', '[]']) == 0\n"
        "from moshi.modules.gating import gating_forward_kernel\n"
        "print('compiled:', hasattr(gating_forward_kernel, '__wrapped__'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "NO_TORCH_COMPILE"}
    done = subprocess.run([sys.executable, "-c", check, str(config)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "compiled: False" in done.stdout

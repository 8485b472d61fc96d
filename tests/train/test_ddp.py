"""Two processes (DDP over gloo, CPU) follow the loss curve of one process with the same global batch."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.train.test_trainer import REPO, edit, losses

TORCHRUN = Path(sys.executable).parent / "torchrun"


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed beside this Python")
def test_two_processes_match_one(workspace):
    config = workspace["config"]
    edit(config, train={"max_steps": 4, "save_steps": 100, "per_device_train_batch_size": 2,
                        "output_dir": str(workspace["root"] / "one")})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "inplace_ttt.cli", "train", str(config)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    edit(config, train={"per_device_train_batch_size": 1, "output_dir": str(workspace["root"] / "two")})
    two = subprocess.run(
        [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m", "inplace_ttt.cli", "train", str(config)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = losses(workspace["root"] / "one"), losses(workspace["root"] / "two")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for step in a:
        assert abs(a[step] - b[step]) <= 1e-4 * abs(a[step]), (step, a[step], b[step])

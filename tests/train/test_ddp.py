"""Several processes on CPU (gloo): DDP and FSDP runs follow one process with the same global batch,
for a transformers model and for Moshi."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.train.conftest import REPO, edit, losses

TORCHRUN = Path(sys.executable).parent / "torchrun"
pytestmark = [pytest.mark.integration, pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed beside this Python")]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def one_process(config):
    done = subprocess.run([sys.executable, "-m", "inplace_ttt.cli", "train", str(config)], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def two_processes(config):
    done = subprocess.run(
        [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m", "inplace_ttt.cli", "train", str(config)],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def same_run(a: Path, b: Path, steps: list[int], weights: str, rtol: float = 1e-4) -> None:
    la, lb = losses(a), losses(b)
    assert sorted(la) == sorted(lb) == steps
    for step in la:
        assert abs(la[step] - lb[step]) <= rtol * abs(la[step]), (step, la[step], lb[step])
    x, y = (load_file(str(d / "final" / weights)) for d in (a, b))
    assert set(x) == set(y) and all(torch.allclose(x[k].float(), y[k].float(), rtol=rtol, atol=1e-6) for k in x)


def fsdp_config(tmp_path, layer_class: str) -> str:
    path = tmp_path / "fsdp.json"
    path.write_text(json.dumps({"version": 2, "transformer_layer_cls_to_wrap": [layer_class]}))
    return str(path)


def test_two_processes_match_one(workspace):
    config = workspace["config"]
    edit(config, train={"max_steps": 4, "save_steps": 100, "per_device_train_batch_size": 2, "output_dir": str(workspace["root"] / "one")})
    one_process(config)
    edit(config, train={"per_device_train_batch_size": 1, "output_dir": str(workspace["root"] / "two")})
    two_processes(config)
    same_run(workspace["root"] / "one", workspace["root"] / "two", [1, 2, 3, 4], "model.safetensors")


def test_fsdp_over_two_processes_matches_one(workspace):
    """FSDP2 (fully sharded parameters, gradients and optimizer state) on CPU with gloo."""
    config = workspace["config"]
    edit(config, train={"max_steps": 3, "save_steps": 2, "per_device_train_batch_size": 2, "output_dir": str(workspace["root"] / "one")})
    one_process(config)
    edit(
        config,
        train={
            "per_device_train_batch_size": 1,
            "output_dir": str(workspace["root"] / "fsdp"),
            "fsdp": "full_shard auto_wrap",
            "fsdp_config": fsdp_config(workspace["root"], "LlamaDecoderLayer"),
        },
    )
    two_processes(config)
    same_run(workspace["root"] / "one", workspace["root"] / "fsdp", [1, 2, 3], "model.safetensors")
    assert (workspace["root"] / "fsdp" / "checkpoint-2" / "COMPLETE").is_file()


def moshi_config(tmp_path, **train):
    pytest.importorskip("moshi")
    from tests.train.conftest import write_run

    path = write_run(tmp_path, train.pop("mode", "ttt_only"), steps=3)
    edit(
        path,
        train={
            "save_steps": 100,
            "logging_steps": 1,
            "report_to": [],
            "learning_rate": 1e-3,
            "ttt_params_learning_rate": 1e-2,
            "per_device_train_batch_size": 1,
            **train,
        },
    )
    return path


def test_moshi_on_two_processes_matches_one_with_the_same_global_batch(tmp_path):
    """DDP: 2 processes of 1 row each follow one process accumulating 2 rows (moshi-finetune's loss is a
    per-batch mean, so the same global batch is 2 micro-batches of 1). 3 steps: the 7 rows' first epoch
    (at its end, DDP pads the last global batch with a repeated row, one process runs a shorter one)."""
    path = moshi_config(tmp_path, gradient_accumulation_steps=2, output_dir=str(tmp_path / "one"))
    one_process(path)
    edit(path, train={"gradient_accumulation_steps": 1, "output_dir": str(tmp_path / "two")})
    done = two_processes(path)
    same_run(tmp_path / "one", tmp_path / "two", [1, 2, 3], "ttt.safetensors")
    # every trainable parameter gets a gradient, and DDP is told so (no search for unused ones each step, no
    # warning that it found none); the final folder is said once, not once per process
    assert "find_unused_parameters" not in done.stderr + done.stdout
    assert done.stdout.count("final model: ") == 1


def test_moshi_full_mode_with_fsdp_over_two_processes_matches_one(tmp_path):
    path = moshi_config(tmp_path, mode="full", gradient_accumulation_steps=2, output_dir=str(tmp_path / "one"))
    one_process(path)
    edit(
        path,
        train={
            "gradient_accumulation_steps": 1,
            "output_dir": str(tmp_path / "fsdp"),
            "fsdp": "full_shard auto_wrap",
            "fsdp_config": fsdp_config(tmp_path, "StreamingTransformerLayer"),
        },
    )
    two_processes(path)
    same_run(tmp_path / "one", tmp_path / "fsdp", [1, 2, 3], "model.safetensors")
    same_run(tmp_path / "one", tmp_path / "fsdp", [1, 2, 3], "ttt.safetensors")

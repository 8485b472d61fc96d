"""What the training tests share: tiny runs written to disk, their configs edited, their losses read, `ittt` in a fresh process."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.tiny_hf import VOCAB, tiny, tiny_tokenizer

WORDS = [f"w{i}" for i in range(VOCAB - 10)]


def write_docs(folder, n_docs, seed=0, words_per_doc=(20, 60)):
    """Repetitive word documents (TTT's favourite kind): each repeats a short random phrase."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_docs):
        phrase = rng.sample(WORDS, 5)
        n = rng.randint(*words_per_doc)
        (folder / f"doc{i:03d}.txt").write_text(" ".join(phrase[j % 5] for j in range(n)))
    return folder


@pytest.fixture
def workspace(tmp_path):
    """A tiny base model with its tokenizer, training and eval documents, and a run config."""
    model_dir = tmp_path / "base"
    tiny().save_pretrained(model_dir)
    tiny_tokenizer(WORDS).save_pretrained(model_dir)
    train_dir = write_docs(tmp_path / "train", 12)
    eval_dir = write_docs(tmp_path / "eval", 3, seed=1)
    config = {
        "model": str(model_dir),
        "ttt": {"layers": "every 2", "chunk_size": 8, "ttt_lr": 0.5},
        "data": {"train": [str(train_dir)], "eval": [str(eval_dir)], "row_length": 32},
        "train": {
            "output_dir": str(tmp_path / "run"),
            "learning_rate": 1e-3,
            "ttt_params_learning_rate": 5e-3,
            "max_steps": 6,
            "per_device_train_batch_size": 2,
            "logging_steps": 1,
            "save_steps": 2,
            "warmup_ratio": 0.0,
            "report_to": [],
            "seed": 0,
        },
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return {"root": tmp_path, "config": path, "model": model_dir, "run": tmp_path / "run", "train": train_dir}


REPO = Path(__file__).resolve().parents[2]


def edit(config_path, **sections):
    data = yaml.safe_load(config_path.read_text())
    for section, values in sections.items():
        if isinstance(values, dict):
            data.setdefault(section, {}).update(values)
        else:
            data[section] = values
    config_path.write_text(yaml.safe_dump(data))
    return config_path


def losses(run_dir):
    """Loss per step from metrics.jsonl (the last line wins when a resumed run logs a step again)."""
    out = {}
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "loss" in row:
            out[row["step"]] = row["loss"]
    return out


def run_cli(*args, env=None):
    """`ittt` in a fresh process (what a user runs; also how a crash is simulated)."""
    cmd = [sys.executable, "-c", "import sys; from inplace_ttt.cli import main; sys.exit(main(sys.argv[1:]))", *args]
    return subprocess.run(cmd, cwd=REPO, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=300)


def train_dying_in_checkpoint(config, step: int):
    """`ittt train` in a process that dies while writing checkpoint-`step`: after its files, before its COMPLETE mark."""
    crash = (
        "import os, inplace_ttt.train.run_dir as t; real = t.write_atomic\n"
        "def write(path, text):\n"
        f"    if 'checkpoint-{step}' in str(path): os._exit(9)\n"
        "    real(path, text)\n"
        "t.write_atomic = write\n"
        "import sys; from inplace_ttt.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    return subprocess.run([sys.executable, "-c", crash, "train", str(config)], cwd=REPO, capture_output=True, text=True, timeout=300)


def write_run(tmp_path, mode, steps=3):
    """A Moshi run: a tiny LMModel's files, three conversations' codes and a run.yaml."""
    from safetensors.torch import save_file

    from tests.tiny_moshi import TINY, random_codes, tiny_lm, write_tiny_checkpoint

    tmp_path.mkdir(exist_ok=True)
    write_tiny_checkpoint(tmp_path / "model.safetensors")
    (tmp_path / "lm.json").write_text(json.dumps(TINY))
    data = tmp_path / "conversations"
    data.mkdir()
    lm = tiny_lm()
    for i, T in enumerate([40, 33, 16]):
        codes = random_codes(lm, 1, T)[0].to(torch.int32)
        save_file({"codes": codes}, str(data / f"conv{i}.safetensors"))
    config = {
        "model_type": "moshi",
        "model": {"weights": str(tmp_path / "model.safetensors"), "lm_kwargs": str(tmp_path / "lm.json")},
        "ttt": {"layers": [0, 2], "chunk_size": 4, "target_source": "token_embeddings"},
        "data": {"train": [str(data)], "row_length": 16},
        "train": {
            "output_dir": str(tmp_path / "run"),
            "mode": mode,
            "learning_rate": 1e-2,
            "max_steps": steps,
            "per_device_train_batch_size": 2,
            "logging_steps": 1,
        },
        "lora": {"r": 2, "alpha": 4, "target_modules": ["linear_in", "linear_out"]},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def moshi_run(tmp_path, train=None, **sections):
    path = write_run(tmp_path, "ttt_only", steps=6)
    defaults = {"save_steps": 2, "logging_steps": 1, "report_to": [], "learning_rate": 1e-3, "ttt_params_learning_rate": 1e-2}
    edit(path, train={**defaults, **(train or {})}, **sections)
    return path

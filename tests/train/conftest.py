import random

import pytest
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

"""moshi-finetune's example config through `ittt train`: training steps per second with In-Place
TTT and without (`--ttt null`), the same config, data, batches and seed otherwise.

Parts, nothing downloaded: a small random `LMModel` (dim 256, 12 temporal layers; TTT on layers 0
and 6, chunk 64), Mimi at the tests' small width with random weights, a tokenizer trained here,
conversations spoken by espeak-ng in moshi-finetune's layout (manifest, stereo wavs, transcripts),
all in a repo snapshot inside a huggingface_hub cache of its own, read offline by repo id. The
config is moshi-finetune's example recipe (LoRA, loss weights, schedule) at a small size
(`CONFIG`). Each run is a fresh `ittt train` process; the first encodes the wavs into the codes
cache and is not timed. Steps per second come from the engine's own summary (training only); the
command's wall time (start-up, doctor, saving included) is reported beside it. TTT and baseline
runs are interleaved; medians of ``--repeats``.

    python benchmarks/moshi_finetune.py [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_TORCH_COMPILE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the test helpers build the parts

REPO = "bench/tiny-moshi"
LM = dict(dim=256, num_heads=4, num_layers=12, context=3000, depformer_dim=128, depformer_dim_feedforward=256)
CONFIG = {  # moshi-finetune's example/moshi_7B.yaml, at a small size (the changed values: duration_sec, batch_size, max_steps, lora.rank, param_dtype)
    "full_finetuning": False,
    "lora": {"enable": True, "rank": 16, "scaling": 2.0, "ft_embed": False},
    "first_codebook_weight_multiplier": 100.0,
    "text_padding_weight": 0.5,
    "duration_sec": 20,
    "batch_size": 2,
    "max_steps": 8,
    "gradient_checkpointing": True,
    "optim": {"lr": 2e-6, "weight_decay": 0.1, "pct_start": 0.05},
    "seed": 0,
    "log_freq": 1,
    "eval_freq": 100,
    "do_eval": False,
    "do_ckpt": True,
    "ckpt_freq": 100,
    "save_adapters": True,
    "param_dtype": "float32",  # bf16 on a CPU times the CPU's bf16 kernels, not the method
    "ttt": {"layers": [0, 6], "chunk_size": 64},
}


def build(root: Path, conversations: int, seconds: float) -> Path:
    """The repo snapshot (in `root/hub`) and the dataset (in `root/data`); returns the manifest."""
    import io

    import sentencepiece as spm
    from moshi.models.lm import LMModel
    from safetensors.torch import save_file

    from tests.speech.conftest import WORDS, dialogue, mimi_config, random_mimi, write_conversation
    from tests.tiny_moshi import TINY, hub_snapshot

    parts = root / "parts"
    parts.mkdir()
    mimi = random_mimi(small=True)
    save_file({k: v.contiguous() for k, v in mimi.state_dict().items()}, str(parts / "mimi.safetensors"))
    (parts / "mimi.json").write_text(json.dumps(mimi_config()))
    lm_kwargs = {**TINY, **LM, "card": mimi.cardinality, "text_card": 64}
    import torch

    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in LMModel(**lm_kwargs, dtype=torch.float32).state_dict().items()}, str(parts / "model.safetensors"))
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([" ".join(WORDS)] * 50), model_writer=model, vocab_size=64, pad_id=3, hard_vocab_limit=False, minloglevel=2
    )
    (parts / "tokenizer.model").write_bytes(model.getvalue())
    files = {name: parts / name for name in ("model.safetensors", "mimi.safetensors", "mimi.json", "tokenizer.model")}
    names = {"mimi_name": "mimi.safetensors", "mimi_config_name": "mimi.json", "tokenizer_name": "tokenizer.model"}
    hub_snapshot(root / "hub", REPO, files, {**lm_kwargs, **names})
    data = root / "data"
    data.mkdir()
    lines = []
    for i in range(conversations):
        main, user = dialogue(seconds, seed=i)
        write_conversation(data / f"c{i}.wav", seconds, 24000, main, user)
        lines.append(json.dumps({"path": f"c{i}.wav", "duration": seconds}))
    (data / "train.jsonl").write_text("\n".join(lines) + "\n")
    return data / "train.jsonl"


def run(root: Path, config: Path, name: str, threads: int, extra: list[str]) -> dict:
    """One `ittt train` in a fresh process: its steps per second (the engine's summary) and wall time."""
    env = {
        **os.environ,
        "HF_HUB_CACHE": str(root / "hub"),
        "HF_HUB_OFFLINE": "1",
        "XDG_CACHE_HOME": str(root / "xdg"),
        "OMP_NUM_THREADS": str(threads),
        "PYTHONPATH": str(ROOT / "src"),
    }
    out = root / "runs" / name
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "inplace_ttt.cli", "train", str(config), "--run_dir", str(out), *extra]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    wall = time.perf_counter() - start
    summary = next(json.loads(line) for line in reversed((out / "metrics.jsonl").read_text().splitlines()) if "train_runtime" in line)
    steps = max(json.loads(line).get("step", 0) for line in (out / "metrics.jsonl").read_text().splitlines())
    return {"steps_per_second": steps / summary["train_runtime"], "train_runtime": summary["train_runtime"], "wall": wall}  # the summary rounds to 3 digits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--conversations", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=40.0)
    args = parser.parse_args()
    import yaml

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        manifest = build(root, args.conversations, args.seconds)
        config = root / "moshi_7B.yaml"
        config.write_text(
            yaml.safe_dump({**CONFIG, "data": {"train_data": str(manifest), "shuffle": True}, "moshi_paths": {"hf_repo_id": REPO}, "run_dir": ""})
        )
        load = [os.getloadavg()[0]]
        first = run(root, config, "encode", args.threads, [])  # encodes the wavs into the cache: not timed
        runs: dict[str, list] = {"ttt": [], "baseline": []}
        for i in range(args.repeats):
            for name, extra in (("ttt", []), ("baseline", ["--ttt", "null"])):
                runs[name].append(run(root, config, f"{name}{i}", args.threads, extra))
                load.append(os.getloadavg()[0])
        result = {name: {key: statistics.median(r[key] for r in rs) for key in ("steps_per_second", "train_runtime", "wall")} for name, rs in runs.items()}
        result["ttt_over_baseline_steps_per_second"] = result["ttt"]["steps_per_second"] / result["baseline"]["steps_per_second"]
        result["all"] = runs
        result["first_run_wall_with_encoding"] = first["wall"]
        result["load_average"] = [min(load), max(load)]
        result["setup"] = {"config": CONFIG, "lm": LM, "conversations": args.conversations, "seconds": args.seconds, "threads": args.threads}
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

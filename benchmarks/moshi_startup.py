"""Where a tiny Moshi run's time goes outside training: `ittt train` with ``model_type: moshi`` in a
fresh process, as a user runs it (no ``NO_TORCH_COMPILE`` set), split at the training loop.

A tiny random `LMModel` (tests/tiny_moshi.py's settings), 8 conversations of random codes, 40 steps
of ``ttt_only`` with the first-batch doctor and TensorBoard on (the defaults) and two checkpoints.
The process runs `inplace_ttt.cli.main` with the Trainer's ``train`` wrapped to note the time on
entry and exit: wall seconds since the process started and its CPU seconds (user + sys, every
thread), so each run splits into start-up (imports, config, model, data, doctor, Trainer), the
training loop (checkpoints included) and the end (final save, exit): wall and CPU up to the
process's last moment, as the parent sees them (the CPU of the whole process tree, torch.compile's
worker processes included, from the parent's resource usage of its children). Medians over `--repeats`
runs; each row also gives the load average before it (other jobs on the machine slow the wall
times; the CPU times much less).

    python benchmarks/moshi_startup.py [--repeats 3] [--steps 40] [--threads 2] [--src OTHER/src]

``--src`` times another checkout's package (an older commit's, say) on the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# the measured process: `ittt train ...` with stamps at the training loop's ends
STAMPED = """
import json, os, sys, time
import psutil
me = psutil.Process()
def stamp():
    cpu = me.cpu_times()
    return {"wall": time.time() - me.create_time(), "cpu": cpu.user + cpu.system}
import inplace_ttt.train.trainer as engine
stamps = {}
real = engine.TTTTrainer.train
def train(self, *args, **kwargs):
    stamps["begin"] = stamp()
    try:
        return real(self, *args, **kwargs)
    finally:
        stamps["end"] = stamp()
engine.TTTTrainer.train = train
from inplace_ttt.cli import main
code = main(sys.argv[2:])
stamps["done"] = stamp()
with open(sys.argv[1], "w") as f:
    json.dump(stamps, f)
sys.exit(code)
"""


def write_run(root: Path, steps: int) -> Path:
    """A tiny LMModel's files, 8 conversations of random codes and the run's YAML in `root`."""
    import torch
    import yaml
    from safetensors.torch import save_file

    sys.path.insert(0, str(REPO))
    from tests.tiny_moshi import TINY, random_codes, write_tiny_checkpoint

    lm = write_tiny_checkpoint(root / "model.safetensors")
    (root / "lm.json").write_text(json.dumps(TINY))
    data = root / "conversations"
    data.mkdir()
    torch.manual_seed(0)
    for i in range(8):
        save_file({"codes": random_codes(lm, 1, 64)[0].to(torch.int32)}, str(data / f"conv{i}.safetensors"))
    config = {
        "model_type": "moshi",
        "model": {"weights": str(root / "model.safetensors"), "lm_kwargs": str(root / "lm.json")},
        "ttt": {"layers": [0, 2], "chunk_size": 8, "target_source": "token_embeddings"},
        "data": {"train": [str(data)], "row_length": 32},
        "train": {"max_steps": steps, "per_device_train_batch_size": 2, "logging_steps": 10, "save_steps": steps // 2, "learning_rate": 1e-3},
    }
    path = root / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def one_run(config: Path, out: Path, threads: int, src: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "NO_TORCH_COMPILE"}  # a user's shell: nothing set
    env.update(OMP_NUM_THREADS=str(threads), PYTHONPATH=str(src))
    stamps_file = out.with_suffix(".json")
    cmd = [sys.executable, "-c", STAMPED, str(stamps_file), "train", str(config), "--train.output_dir", str(out)]
    started, before = time.time(), resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    whole = time.time() - started  # to the process's very end (its interpreter's teardown too)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # all of its CPU, its own worker processes' too (torch.compile's)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    s = json.loads(stamps_file.read_text())
    return {
        "startup_wall": s["begin"]["wall"],
        "startup_cpu": s["begin"]["cpu"],
        "training_wall": s["end"]["wall"] - s["begin"]["wall"],
        "training_cpu": s["end"]["cpu"] - s["begin"]["cpu"],
        "end_wall": whole - s["end"]["wall"],
        "end_cpu": cpu - s["end"]["cpu"],
        "whole_wall": whole,
        "whole_cpu": cpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--src", type=Path, default=REPO / "src", help="the package's source folder to time")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = write_run(Path(tmp), args.steps)
        runs = []
        for i in range(args.repeats):
            load = os.getloadavg()[0]
            run = one_run(config, Path(tmp) / f"run{i}", args.threads, args.src.resolve())
            runs.append(run)
            print(json.dumps({**{k: round(v, 2) for k, v in run.items()}, "load_before": round(load, 1)}), flush=True)
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(
        f"median of {len(runs)} (wall / CPU s): start-up {med['startup_wall']:.1f} / {med['startup_cpu']:.1f}, "
        f"training {med['training_wall']:.1f} / {med['training_cpu']:.1f}, final save and exit {med['end_wall']:.1f} / {med['end_cpu']:.1f}, "
        f"whole {med['whole_wall']:.1f} / {med['whole_cpu']:.1f}; "
        f"load average now {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()

"""Moshi training: steps/s and peak memory with and without In-Place TTT, on the shared engine and on a hand loop.

The same tiny random Moshi `LMModel`, the same rows of codes, moshi-finetune's weighted loss, AdamW,
clipping at 1.0, `full` mode; the TTT copy has TTT on every 6th temporal layer. Two engines train
each model: `hand`, a plain PyTorch loop (forward, backward, clip, step: what `ittt train` ran
for Moshi before it moved onto the Trainer), and `engine`, the Trainer-based engine every run
now uses (`train.trainer.TTTTrainer`, its telemetry included). Time: median seconds per step
over the timed steps of all repeats (the four runs alternate within each repeat, so drift hits
all). Memory: peak RSS of a fresh process per run, above the process before the model existed.

    python benchmarks/moshi_train.py
    python benchmarks/moshi_train.py --dim 512 --row-length 1024 --threads 1
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("NO_TORCH_COMPILE", "1")

import torch  # noqa: E402
from moshi.models.lm import LMModel  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

import inplace_ttt  # noqa: E402
from inplace_ttt.families.moshi import MoshiLoss  # noqa: E402
from inplace_ttt.families.moshi.codes import ConversationRows, collate  # noqa: E402
from inplace_ttt.train.config import TrainConfig  # noqa: E402
from inplace_ttt.train.telemetry import TTTTelemetry  # noqa: E402
from inplace_ttt.train.trainer import TTTTrainer  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from moshi_shape import lm_kwargs  # noqa: E402
from op import status_bytes  # noqa: E402  (the same peak-RSS reading as the operator benchmark)

RUNS = [(model, engine) for engine in ("hand", "engine") for model in ("base", "ttt")]


def build(args, ttt: bool) -> MoshiLoss:
    torch.manual_seed(0)
    lm = LMModel(**lm_kwargs(args.dim, args.layers, args.row_length, args.card, args.text_card), dtype=torch.float32)
    if ttt:
        lm = inplace_ttt.convert(lm, inplace_ttt.TTTConfig(layers="every 6", chunk_size=args.chunk, ttt_lr=1.0, target_source="token_embeddings"))
    return MoshiLoss(lm, first_codebook_weight=100.0, text_padding_weight=0.5).train()


def rows(args, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    codes = torch.randint(0, args.card, (n, 17, args.row_length), generator=g)
    codes[:, 0] = torch.randint(0, args.text_card, (n, args.row_length), generator=g)
    return codes


def hand_loop(module: MoshiLoss, data: torch.Tensor, steps: int, batch: int) -> list[float]:
    opt = torch.optim.AdamW(module.parameters(), lr=1e-5, weight_decay=0.1)
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        loss = module(data[i * batch % len(data) :][:batch])["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return times


class _StepTimes(TrainerCallback):
    def __init__(self):
        self.times, self._t0 = [], 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._t0)


def engine(module: MoshiLoss, data: torch.Tensor, steps: int, batch: int) -> list[float]:
    layers = dict(inplace_ttt.ttt_layers(module.lm))
    timer = _StepTimes()
    with tempfile.TemporaryDirectory() as out:
        args = TrainConfig(
            output_dir=out,
            mode="full",
            learning_rate=1e-5,
            max_steps=steps,
            per_device_train_batch_size=batch,
            logging_steps=10**6,
            save_steps=10**6,
            warmup_ratio=0.0,
            report_to=[],
            doctor=False,
            bf16=False,
            label_names=["codes"],
            use_cpu=True,
            disable_tqdm=True,
        )
        trainer = TTTTrainer(
            model=module, args=args, train_dataset=ConversationRows(data), data_collator=collate, callbacks=[timer], telemetry=TTTTelemetry(layers)
        )
        trainer.telemetry.enable()
        trainer.train()
    return timer.times


def peak_memory(args, run: str) -> int:
    cmd = [sys.executable, __file__, "--memory-of", run] + [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k != "memory_of"]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak"]  # the Trainer prints its summary before


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--card", type=int, default=1024)
    p.add_argument("--text-card", type=int, default=8000)
    p.add_argument("--chunk", type=int, default=128)
    p.add_argument("--row-length", type=int, default=512)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=8, help="timed steps per run and repeat")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--memory-of", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = rows(args, args.batch * (args.warmup + args.steps))
    loops = {"hand": hand_loop, "engine": engine}
    if args.memory_of:
        model, how = args.memory_of.split("/")
        torch.zeros(1)
        before = status_bytes("VmRSS")
        loops[how](build(args, model == "ttt"), data, 3, args.batch)
        print(json.dumps({"peak": status_bytes("VmHWM") - before}))
        return
    built = {model: build(args, model == "ttt") for model in ("base", "ttt")}
    times = {run: [] for run in RUNS}
    for _ in range(args.repeats):
        for model, how in RUNS:  # fresh weights and optimizer each time: every run does the same work
            steps = loops[how](copy.deepcopy(built[model]), data, args.warmup + args.steps, args.batch)
            times[(model, how)] += steps[args.warmup :]
    sec = {run: statistics.median(t) for run, t in times.items()}
    mem = {run: peak_memory(args, "/".join(run)) / 2**20 for run in RUNS}
    n_params = sum(p.numel() for p in built["base"].parameters()) / 1e6
    layers = [i for i, _ in inplace_ttt.ttt_layers(built["ttt"].lm)]
    print(
        f"# tiny Moshi LMModel: {args.layers} temporal layers, dim {args.dim}, {n_params:.1f}M params; TTT on layers {layers}, chunk "
        f"{args.chunk}; {args.batch} x {args.row_length} steps per training step; full mode, AdamW, clip 1.0; fp32, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads; median of {args.repeats} x {args.steps} steps"
    )
    print("| engine | model | s/step | steps/s | x base (same engine) | x hand loop (same model) | peak MiB | x base |")
    print("|---|---|---|---|---|---|---|---|")
    for model, how in RUNS:
        s = sec[(model, how)]
        print(
            f"| {how} | {model} | {s:.3f} | {1 / s:.2f} | {s / sec[('base', how)]:.3f} | {s / sec[(model, 'hand')]:.3f} | "
            f"{mem[(model, how)]:.0f} | {mem[(model, how)] / mem[('base', how)]:.3f} |"
        )
    for how in ("hand", "engine"):
        print(f"TTT cost on the {how} loop: {100 * (sec[('ttt', how)] / sec[('base', how)] - 1):.1f}% time per step")
    for model in ("base", "ttt"):
        print(f"engine vs hand loop, {model}: {100 * (sec[(model, 'engine')] / sec[(model, 'hand')] - 1):+.1f}% time per step")


if __name__ == "__main__":
    main()

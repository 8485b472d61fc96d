"""Global gradient clipping against clipping the TTT parameters as their own group, measured.

At the warm start the target convolutions' gradients can hold nearly all of the global gradient
norm, so one global clip (`train.max_grad_norm`) scales every other parameter's gradient down by
as much. AdamW is nearly invariant to a constant gradient scale, so whether this slows training
is a question for a measurement, not for arithmetic: this script trains the embedded base model
with `ittt train` (the demo's settings: TTT on layers 1 and 3, chunk 128, rows of 2 x 1024 tokens,
AdamW 3e-4, TTT parameters 1e-5, warmup 5%, `max_grad_norm` 1.0) under both clippings, for each
`W_target` start, with the same batches and seed per pair, and compares the training loss.

    python benchmarks/clipping.py                       # identity and diagonal starts, seeds 0-2, 100 steps
    python benchmarks/clipping.py --seeds 0 1 2 3 4 --steps 150 --out runs/clipping

Per run it reports the step-1 split of the gradient (the TTT parameters' share of the squared
norm, the factor the global clip multiplies the other parameters by) and the mean training loss
over the last half of the steps; per start, the paired difference (own group minus global) with a
95% t-interval over seeds. Every run's metrics stay in `--out`.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch

from inplace_ttt.assets import base_model_dir, corpus_files
from inplace_ttt.config import TTTConfig
from inplace_ttt.train.config import DataConfig, RunConfig, TrainConfig
from inplace_ttt.train.run import train

CLIPPINGS = {"global": None, "own group": 1.0}  # train.ttt_max_grad_norm


def run_one(out: Path, init: str, clipping: str, seed: int, steps: int) -> dict:
    run = out / f"{init}-{clipping.replace(' ', '_')}-seed{seed}"
    if not (run / "final").is_dir():
        config = RunConfig(
            model=str(base_model_dir()),
            ttt=TTTConfig(layers="every 2 from 1", chunk_size=128, ttt_lr=3.0, target_init=init),
            data=DataConfig(train=corpus_files("train"), row_length=1024),
            train=TrainConfig(
                output_dir=str(run), learning_rate=3e-4, ttt_learning_rate=1e-5, weight_decay=0.1, warmup_ratio=0.05,
                max_steps=steps, per_device_train_batch_size=2, logging_steps=1, save_steps=10 * steps, seed=seed,
                max_grad_norm=1.0, ttt_max_grad_norm=CLIPPINGS[clipping], report_to=[],
            ),
        )
        started = time.perf_counter()
        train(config)
        (run / "wall_seconds").write_text(f"{time.perf_counter() - started:.1f}\n")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged = {r["step"]: r for r in rows if "loss" in r}
    first = logged[min(logged)]
    late = [logged[s]["loss"] for s in sorted(logged) if s > steps // 2]
    return {"share": first["ttt/grad_share"], "clip_scale": first["clip_scale"], "late_loss": statistics.fmean(late)}


# Student's t 0.975 quantiles for 1..10 degrees of freedom (scipy is not a dependency)
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def t_interval(xs: list[float]) -> tuple[float, float, float]:
    """Mean and 95% t-interval (two-sided) of paired differences (up to 11 of them)."""
    mean = statistics.fmean(xs)
    if len(xs) < 2:
        return mean, math.nan, math.nan
    half = T975[len(xs) - 2] * statistics.stdev(xs) / math.sqrt(len(xs))
    return mean, mean - half, mean + half


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--inits", nargs="+", default=["identity", "diagonal"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/clipping")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    results = {}
    for init in args.inits:
        for seed in args.seeds:
            for clipping in CLIPPINGS:
                results[init, clipping, seed] = run_one(out, init, clipping, seed, args.steps)
    print(f"# embedded base model, demo settings, {args.steps} steps of 2 x 1024 tokens, seeds {args.seeds}; "
          f"torch {torch.__version__}, {args.threads} thread(s)")
    print("| W_target start | clipping | seed | step-1 TTT share of squared norm | step-1 clip scale of the others | mean loss, last half |")
    print("|---|---|---|---|---|---|")
    for (init, clipping, seed), r in results.items():
        print(f"| {init} | {clipping} | {seed} | {r['share']:.3f} | {r['clip_scale']:.4f} | {r['late_loss']:.4f} |")
    print()
    print("| W_target start | own group - global, mean loss of the last half | 95% interval |")
    print("|---|---|---|")
    for init in args.inits:
        diffs = [results[init, "own group", s]["late_loss"] - results[init, "global", s]["late_loss"] for s in args.seeds]
        mean, lo, hi = t_interval(diffs)
        print(f"| {init} | {mean:+.4f} | [{lo:+.4f}, {hi:+.4f}] |")


if __name__ == "__main__":
    main()

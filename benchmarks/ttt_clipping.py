"""Does clipping the TTT parameters' gradients on their own help the other parameters train?

At the warm start the target convolutions' gradients dominate the global gradient norm, so one
global clip at 1.0 multiplies every other gradient by a small factor (`clip_scale`). AdamW divides
by its running gradient scale, so a constant factor would not change its updates; a factor that
changes over training does. This runs the demo's training (embedded base model and corpus, its
steps, rows, learning rates and TTT settings) with one global clip and with the TTT parameters
clipped as their own group (`train.ttt_params_max_grad_norm`), on the same batches for each seed, plus the
baseline without TTT, and prints the training loss of each and the paired difference per seed with a
95% bootstrap interval over steps, then the mean over seeds.

    python benchmarks/ttt_clipping.py                  # 3 seeds, the demo's 150 steps
    python benchmarks/ttt_clipping.py --seeds 0 1 2 3 4 --steps 300

Each run's folder (metrics.jsonl) stays under --out; a run whose metrics are there is not run again.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from inplace_ttt.assets import base_model_dir, corpus_files
from inplace_ttt.demo import DemoSettings
from inplace_ttt.train.config import DataConfig, RunConfig, TrainConfig
from inplace_ttt.train.run import train

VARIANTS = {"global clip": {"ttt_params_max_grad_norm": None}, "TTT clipped apart": {"ttt_params_max_grad_norm": 1.0}, "no TTT (baseline)": None}


def run(variant: str, seed: int, steps: int, out: Path) -> dict[int, dict]:
    """The run's per-step log, training it first unless its metrics show it finished."""
    metrics = out / "metrics.jsonl"
    if not (metrics.is_file() and "train_runtime" in metrics.read_text()):
        train(config_of(variant, seed, steps, out))
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    return {r["step"]: r for r in rows if "loss" in r}


def config_of(variant: str, seed: int, steps: int, out: Path) -> RunConfig:
    demo = DemoSettings()
    extra = VARIANTS[variant]
    return RunConfig(
        model=str(base_model_dir()),
        ttt=None if extra is None else demo.ttt,
        data=DataConfig(train=corpus_files("train"), row_length=demo.row_length),
        train=TrainConfig(
            output_dir=str(out),
            learning_rate=demo.learning_rate,
            ttt_params_learning_rate=demo.ttt_params_learning_rate if extra is not None else None,
            weight_decay=0.1,
            warmup_ratio=0.05,
            max_steps=steps,
            per_device_train_batch_size=demo.batch_size,
            logging_steps=1,
            save_steps=10 * steps,
            seed=seed,
            report_to=[],
            doctor=False,
            **(extra or {}),
        ),
    )


def interval(diffs: list[float], draws: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of the mean (resampling steps)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.tensor(diffs, dtype=torch.float64)
    means = x[torch.randint(0, len(x), (draws, len(x)), generator=g)].mean(1)
    return float(means.quantile(0.025)), float(means.quantile(0.975))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=DemoSettings().steps)
    p.add_argument("--skip", type=int, default=50, help="steps left out of the means (the first ones, where all runs start alike)")
    p.add_argument("--out", type=Path, default=Path("runs/ttt-clipping"), help="where the runs go (kept; finished runs are reused)")
    args = p.parse_args()
    logs: dict[tuple[str, int], dict[int, dict]] = {}
    started = time.perf_counter()
    for seed in args.seeds:
        for variant in VARIANTS:
            logs[(variant, seed)] = run(variant, seed, args.steps, args.out / f"{variant}-{seed}".replace(" ", "_"))
    steps = [s for s in range(args.skip + 1, args.steps + 1)]
    print(
        f"# demo training ({args.steps} steps, means over steps {args.skip + 1}-{args.steps}), seeds {args.seeds}, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads, {time.perf_counter() - started:.0f} s in all"
    )
    print("| seed | global clip: loss | its clip_scale | TTT clipped apart: loss | its clip_scale | baseline loss | apart - global (95% CI over steps) |")
    print("|---|---|---|---|---|---|---|")
    per_seed = []
    for seed in args.seeds:
        g, a, b = (logs[(v, seed)] for v in VARIANTS)
        mean = lambda log, key: statistics.fmean(log[s][key] for s in steps)  # noqa: E731
        diffs = [a[s]["loss"] - g[s]["loss"] for s in steps]
        lo, hi = interval(diffs, seed=seed)
        per_seed.append(statistics.fmean(diffs))
        print(
            f"| {seed} | {mean(g, 'loss'):.4f} | {mean(g, 'clip_scale'):.4f} | {mean(a, 'loss'):.4f} | {mean(a, 'clip_scale'):.4f} | "
            f"{mean(b, 'loss'):.4f} | {per_seed[-1]:+.4f} ({lo:+.4f}, {hi:+.4f}) |"
        )
    if len(per_seed) > 1:
        m, sd = statistics.fmean(per_seed), statistics.stdev(per_seed)
        t = {2: 12.71, 3: 4.30, 4: 3.18, 5: 2.78, 6: 2.57}.get(len(per_seed), 2.26)  # Student's t, 97.5%
        half = t * sd / len(per_seed) ** 0.5
        print(f"mean over seeds of (apart - global): {m:+.4f} nats, 95% CI ({m - half:+.4f}, {m + half:+.4f})")


if __name__ == "__main__":
    main()

"""Per-step streaming time of a tiny random Moshi `LMModel` with and without In-Place TTT.

Both models are built in this process from the same random weights; the converted one has TTT
on every 6th temporal layer with trained-looking (non-zero) targets, so chunk updates really
happen while streaming. Each step is one `LMGen.step` (temporal transformer, text sampling
and the depformer's 8 audio codebooks), greedy; on CUDA, LMGen captures its step in a CUDA
graph, TTT layers included. Times are medians over all timed steps of all repeats (models
interleaved); the ratio is TTT / original.

    python benchmarks/moshi_stream.py
    python benchmarks/moshi_stream.py --dim 512 --layers 12 --batch 1 4 --device cuda
    python benchmarks/moshi_stream.py --threads 1
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time

os.environ.setdefault("NO_TORCH_COMPILE", "1")

import torch  # noqa: E402
from moshi.models.lm import LMGen, LMModel  # noqa: E402

import inplace_ttt  # noqa: E402
from inplace_ttt.families.moshi import update_counts  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from moshi_shape import lm_kwargs  # noqa: E402


def build(args, device):
    torch.manual_seed(0)
    base = LMModel(**lm_kwargs(args.dim, args.layers, context=3000), device=device, dtype=torch.float32).eval()
    ttt = inplace_ttt.convert(copy.deepcopy(base), inplace_ttt.TTTConfig(layers="every 6", chunk_size=args.chunk, ttt_lr=1.0, target_source="token_embeddings"))
    with torch.no_grad():
        for _, layer in inplace_ttt.ttt_layers(ttt):
            layer.ttt.conv_weight.normal_(0, 0.02)
    return base, ttt


@torch.no_grad()
def step_times(lm, batch, steps, warmup, device):
    """Seconds per `LMGen.step` for the timed steps (after `warmup` steps), and the TTT update counts."""
    gen = LMGen(lm, use_sampling=False)
    user = torch.randint(0, lm.card, (batch, lm.num_codebooks - lm.dep_q - 1, 1), device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    with gen.streaming(batch):
        for i in range(warmup + steps):
            sync()
            t0 = time.perf_counter()
            gen.step(user)
            sync()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
        counts = {i: c.tolist() for i, c in update_counts(lm).items()}
    return times, counts


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--chunk", type=int, default=64)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (one is steadier on a shared machine)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    base, ttt = build(args, device)
    print(
        f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}; temporal dim {args.dim}, "
        f"{args.layers} layers, TTT on layers {[i for i, _ in inplace_ttt.ttt_layers(ttt)]}, chunk {args.chunk}, "
        f"{args.steps} timed steps x {args.repeats} repeats"
    )
    print("| batch | original ms/step | TTT ms/step | x | TTT updates per layer and row |")
    print("|---|---|---|---|---|")
    for batch in args.batch:
        for lm in (base, ttt):  # first calls (and CUDA graph captures) out of the timing
            step_times(lm, batch, 2, args.warmup, device)
        runs = {"base": [], "ttt": []}
        for _ in range(args.repeats):
            for name, lm in (("base", base), ("ttt", ttt)):
                times, counts = step_times(lm, batch, args.steps, args.warmup, device)
                runs[name] += times
                if name == "ttt":
                    updates = sorted({c for row in counts.values() for c in row})
        b, t = statistics.median(runs["base"]) * 1e3, statistics.median(runs["ttt"]) * 1e3
        print(f"| {batch} | {b:.2f} | {t:.2f} | {t / b:.2f} | {updates} |")


if __name__ == "__main__":
    main()

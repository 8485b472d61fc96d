"""Training throughput and peak memory of a tiny transformers model with and without In-Place TTT.

The same random tiny Llama (or, with `--sliding-window N`, transformers' Mistral with that
attention window: the SWA backbone), the same packed rows, AdamW, forward + backward + step; the
TTT copy has TTT on every 6th layer. Time: median tokens/s over timed steps after warm-up, both models
interleaved in one process. Memory: peak RSS of a fresh process per model, above the process
before the model existed.

    python benchmarks/train.py
    python benchmarks/train.py --row-length 4096 --chunk 512 --batch 2
    python benchmarks/train.py --sliding-window 256      # SWA + TTT against SWA alone
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig

import inplace_ttt

sys.path.insert(0, os.path.dirname(__file__))
from op import status_bytes  # noqa: E402  (the same peak-RSS reading as the operator benchmark)


def build(args, ttt: bool):
    shape = dict(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=4 * args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 64,
        num_key_value_heads=args.hidden // 64,
        max_position_embeddings=args.row_length,
    )
    config = LlamaConfig(**shape) if args.sliding_window is None else MistralConfig(**shape, sliding_window=args.sliding_window)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").train()
    if ttt:
        model = inplace_ttt.convert(model, inplace_ttt.TTTConfig(layers="every 6", chunk_size=args.chunk, ttt_lr=1.0))
    return model


def rows(args):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, args.vocab, (args.batch, args.row_length), generator=g)
    pos = torch.arange(args.row_length).expand(args.batch, -1)
    return {"input_ids": ids, "labels": ids, "position_ids": pos}


def step(model, opt, batch):
    loss = model(**batch, use_cache=False).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def peak_memory(args, ttt: bool) -> int:
    cmd = [sys.executable, __file__, "--memory-of", "ttt" if ttt else "base"] + [
        f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k != "memory_of" and v is not None
    ]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    return json.loads(subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout)["peak"]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--vocab", type=int, default=1000)
    p.add_argument("--chunk", type=int, default=256)
    p.add_argument("--row-length", type=int, default=2048)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--sliding-window", type=int, help="attention window (builds a Mistral); default: full attention (Llama)")
    p.add_argument("--memory-of", choices=["base", "ttt"], help=argparse.SUPPRESS)
    args = p.parse_args()
    batch = rows(args)
    if args.memory_of:
        torch.zeros(1)
        before = status_bytes("VmRSS")
        model = build(args, args.memory_of == "ttt")
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        for _ in range(2):
            step(model, opt, batch)
        print(json.dumps({"peak": status_bytes("VmHWM") - before}))
        return
    models = {name: build(args, name == "ttt") for name in ("base", "ttt")}
    opts = {name: torch.optim.AdamW(m.parameters(), lr=1e-4) for name, m in models.items()}
    times = {name: [] for name in models}
    for i in range(args.warmup + args.steps):
        for name in models:  # interleaved, so drift hits both
            t0 = time.perf_counter()
            step(models[name], opts[name], batch)
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t0)
    tokens = args.batch * args.row_length
    speed = {name: tokens / statistics.median(t) for name, t in times.items()}
    mem = {name: peak_memory(args, name == "ttt") / 2**20 for name in models}
    n_params = sum(p.numel() for p in models["base"].parameters()) / 1e6
    layers = [i for i, _ in inplace_ttt.ttt_layers(models["ttt"])]
    family = "Llama" if args.sliding_window is None else f"Mistral (sliding window {args.sliding_window})"
    print(
        f"# tiny {family} {args.layers} layers, hidden {args.hidden}, {n_params:.1f}M params; TTT on layers {layers}, "
        f"chunk {args.chunk}; {args.batch} x {args.row_length} tokens per step; AdamW; fp32, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; median of {args.steps} steps"
    )
    print("| model | tokens/s | x base | peak MiB | x base |")
    print("|---|---|---|---|---|")
    for name in models:
        print(f"| {name} | {speed[name]:.0f} | {speed[name] / speed['base']:.3f} | {mem[name]:.0f} | {mem[name] / mem['base']:.3f} |")
    print(f"TTT throughput cost: {100 * (1 - speed['ttt'] / speed['base']):.1f}%")


if __name__ == "__main__":
    main()

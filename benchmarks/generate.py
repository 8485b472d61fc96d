"""Prefill and per-token decode time of a converted tiny transformers model against the original.

Both models are built in this process from the same random weights; the converted one has TTT
on every 6th layer with trained-looking (non-zero) targets, so chunk updates really happen
while decoding. Times are medians over repeats; ratios are converted / original.

    python benchmarks/generate.py
    python benchmarks/generate.py --batch 1 4 --prompt 1024 --new 256
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

import inplace_ttt


def build(args):
    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=getattr(args, "intermediate", None) or 4 * args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 64,
        num_key_value_heads=getattr(args, "kv_heads", None) or args.hidden // 64,
        max_position_embeddings=8192,
    )
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()
    ttt = inplace_ttt.convert(copy.deepcopy(base), inplace_ttt.TTTConfig(layers="every 6", chunk_size=args.chunk, ttt_lr=1.0))
    with torch.no_grad():
        for _, layer in inplace_ttt.ttt_layers(ttt):
            layer.ttt.conv_weight.normal_(0, 0.02)
    return base, ttt


@torch.no_grad()
def run(model, ids, new_tokens):
    """Prefill `ids`, then decode `new_tokens` greedily; returns (prefill s, per-token s)."""
    sync = torch.cuda.synchronize if ids.is_cuda else (lambda: None)
    sync()
    t0 = time.perf_counter()
    out = model(input_ids=ids, use_cache=True)
    sync()
    t1 = time.perf_counter()
    cache = out.cache
    token = out.logits[:, -1:].argmax(-1)
    for _ in range(new_tokens):
        out = model(input_ids=token, cache=cache, use_cache=True)
        token = out.logits[:, -1:].argmax(-1)
    sync()
    t2 = time.perf_counter()
    return t1 - t0, (t2 - t1) / new_tokens


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--vocab", type=int, default=1000)
    p.add_argument("--chunk", type=int, default=64)
    p.add_argument("--prompt", type=int, default=512)
    p.add_argument("--new", type=int, default=128)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    base, ttt = build(args)
    n_params = sum(p.numel() for p in base.parameters()) / 1e6
    print(
        f"# tiny Llama {args.layers} layers, hidden {args.hidden}, {n_params:.1f}M params; TTT on layers "
        f"{[i for i, _ in inplace_ttt.ttt_layers(ttt)]}, chunk {args.chunk}; prompt {args.prompt}, {args.new} new tokens; "
        f"fp32, torch {torch.__version__}, {torch.get_num_threads()} threads; median of {args.repeats}"
    )
    print("| batch | prefill original ms | prefill TTT ms | x | decode original ms/token | decode TTT ms/token | x |")
    print("|---|---|---|---|---|---|---|")
    for batch in args.batch:
        ids = torch.randint(0, args.vocab, (batch, args.prompt), generator=torch.Generator().manual_seed(batch))
        results = {"base": [], "ttt": []}
        for m in (base, ttt):
            run(m, ids, 4)  # warm-up
        for _ in range(args.repeats):
            for name, m in (("base", base), ("ttt", ttt)):  # interleaved, so drift hits both
                results[name].append(run(m, ids, args.new))
        pre = {k: statistics.median(r[0] for r in v) for k, v in results.items()}
        dec = {k: statistics.median(r[1] for r in v) for k, v in results.items()}
        print(
            f"| {batch} | {pre['base'] * 1e3:.1f} | {pre['ttt'] * 1e3:.1f} | {pre['ttt'] / pre['base']:.2f} | "
            f"{dec['base'] * 1e3:.2f} | {dec['ttt'] * 1e3:.2f} | {dec['ttt'] / dec['base']:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()

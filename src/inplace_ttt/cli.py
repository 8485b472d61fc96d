"""`ittt`: the command line."""

from __future__ import annotations

import argparse
import sys
import time

import torch


def _demo(args: argparse.Namespace) -> int:
    """End-to-end smoke run of one TTT layer: warm start, training steps, streaming."""
    from . import FastWeightState, InPlaceTTTMLP, TTTConfig

    torch.manual_seed(args.seed)
    d, h, T = 64, 256, args.length

    class GatedMLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gate_proj = torch.nn.Linear(d, h, bias=False)
            self.up_proj = torch.nn.Linear(d, h, bias=False)
            self.down_proj = torch.nn.Linear(h, d, bias=False)
            self.act_fn = torch.nn.SiLU()

        def forward(self, x):
            return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))

    mlp = GatedMLP()
    layer = InPlaceTTTMLP(mlp, TTTConfig(layers=[0], chunk_size=args.chunk_size, ttt_lr=1.0))
    # a repetitive sequence: the same block of inputs over and over, target = the next input
    block = torch.randn(1, args.chunk_size, d)
    x = block.repeat(1, T // args.chunk_size + 1, 1)[:, : T + 1]
    inputs, targets = x[:, :-1], x[:, 1:]
    print(f"In-Place TTT smoke run: gated MLP d={d} h={h}, {T} tokens, chunk {args.chunk_size}")
    print(f"  warm start  max |TTT - original| = {(layer(inputs) - mlp(inputs)).abs().max().item():.2e}")
    opt = torch.optim.AdamW([p for n, p in layer.named_parameters() if n.startswith("ttt.")], lr=args.lr)
    t0 = time.perf_counter()
    for step in range(args.steps):
        loss = (layer(inputs) - targets).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        norms = {n.split(".")[-1]: p.grad.norm().item() for n, p in layer.named_parameters() if n.startswith("ttt.")}
        opt.step()
        if step % max(1, args.steps // 5) == 0 or step == args.steps - 1:
            print(f"  step {step:3d}  loss {loss.item():.4f}  grad conv {norms['conv_weight']:.2e}  W_target {norms['target_weight']:.2e}")
    print(f"  {args.steps} steps in {time.perf_counter() - t0:.1f}s")
    with torch.no_grad():
        full = layer(inputs)
        state = FastWeightState()
        pieces = [layer(inputs[:, : T // 2], state=state)] + [layer(inputs[:, t : t + 1], state=state) for t in range(T // 2, T)]
        streamed = torch.cat(pieces, 1)
    print(f"  streaming   max |stream - full| = {(streamed - full).abs().max().item():.2e}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ittt", description="In-Place Test-Time Training")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="a small end-to-end run")
    demo.add_argument("--steps", type=int, default=30)
    demo.add_argument("--length", type=int, default=512)
    demo.add_argument("--chunk-size", type=int, default=64)
    demo.add_argument("--lr", type=float, default=1e-2)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

"""Time and peak memory of the In-Place TTT operator, forward + backward.

Three methods on the same inputs, in the same process for time:
  plain     the down projection alone, F.linear(z, w0)
  ittt      inplace_ttt(z, v, w0, lr, C)
  cumsum    the published recipe: materialise every chunk's update [B, n, d, h], take an
            exclusive cumsum, form every chunk's weight and let autograd do the rest

Peak memory is measured in a fresh process per (method, T, C): peak RSS minus the RSS before
the inputs exist, with glibc's mmap threshold pinned so freed blocks leave RSS at once.

    python benchmarks/op.py                       # d=1024 h=4096, C in 256/512/1024, T in 4k/16k/64k
    python benchmarks/op.py --lengths 4096 --repeats 1
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
import torch.nn.functional as F

from inplace_ttt.ops import inplace_ttt

LR = 1.0


def cumsum_baseline(z, v, w0, lr, C):
    B, T, h = z.shape
    n = T // C
    zc, vc = z.view(B, n, C, h), v.view(B, n, C, -1)
    dW = torch.einsum("bncd,bnch->bndh", vc, zc)
    S = torch.cumsum(dW, 1) - dW  # chunk i sees the updates of chunks < i
    return torch.einsum("bnch,bndh->bncd", zc, w0 + lr * S).reshape(B, T, -1)


def make_inputs(T, d, h, with_v=True, seed=0, device="cpu", dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    put = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731  drawn on the CPU: the same numbers on every device
    z = put(torch.randn(1, T, h, generator=g)).requires_grad_()
    w0 = put(torch.randn(d, h, generator=g) * 0.02).requires_grad_()
    grad = put(torch.randn(1, T, d, generator=g))
    v = put(torch.randn(1, T, d, generator=g) * 0.01).requires_grad_() if with_v else None
    return z, v, w0, grad


def run(method, z, v, w0, grad, C):
    if method == "plain":
        out = F.linear(z, w0)
    elif method == "ittt":
        out = inplace_ttt(z, v, w0, LR, C)
    else:
        out = cumsum_baseline(z, v, w0, LR, C)
    out.backward(grad)
    for t in (z, v, w0):
        if t is not None:
            t.grad = None


def baseline_fits(T, d, h, C, budget_gb):
    # autograd keeps about four [n, d, h] fp32 tensors alive (updates, cumsum, weights, grads)
    return 4 * (T // C) * d * h * 4 / 2**30 < budget_gb


def status_bytes(field):
    """`VmRSS` (now) or `VmHWM` (peak) of this process. Not ru_maxrss: that survives exec, so a
    child would report its parent's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure_memory(method, T, C, d, h):
    """In a fresh process: peak bytes above the process before inputs were made."""
    torch.zeros(1)  # load the runtime before the reference point
    base = status_bytes("VmRSS")
    z, v, w0, grad = make_inputs(T, d, h, with_v=method != "plain")  # the plain projection has no target
    run(method, z, v, w0, grad, C)
    return status_bytes("VmHWM") - base


def memory_in_subprocess(method, T, C, d, h):
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    cmd = [sys.executable, __file__, "--memory-of", method, str(T), str(C), "--d", str(d), "--h", str(h)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["peak"]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--d", type=int, default=1024)
    p.add_argument("--h", type=int, default=4096)
    p.add_argument("--chunks", type=int, nargs="+", default=[256, 512, 1024])
    p.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384, 65536])
    p.add_argument("--repeats", type=int, default=3, help="timed runs per method (median), after one warm-up")
    p.add_argument("--budget-gb", type=float, default=8.0, help="skip the cumsum baseline above this estimate")
    p.add_argument("--memory-of", nargs=3, metavar=("METHOD", "T", "C"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory_of:
        method, T, C = args.memory_of[0], int(args.memory_of[1]), int(args.memory_of[2])
        print(json.dumps({"peak": measure_memory(method, T, C, args.d, args.h)}))
        return

    print(f"# In-Place TTT operator, forward+backward, fp32, d={args.d} h={args.h}, B=1, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| T | C | method | time ms (median) | x plain | peak MiB | x plain | extra over plain MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for T in args.lengths:
        z, v, w0, grad = make_inputs(T, args.d, args.h)
        for C in args.chunks:
            methods = ["plain", "ittt"] + (["cumsum"] if baseline_fits(T, args.d, args.h, C, args.budget_gb) else [])
            times = {}
            for m in methods:
                run(m, z, v, w0, grad, C)  # warm-up
                samples = []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    run(m, z, v, w0, grad, C)
                    samples.append(time.perf_counter() - t0)
                times[m] = statistics.median(samples)
            mem = {m: memory_in_subprocess(m, T, C, args.d, args.h) for m in methods}
            for m in methods:
                extra = (mem[m] - mem["plain"]) / 2**20
                print(
                    f"| {T} | {C} | {m} | {times[m] * 1e3:.0f} | {times[m] / times['plain']:.2f} | "
                    f"{mem[m] / 2**20:.0f} | {mem[m] / mem['plain']:.2f} | {extra:.0f} |",
                    flush=True,
                )
            if "cumsum" not in methods:
                print(f"| {T} | {C} | cumsum | skipped: needs > {args.budget_gb:.0f} GB | | | | |", flush=True)


if __name__ == "__main__":
    main()

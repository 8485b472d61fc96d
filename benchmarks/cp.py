"""Context parallelism of the In-Place TTT op: communication against local compute, per layer.

R processes (gloo, CPU) split one sequence of T tokens. Per rank and per layer, forward +
backward, medians over the repeats:

  local     the op on this rank's slice alone (no group): the compute a rank does anyway
  cp        the op on the slice with the group (metadata check, carry, corrections)
  wait      time a rank waits for the others before the collectives of `cp` (a barrier is
            put before each one: imbalance, not transfer); the most any rank waited
  coll      time inside those torch.distributed collectives once all ranks are there, counted by
            wrapping `all_gather` / `all_reduce`
  bytes     what one rank receives in those collectives (all_gather: the other ranks' pieces)

Two layouts: `aligned` (slices of whole chunks: the carry is the state alone) and `straddle`
(a chunk crosses each boundary: the partial update travels too).

    python benchmarks/cp.py                      # R in 2, 4; d=512 h=2048 T=8192 C=512
    python benchmarks/cp.py --ranks 2 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from inplace_ttt.ops import inplace_ttt

LR = 1.0


class CollectiveMeter:
    """Wraps `dist.all_gather` and `dist.all_reduce` to add up their time (after a barrier, whose
    time is the wait) and received bytes."""

    def __init__(self):
        self.reset()
        gather, reduce = dist.all_gather, dist.all_reduce
        dist.all_gather = lambda out, t, **kw: self._timed(gather, (len(out) - 1) * t.numel() * t.element_size(), out, t, **kw)
        dist.all_reduce = lambda t, **kw: self._timed(reduce, 2 * t.numel() * t.element_size(), t, **kw)  # ring: ~2x

    def _timed(self, fn, received, *args, **kwargs):
        start = time.perf_counter()
        dist.barrier(group=kwargs.get("group"))
        arrived = time.perf_counter()
        result = fn(*args, **kwargs)
        self.wait += arrived - start
        self.seconds += time.perf_counter() - arrived
        self.bytes += received
        return result

    def reset(self):
        self.seconds, self.wait, self.bytes = 0.0, 0.0, 0


def fwd_bwd(z, v, w0, grad, C, group):
    out = inplace_ttt(z, v, w0, LR, C, group=group)
    out.backward(grad)
    for t in (z, v, w0):
        t.grad = None


def worker(rank, world, store, args, layout, results):
    torch.set_num_threads(max(1, args.threads // world))
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    T = args.length + (args.chunk // 2 if layout == "straddle" else 0)
    lo, hi = rank * T // world, (rank + 1) * T // world
    g = torch.Generator().manual_seed(rank)
    z = torch.randn(1, hi - lo, args.hidden, generator=g).requires_grad_()
    v = (torch.randn(1, hi - lo, args.dim, generator=g) * 0.01).requires_grad_()
    w0 = (torch.randn(args.dim, args.hidden, generator=g) * 0.02).requires_grad_()
    grad = torch.randn(1, hi - lo, args.dim, generator=g)
    meter = CollectiveMeter()
    times = {"local": [], "cp": [], "coll": [], "wait": []}
    for i in range(args.repeats + 1):  # the first run warms up
        dist.barrier()
        start = time.perf_counter()
        fwd_bwd(z, v, w0, grad, args.chunk, None)
        local = time.perf_counter() - start
        dist.barrier()
        meter.reset()
        start = time.perf_counter()
        fwd_bwd(z, v, w0, grad, args.chunk, dist.group.WORLD)
        cp = time.perf_counter() - start
        if i:
            times["local"].append(local), times["cp"].append(cp), times["coll"].append(meter.seconds), times["wait"].append(meter.wait)
    row = {k: statistics.median(t) * 1e3 for k, t in times.items()}
    row["bytes"] = meter.bytes
    gathered = [None] * world
    dist.all_gather_object(gathered, row)
    if rank == 0:
        results.put(gathered)
    dist.destroy_process_group()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--length", type=int, default=8192, help="tokens of the whole sequence")
    parser.add_argument("--chunk", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads shared by the ranks")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, args.threads // max(args.ranks))))
    print(
        f"d={args.dim} h={args.hidden} T={args.length} C={args.chunk} B=1 fp32, {os.cpu_count()} CPU cores, "
        f"torch {torch.__version__}; per layer, forward + backward, median of {args.repeats}, slowest rank (wait: most waiting rank)"
    )
    print("| ranks | layout | received / rank | collectives ms | wait ms | local op ms | cp op ms | cp / local | collectives / local |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    ctx = mp.get_context("spawn")
    for world in args.ranks:
        for layout in ("aligned", "straddle"):
            results = ctx.SimpleQueue()
            with tempfile.TemporaryDirectory() as tmp:
                mp.start_processes(worker, args=(world, os.path.join(tmp, "store"), args, layout, results), nprocs=world, start_method="spawn")
            per_rank = results.get()
            worst = max(per_rank, key=lambda r: r["cp"])
            row = {"ranks": world, "layout": layout, **worst, "wait": max(r["wait"] for r in per_rank)}
            rows.append(row)
            print(
                f"| {world} | {layout} | {worst['bytes'] / 2**20:.1f} MiB | {worst['coll']:.1f} | {worst['wait']:.1f} | {worst['local']:.1f} | "
                f"{worst['cp']:.1f} | {worst['cp'] / worst['local']:.2f} | {worst['coll'] / worst['local']:.2f} |",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()

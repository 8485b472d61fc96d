"""Time to pack one long document into training rows: `train.data.pack` against the loop it
replaced (which sliced the rest of the document once per row: quadratic in its length), in the
same process, medians of a few repeats. The quadratic loop is kept here only as the baseline.

    python benchmarks/packing.py                          # 100k .. 1.6M tokens, rows of 4096
    python benchmarks/packing.py --lengths 100000,400000 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from functools import partial

import torch

from inplace_ttt.train.data import pack


def quadratic_pack(docs, row_length: int, pad_id: int):
    """The loop `pack` replaced: `rest = rest[room:]` copies what is left of the document every row."""
    ids: list[int] = []
    pos: list[int] = []
    for doc in docs:
        rest = list(doc)
        while rest:
            room = row_length - len(ids) % row_length
            ids += rest[:room]
            pos += range(len(rest[:room]))
            rest = rest[room:]
    short = -len(ids) % row_length
    return torch.tensor(ids + [pad_id] * short).view(-1, row_length), torch.tensor(pos + [-1] * short).view(-1, row_length)


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="100000,200000,400000,800000,1600000", help="document lengths in tokens")
    parser.add_argument("--row-length", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline-max", type=int, default=800000, help="longest document the quadratic loop is timed on")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"one document, rows of {args.row_length}; torch {torch.__version__}, {torch.get_num_threads()} threads, load {os.getloadavg()[0]:.1f}")
    print("| tokens | pack (s) | s per M tokens | quadratic loop (s) | loop / pack |")
    print("|---:|---:|---:|---:|---:|")
    for n in (int(x) for x in args.lengths.split(",")):
        doc = torch.randint(0, 50000, (n,)).tolist()
        new = median_seconds(partial(pack, [doc], args.row_length, 0), args.repeats)
        rows = pack([doc], args.row_length, 0)
        if n <= args.baseline_max:
            old = median_seconds(partial(quadratic_pack, [doc], args.row_length, 0), args.repeats)
            ids, pos = quadratic_pack([doc], args.row_length, 0)
            assert torch.equal(ids, rows.input_ids) and torch.equal(pos, rows.position_ids)  # the same rows
            tail = f"{old:.2f} | {old / new:.0f}x"
        else:
            tail = "(not timed) | "
        print(f"| {n:,} | {new:.3f} | {new / n * 1e6:.3f} | {tail} |", flush=True)


if __name__ == "__main__":
    main()

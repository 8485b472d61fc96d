"""The paper's Fig. 2 in miniature: one small sliding-window model pretrained from scratch twice,
with and without In-Place TTT from step 0, then the loss of a held-out block as the context
before it grows past the attention window, the two models paired passage by passage.

Both runs are `ittt pretrain` runs (`train.scratch`, the shared engine) from one config that
differs only in its `ttt` section: the same tokenizer (trained here once, then given to both as
`tokenizer.path`), the same random start (the engine seeds before building the model; TTT adds
only its own zero-started parameters), the same batches in the same order (same seed; every
batch's digest is recorded through the family's collate and compared). TTT follows the paper's
from-scratch setting: targets from the token embeddings.

The evaluation is `ittt eval`'s sliding-window view (`eval.loss.sliding_window`) on passages cut
from the held-out books: per context length, each model's block loss with its 95% interval over
passages, and the paired difference TTT - SWA with its own 95% interval
(`eval.intervals.difference_interval`). Writes `report.md`, `results.json`, `fig2.png` and
`training_loss.png` into `--out`; a run whose `final/` and batch record exist is reused.

    python benchmarks/from_scratch.py                          # the recorded run (TRAINING.md): ~7 CPU minutes
    python benchmarks/from_scratch.py --target-init identity   # the demo's start (its second table)
    python benchmarks/from_scratch.py --steps 20 --out /tmp/fs-try       # a quick look
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import time
from pathlib import Path

import torch

from inplace_ttt import TTTConfig
from inplace_ttt.assets import corpus_files
from inplace_ttt.documents import read_documents
from inplace_ttt.eval.intervals import difference_interval
from inplace_ttt.eval.loss import sliding_window
from inplace_ttt.eval.report import line_with_interval, plot_training, pyplot, save_figure
from inplace_ttt.eval.runner import model_to_evaluate, passages
from inplace_ttt.files import write_atomic
from inplace_ttt.train import scratch
from inplace_ttt.train.config import DataConfig, TrainConfig
from inplace_ttt.train.trainer import run_training

NAMES = ("SWA", "SWA + TTT")
BATCHES = "batches.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/from-scratch")
    p.add_argument("--train-data", nargs="+", default=corpus_files("train"))
    p.add_argument("--heldout-data", nargs="+", default=corpus_files("heldout"))
    p.add_argument("--vocab", type=int, default=2048, help="the BPE's vocabulary")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--window", type=int, default=32, help="sliding attention window (tokens)")
    p.add_argument("--row-length", type=int, default=512)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--ttt-layers", default="every 2 from 1")
    p.add_argument("--chunk", type=int, default=64)
    p.add_argument("--eta", type=float, default=3.0, help="ttt_lr, the fast weights' learning rate")
    p.add_argument("--target-init", default="diagonal", help="W_target's start: the release's (diagonal, std 0.02) or identity")
    p.add_argument("--block", type=int, default=64, help="the held-out block scored after each context")
    p.add_argument("--passages", type=int, default=96)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-only", choices=["swa", "ttt"], help="train this run only (two processes can train the runs side by side), no evaluation")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    return p.parse_args(argv)


def ttt_config(args) -> TTTConfig:
    """The paper's from-scratch setting: targets from the token embeddings."""
    return TTTConfig(layers=args.ttt_layers, chunk_size=args.chunk, ttt_lr=args.eta, target_source="token_embeddings", target_init=args.target_init)


def run_config(args, tokenizer_dir: Path, out: Path, ttt: TTTConfig | None) -> scratch.ScratchRunConfig:
    """One `ittt pretrain` config; the two runs differ only in `ttt` and the output folder."""
    return scratch.ScratchRunConfig(
        model=scratch.ArchitectureConfig(
            hidden_size=args.hidden,
            intermediate_size=3 * args.hidden,
            num_hidden_layers=args.layers,
            num_attention_heads=args.heads,
            num_key_value_heads=args.heads,
            max_position_embeddings=max(2 * args.row_length, 1024),
            sliding_window=args.window,
        ),
        ttt=ttt,
        data=DataConfig(train=list(args.train_data), row_length=args.row_length),
        tokenizer=scratch.TokenizerSettings(path=str(tokenizer_dir)),
        train=TrainConfig(
            output_dir=str(out),
            learning_rate=args.lr,
            weight_decay=0.1,
            warmup_ratio=0.05,
            max_steps=args.steps,
            per_device_train_batch_size=args.batch,
            logging_steps=max(1, args.steps // 50),
            save_steps=10 * args.steps,  # no intermediate checkpoints: only final/
            seed=args.seed,
            report_to=[],
            doctor=False,  # both runs alike: the doctor would draw a batch of its own for the TTT run only
            bf16="false",
            use_cpu=True,
        ),
    )


def digest(batch: dict) -> str:
    """What makes a batch the same batch: its token ids and positions."""
    h = hashlib.sha256()
    for key in ("input_ids", "position_ids", "labels"):
        h.update(batch[key].numpy().tobytes())
    return h.hexdigest()[:16]


def pretrain(config: scratch.ScratchRunConfig) -> tuple[Path, list[str]]:
    """`ittt pretrain` with this config, recording the digest of every batch its data loader makes."""
    seen: list[str] = []

    def prepare(c):
        parts = scratch.prepare(c)

        def collate(rows):
            batch = parts.collate(rows)
            seen.append(digest(batch))
            return batch

        return dataclasses.replace(parts, collate=collate)

    return run_training(scratch.settle(config), prepare), seen


def train_runs(args) -> dict[str, dict]:
    """Tokenizer once, then both runs, or the one of `--train-only` (each reused if its folder is complete)."""
    out = Path(args.out)
    tokenizer_dir = out / "tokenizer"
    if not (tokenizer_dir / "tokenizer.json").is_file():
        started = time.perf_counter()
        tok = scratch.train_tokenizer(read_documents(args.train_data), args.vocab)
        tok.save_pretrained(tokenizer_dir)
        print(f"tokenizer: {args.vocab} tokens trained in {time.perf_counter() - started:.0f} s", flush=True)
    runs = {}
    for name, short, ttt in zip(NAMES, ("swa", "ttt"), (None, ttt_config(args))):
        if args.train_only not in (None, short):
            continue
        folder = out / "runs" / short
        record = folder / BATCHES
        if not record.is_file():
            started = time.perf_counter()
            final, seen = pretrain(run_config(args, tokenizer_dir, folder, ttt))
            # accelerate's loader draws one batch ahead of the last step: only the first `steps` were trained on
            write_atomic(record, json.dumps({"digests": seen[: args.steps], "seconds": time.perf_counter() - started}) + "\n")
        runs[name] = {"final": folder / "final", **json.loads(record.read_text()), "losses": train_losses(folder / "metrics.jsonl")}
        print(f"{name}: {len(runs[name]['digests'])} batches, {runs[name]['seconds']:.0f} s", flush=True)
    return runs


def train_losses(metrics: Path) -> dict[int, float]:
    rows = (json.loads(line) for line in metrics.read_text().splitlines())
    return {row["step"]: row["loss"] for row in rows if row.get("loss") is not None}


def contexts(args) -> list[int]:
    """0, then doubling from the window, then the longest that fits a training row."""
    longest = args.row_length - args.block
    return [0] + [c for c in (args.window * 2**k for k in range(16)) if c < longest] + [longest]


def fig2(args, runs: dict[str, dict]) -> dict:
    """The block loss per context for both models, and the paired difference TTT - SWA."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(Path(args.out) / "tokenizer")
    ids = tokenizer(read_documents(args.heldout_data), add_special_tokens=False)["input_ids"]
    docs = passages([torch.tensor(d) for d in ids], args.row_length + 1, args.passages)
    views = {}
    for name, run in runs.items():
        model = model_to_evaluate(str(run["final"]), torch.float32, None)
        views[name] = sliding_window(model, docs, contexts(args), args.block, piece=args.row_length + 1, batch=16, seed=args.seed)["contexts"]
    swa, ttt = (views[n] for n in NAMES)
    inside = max(c for c in swa if c <= args.window)  # the longest context attention still covers whole
    rows = []
    for c in swa:
        a, b, a0, b0 = ttt[c]["per_document"], swa[c]["per_document"], ttt[inside]["per_document"], swa[inside]["per_document"]
        both = [d for d in range(len(docs)) if a[d] is not None]
        diff = [a[d] - b[d] for d in both]
        rows.append(
            {
                "context": c,
                **{name: {k: views[name][c][k] for k in ("loss", "interval")} for name in NAMES},
                "difference": sum(diff) / len(diff),
                "difference_interval": difference_interval([a[d] for d in both], [b[d] for d in both], args.seed),
                # what TTT gains from context beyond `inside` over what SWA gains: the part of the gap that grows past the window
                "growth": sum(a[d] - a0[d] - b[d] + b0[d] for d in both) / len(both),
                "growth_interval": difference_interval([a[d] - a0[d] for d in both], [b[d] - b0[d] for d in both], args.seed),
                "passages": len(both),
            }
        )
    return {"passages": len(docs), "block": args.block, "rows": rows}


def table(result: dict, window: int) -> list[str]:
    iv = lambda x, i: f"{x:.3f} [{i[0]:.3f}, {i[1]:.3f}]"  # noqa: E731
    lines = [
        f"| context (tokens) | past the window ({window}) | {NAMES[0]} | {NAMES[1]} | TTT - SWA (paired 95% interval) | of which grown past the window |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lo, hi = r["difference_interval"]
        glo, ghi = r["growth_interval"]
        lines.append(
            f"| {r['context']} | {'yes' if r['context'] > window else 'no'} | {iv(r[NAMES[0]]['loss'], r[NAMES[0]]['interval'])} | "
            f"{iv(r[NAMES[1]]['loss'], r[NAMES[1]]['interval'])} | {r['difference']:+.4f} [{lo:+.4f}, {hi:+.4f}] | {r['growth']:+.4f} [{glo:+.4f}, {ghi:+.4f}] |"
        )
    return lines


def plot(result: dict, window: int, path: Path) -> Path:
    """Left: each model's block loss against the context (log-2 axis, 0 drawn at 1); right: the
    paired difference with its band."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    x = [max(1, r["context"]) for r in result["rows"]]
    for name in NAMES:
        line_with_interval(left, x, [r[name]["loss"] for r in result["rows"]], [r[name]["interval"] for r in result["rows"]], name)
    line_with_interval(right, x, [r["difference"] for r in result["rows"]], [r["difference_interval"] for r in result["rows"]], "TTT - SWA")
    right.axhline(0, color="grey", lw=1)
    for ax, ylabel in ((left, "block loss (nats, 95% interval)"), (right, "paired difference (nats, 95% interval)")):
        ax.axvline(window, color="grey", ls="--", lw=1, label=f"window ({window})")
        ax.set_xscale("log", base=2)
        ax.set(xlabel="context before the block (tokens; 0 drawn at 1)", ylabel=ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
    left.set_title(f"Loss of the final {result['block']} tokens of held-out passages")
    right.set_title("TTT - SWA, passage by passage")
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    out = Path(args.out)
    runs = train_runs(args)
    if args.train_only:
        return {"runs": runs}
    same = runs[NAMES[0]]["digests"] == runs[NAMES[1]]["digests"]
    result = fig2(args, runs)
    curves = {name: run["losses"] for name, run in runs.items()}
    plot_training(curves, out / "training_loss.png", reference=NAMES[0])
    plot(result, args.window, out / "fig2.png")
    reach = args.layers * (args.window - 1)
    lines = [
        "# From scratch: sliding-window attention with and without In-Place TTT",
        "",
        f"{args.layers} layers, hidden {args.hidden}, window {args.window} (attention reaches {reach} tokens back), {args.vocab}-token BPE; "
        f"{args.steps} steps x {args.batch} rows x {args.row_length} tokens, AdamW {args.lr}, seed {args.seed}. TTT: {ttt_config(args)}.",
        f"Identical batches in both runs: {'yes' if same else 'NO'} ({len(runs[NAMES[0]]['digests'])} batches compared by digest). "
        "Training: " + ", ".join(f"{n} {r['seconds']:.0f} s" for n, r in runs.items()) + ".",
        "",
        f"Loss of the final {args.block} tokens of {result['passages']} held-out passages after each context length (nats; 95% bootstrap "
        "intervals over passages; the difference pairs the models passage by passage; the last column is the paired difference of "
        f"what each model gains from the context beyond {max(c for c in contexts(args) if c <= args.window)} tokens, the part of the gap that grows past the window):",
        "",
        *table(result, args.window),
        "",
        "![fig2](fig2.png) ![training_loss](training_loss.png)",
    ]
    write_atomic(out / "report.md", "\n".join(lines) + "\n")
    summary = {
        "args": vars(args),
        "identical_batches": same,
        "runs": {n: {k: v for k, v in r.items() if k != "final"} for n, r in runs.items()},
        "fig2": result,
    }
    write_atomic(out / "results.json", json.dumps(summary, indent=1, default=str) + "\n")
    print("\n".join(lines[2:-2]), flush=True)
    print(f"done in {time.perf_counter() - started:.0f} s; {out / 'report.md'}", flush=True)
    return summary


if __name__ == "__main__":
    main()

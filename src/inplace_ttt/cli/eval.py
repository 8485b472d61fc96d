"""`ittt eval`: long-context evaluation of one or more models, each compared with a baseline (`inplace_ttt.eval.runner.evaluate`)."""

from __future__ import annotations

import argparse

from .flags import RenamedFlag, expanded


def add(sub) -> None:
    ev = sub.add_parser("eval", help="long-context evaluation: RULER-style tasks, loss by position, paired differences, report with plots")
    ev.add_argument("--model", type=expanded, action="append", required=True, help="a model directory (plain or In-Place TTT); repeat to compare")
    ev.add_argument(
        "--baseline", help="the model (by its name in the report) every other is compared with, unit by unit, with 95%% intervals (default: the first)"
    )
    ev.add_argument(
        "--gguf-file",
        help="a GGUF checkpoint's file name: each --model folder holding it is read from it, dequantized to float (as ittt train --gguf-file)",
    )
    ev.add_argument(
        "--tasks",
        default="all",
        help="comma-separated: loss, sliding_window, recall, niah_single, niah_multikey, niah_multivalue, niah_multiquery, vt, cwe, fwe; or all",
    )
    ev.add_argument("--lengths", default="1k,2k,4k", help="prompt lengths in tokens, e.g. 1k,2k,4k,8k")
    ev.add_argument("--samples", type=int, default=10, help="samples per task and length")
    ev.add_argument("--names", help="comma-separated names for the models in the report (default: their directory names)")
    ev.add_argument(
        "--data",
        type=expanded,
        action="append",
        help="held-out documents (file or folder) for the loss task and as haystack text (default: the embedded corpus's held-out books)",
    )
    ev.add_argument("--documents", type=int, default=16, help="held-out documents read for loss and sliding_window (the first ones)")
    ev.add_argument("--clip-tau", type=float, help="inference clipping for In-Place TTT models (the paper used 1e-5)")
    ev.add_argument("--out", type=expanded, default="eval-report", help="output directory")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument(
        "--tokens-per-forward",
        "--piece",
        action=RenamedFlag,
        type=int,
        default=2048,
        help="tokens per forward when reading long inputs (--piece: its old name)",
    )
    ev.add_argument(
        "--final-block",
        "--block",
        action=RenamedFlag,
        type=int,
        default=256,
        help="tokens scored at the end of each document in the sliding-window view (--block: its old name)",
    )
    ev.add_argument("--batch", type=int, default=8, help="rows per forward (the RULER-style samples of one length run together, longest answers first)")
    ev.add_argument("--passages", type=int, help="cut the held-out documents into up to this many passages of the longest length + 1 tokens")
    ev.add_argument("--recall-pairs", type=int, default=16, help="key-value pairs per associative-recall sample")
    ev.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ev.add_argument(
        "--chat-template",
        action="store_true",
        help="instruct models: each task prompt is a user turn of the tokenizer's chat template, the answer starts the assistant's turn",
    )
    ev.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..eval.runner import ALL_TASKS, EvalSettings, evaluate, parse_lengths

    tasks = list(ALL_TASKS) if args.tasks == "all" else [t.strip() for t in args.tasks.split(",") if t.strip()]
    settings = EvalSettings(
        models=args.model,
        names=args.names.split(",") if args.names else None,
        baseline=args.baseline,
        gguf_file=args.gguf_file,
        documents=args.documents,
        tasks=tasks,
        lengths=parse_lengths(args.lengths),
        samples=args.samples,
        data=args.data or [],
        clip_tau=args.clip_tau,
        seed=args.seed,
        tokens_per_forward=args.tokens_per_forward,
        final_block=args.final_block,
        dtype=args.dtype,
        out=args.out,
        chat_template=args.chat_template,
        batch=args.batch,
        passages=args.passages,
        recall_pairs=args.recall_pairs,
    )
    print(f"report: {evaluate(settings)}")
    return 0

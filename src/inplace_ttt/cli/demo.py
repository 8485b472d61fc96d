"""`ittt demo`: the whole pipeline on the embedded model and corpus (`inplace_ttt.demo.run_demo`)."""

from __future__ import annotations

import argparse
import re

from ..config import TARGET_INITS
from .flags import RenamedFlag, expanded


def add(sub) -> None:
    demo = sub.add_parser(
        "demo",
        help="the whole pipeline on the embedded model and corpus: convert, train with and without TTT, evaluate, report",
        epilog="A flag left out keeps its default from inplace_ttt.demo.DemoSettings (150 steps of 2 x 1024 tokens, TTT on layer 3, chunk 64, target the token embeddings).",
    )
    demo.add_argument("--out", type=expanded, help="run directory (default: runs/demo-<date>-<time>)")
    demo.add_argument("--steps", type=int, help="training steps of each model")
    demo.add_argument("--row-length", type=int, help="tokens per training row")
    demo.add_argument("--batch-size", type=int, help="rows per step")
    demo.add_argument("--learning-rate", type=float, help="AdamW learning rate")
    demo.add_argument(
        "--ttt-params-learning-rate",
        "--ttt-learning-rate",
        action=RenamedFlag,
        type=float,
        help="AdamW learning rate of the new TTT parameters (--ttt-learning-rate: its old name)",
    )
    demo.add_argument("--layers", help="TTT layers: indices like 1,3 or a rule like 'every 2 from 1'")
    demo.add_argument("--chunk-size", type=int, help="TTT chunk size")
    demo.add_argument("--ttt-lr", type=float, help="the fast-weight learning rate")
    demo.add_argument("--target-init", choices=TARGET_INITS, help="how W_target starts")
    demo.add_argument("--lengths", help="evaluation lengths; the longest sets the held-out passages (that many tokens + 1)")
    demo.add_argument("--passages", type=int, help="held-out passages the losses are measured on")
    demo.add_argument("--samples", type=int, help="associative-recall samples per length")
    demo.add_argument("--seed", type=int)
    demo.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """The flags given as `DemoSettings`; flags left out keep its defaults."""
    from ..demo import DemoSettings, run_demo
    from ..eval.runner import parse_lengths

    defaults = DemoSettings()
    given = lambda name: getattr(args, name) is not None  # noqa: E731
    if given("layers") and re.fullmatch(r"[\d,\s]+", args.layers):
        args.layers = [int(i) for i in args.layers.split(",") if i.strip()]
    ttt = defaults.ttt.replace(**{k: getattr(args, k) for k in ("layers", "chunk_size", "ttt_lr", "target_init") if given(k)})
    kwargs = {
        k: getattr(args, k)
        for k in ("out", "steps", "row_length", "batch_size", "learning_rate", "ttt_params_learning_rate", "samples", "passages", "seed")
        if given(k)
    }
    if given("lengths"):
        kwargs["eval_lengths"] = parse_lengths(args.lengths)
    run_demo(DemoSettings(ttt=ttt, **kwargs))
    return 0

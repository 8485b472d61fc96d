"""`ittt lm-eval`: lm-evaluation-harness's own command line, with In-Place TTT folders loadable (`inplace_ttt.eval.harness.run_harness`)."""

from __future__ import annotations

import argparse


def add(sub) -> None:
    le = sub.add_parser(
        "lm-eval",
        help="lm-evaluation-harness (lm-eval ...) with In-Place TTT folders loadable by --model hf; every option is lm-eval's own",
        description="Runs `lm-eval ARGS...` after registering the In-Place TTT Auto classes, so that "
        "`--model hf --model_args pretrained=DIR` loads a converted folder (`trust_remote_code=True` does the same in plain lm-eval). "
        "Every option is lm-eval's: see `lm-eval --help`.",
        add_help=False,  # --help goes to lm-eval
    )
    le.set_defaults(func=run, takes_overrides=True)


def run(args: argparse.Namespace) -> int:
    from ..eval.harness import run_harness

    run_harness(args.overrides)
    return 0

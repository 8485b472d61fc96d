"""`ittt pretrain`: a small Llama model and its tokenizer trained from scratch (`inplace_ttt.train.pretrain.pretrain`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from .run_command import add_run_command, finish_run


def add(sub) -> None:
    add_run_command(
        sub,
        "pretrain",
        help="train a small Llama model and its BPE tokenizer from scratch (how the embedded base model was made)",
        example="--train.max_steps 100",
        schemas=schemas,
        func=run,
    )


def schemas() -> dict[str, Callable[[], type]]:
    from ..train.run import schema

    return {"ittt pretrain (model_type: scratch)": lambda: schema("scratch")}


def run(args: argparse.Namespace) -> int:
    from ..train.config import load_config
    from ..train.pretrain import PretrainConfig, pretrain

    return finish_run(
        args, lambda: pretrain(load_config(args.config, args.overrides, schema=PretrainConfig), resume=args.resume, allow_changes=args.allow_changes)
    )

"""`ittt train`: continual training from a YAML config (`inplace_ttt.train.run.train`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from .run_command import add_run_command, finish_run


def add(sub) -> None:
    add_run_command(
        sub,
        "train",
        help="continual training with In-Place TTT (transformers Trainer); also reads moshi-finetune's config as is",
        example="--train.learning_rate 1e-5 (a moshi-finetune config: --optim.lr 1e-5, --ttt null)",
        schemas=schemas,
        func=run,
    )


def schemas() -> dict[str, Callable[[], type]]:
    """The config schema of each model family, by its `model_type`."""
    from ..train.run import FAMILIES, schema

    return {f"model_type: {model_type}": (lambda model_type=model_type: schema(model_type)) for model_type in FAMILIES}


def run(args: argparse.Namespace) -> int:
    from ..train.run import load_run_config, train

    return finish_run(args, lambda: train(load_run_config(args.config, args.overrides), resume=args.resume, allow_changes=args.allow_changes))

"""`ittt moshi-eval`: Moshi losses by minute of long conversations (`inplace_ttt.eval.moshi.evaluate_moshi`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .flags import RenamedFlag, add_device, add_lm_kwargs, add_mimi_config, expanded, prepare_moshi, user_path


def add(sub) -> None:
    ev = sub.add_parser("moshi-eval", help="Moshi text and audio loss by minute of long held-out conversations, several models in one report")
    ev.add_argument(
        "--model",
        type=expanded,
        action="append",
        required=True,
        help="NAME=PATH[,ttt=FILE][,clip_tau=X][,yarn=F]: PATH a model.safetensors or a folder with it (and ttt.safetensors); repeat to compare",
    )
    ev.add_argument(
        "--baseline",
        metavar="NAME",
        help="the model every other one is paired with, conversation by conversation (default: the first without TTT weights, else the first)",
    )
    ev.add_argument(
        "--data",
        type=expanded,
        action="append",
        required=True,
        help="codes files (.safetensors), folders of them, or a moshi-finetune manifest (.jsonl, needs --mimi and --tokenizer); repeatable",
    )
    add_lm_kwargs(ev)
    ev.add_argument("--mimi", type=user_path, help="Mimi's weights, to encode a manifest")
    add_mimi_config(ev)
    ev.add_argument("--tokenizer", type=user_path, help="Moshi's text tokenizer, to encode a manifest")
    ev.add_argument(
        "--steps-per-forward",
        "--piece",
        action=RenamedFlag,
        type=int,
        default=250,
        help="steps per forward (memory; the losses do not depend on it); --piece: its old name",
    )
    ev.add_argument("--bucket-minutes", type=float, default=1.0, help="width of the time buckets")
    ev.add_argument("--out", type=expanded, default="moshi-eval", help="output directory")
    add_device(ev)
    ev.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    ev.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    prepare_moshi(args.device)
    from ..eval.moshi import MoshiEvalSettings, evaluate_moshi
    from ..speech.loading import read_json

    settings = MoshiEvalSettings(
        models=args.model,
        data=args.data,
        out=Path(args.out),
        lm_kwargs=read_json(args.lm_kwargs, "--lm-kwargs"),
        steps_per_forward=args.steps_per_forward,
        bucket_minutes=args.bucket_minutes,
        device=args.device,
        dtype=args.dtype,
        mimi=args.mimi,
        mimi_config=read_json(args.mimi_config, "--mimi-config"),
        tokenizer=args.tokenizer,
        baseline=args.baseline,
    )
    print(f"report: {evaluate_moshi(settings)}")
    return 0

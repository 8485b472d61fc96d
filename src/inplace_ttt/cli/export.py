"""`ittt export`: a saved In-Place TTT model written in the authors' release format (`families.hf.export_folder`)."""

from __future__ import annotations

import argparse

from .flags import expanded


def add(sub) -> None:
    ex = sub.add_parser("export", help="write a saved In-Place TTT model in another format: the authors' release (their config keys and weight names)")
    ex.add_argument("model_dir", type=expanded, help="a directory saved by a converted model's save_pretrained")
    ex.add_argument("out", help="the new directory to write (must not hold files)")
    ex.add_argument("--format", required=True, choices=["release"], help="release: ByteDance-Seed/In-Place-TTT's Qwen3 / Llama checkpoints")
    ex.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..families.hf import export_folder

    print(f"release checkpoint: {export_folder(args.model_dir, args.out)}")
    return 0

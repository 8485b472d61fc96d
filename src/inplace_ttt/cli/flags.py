"""Flags several commands share: a renamed flag that still answers to its old name (with a
FutureWarning), Moshi's LMModel keyword arguments (``--lm-kwargs``), Mimi's settings and the device."""

from __future__ import annotations

import argparse
import os
import warnings
from pathlib import Path

LM_KWARGS_HELP = "JSON file of the LMModel's keyword arguments (default: Moshi 7B's, as moshi's loaders); --lm-config: its old name"


class RenamedFlag(argparse.Action):
    """A value flag whose first option string is its name and whose others are old names, still
    read, with a FutureWarning."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        if option_string != self.option_strings[0]:
            warnings.warn(f"{option_string} is deprecated; use {self.option_strings[0]}", FutureWarning, stacklevel=2)
        setattr(namespace, self.dest, values)


def expanded(text: str) -> str:
    """A path flag's value as a shell user means it: a leading ``~`` is the home folder (the shell
    leaves ``--out=~/x`` as it is). A hub id passes through unchanged."""
    return os.path.expanduser(text)


def user_path(text: str) -> Path:
    return Path(expanded(text))


def add_lm_kwargs(parser: argparse.ArgumentParser, help: str = LM_KWARGS_HELP) -> None:
    """``--lm-kwargs FILE`` (old name ``--lm-config``): the JSON file of moshi `LMModel` keyword arguments."""
    parser.add_argument("--lm-kwargs", "--lm-config", action=RenamedFlag, type=expanded, help=help)


def add_mimi_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mimi-config", type=expanded, help="JSON file of Mimi's settings (default: the published Mimi's, as moshi's loaders)")


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto (cuda if available), cpu or cuda")


def temperature(text: str) -> float:
    """A sampling temperature flag's value: a finite number >= 0 (argparse names the flag when it is not)."""
    import math

    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0; got {text!r}")
    return value


def prepare_moshi(device: str) -> None:
    """On a CPU, moshi's lazy torch.compile only costs time: turn it off (before moshi is imported)."""
    from ..families.moshi.compile import compile_off_on_cpu

    compile_off_on_cpu(device)


def add_moshi_model(parser: argparse.ArgumentParser, tokenizer_help: str, tokenizer_required: bool = False) -> None:
    """The parts of a Moshi model that plays a conversation: its weights (with or without TTT), Mimi, the tokenizer."""
    parser.add_argument("--weights", type=user_path, required=True, help="moshi's model.safetensors (published, or final/ of ittt train)")
    parser.add_argument("--ttt", type=user_path, help="ttt.safetensors beside it (omit: the model without TTT)")
    parser.add_argument("--mimi", type=user_path, required=True, help="Mimi's weights (.safetensors)")
    parser.add_argument("--tokenizer", type=user_path, required=tokenizer_required, help=tokenizer_help)
    add_lm_kwargs(parser)
    add_mimi_config(parser)
    parser.add_argument("--clip-tau", type=float, help="inference clipping of the fast-weight updates (default: the saved setting)")


def add_generation(parser: argparse.ArgumentParser, seed: int, seed_help: str) -> None:
    """How a Moshi model generates: its device and dtype, the sampling seed and LMGen's temperatures."""
    add_device(parser)
    parser.add_argument(
        "--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"], help="the LM's dtype (auto: bfloat16 on cuda, else float32)"
    )
    parser.add_argument("--seed", type=int, default=seed, help=seed_help)
    parser.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    parser.add_argument("--temp", type=temperature, default=0.8, help="audio sampling temperature (LMGen's default)")
    parser.add_argument("--temp-text", type=temperature, default=0.7, help="text sampling temperature (LMGen's default)")


def moshi_player(args: argparse.Namespace) -> dict:
    """The settings `add_moshi_model` and `add_generation` parsed, as the keyword arguments of
    `speech.infer.InferSettings` and `speech.serve.ServeSettings` (the JSON files read)."""
    from ..speech.loading import read_json

    names = ("weights", "mimi", "ttt", "tokenizer", "clip_tau", "device", "dtype", "seed", "greedy", "temp", "temp_text")
    return {
        **{name: getattr(args, name) for name in names},
        "lm_kwargs": read_json(args.lm_kwargs, "--lm-kwargs"),
        "mimi_config": read_json(args.mimi_config, "--mimi-config"),
    }

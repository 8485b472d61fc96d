"""`ittt serve`: transformers' OpenAI-compatible server for a saved model, In-Place TTT or plain (`inplace_ttt.serve.serve`)."""

from __future__ import annotations

import argparse

from .flags import expanded


def add(sub) -> None:
    sv = sub.add_parser(
        "serve",
        help="serve a saved model with transformers' OpenAI-compatible server (transformers serve); its other options pass through",
        description="Runs `transformers serve MODEL [OPTIONS]` with In-Place TTT folders loaded as converted models. Every option other "
        "than --clip-tau is transformers serve's own (--host, --port, --device, --dtype, ...: see `transformers serve --help`); "
        "requests run one at a time and --continuous-batching is refused.",
    )
    sv.add_argument("model", type=expanded, help="a saved model folder (In-Place TTT or plain); clients name it as given here")
    sv.add_argument(
        "--clip-tau", type=clip_value, default=..., help="inference clipping for an In-Place TTT model, or none (default: its saved value; the paper used 1e-5)"
    )
    sv.set_defaults(func=run, takes_overrides=True)


def clip_value(text: str) -> float | None:
    """``--clip-tau``'s value: a number (`TTTConfig` checks it when the model loads) or ``none``."""
    if text.lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number or none; got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    from ..serve import serve

    serve(args.model, clip_tau=args.clip_tau, options=args.overrides)
    return 0

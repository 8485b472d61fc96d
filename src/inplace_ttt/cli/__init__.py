"""`ittt`: the command line. One module per command, each of which parses its flags into settings
and calls one library function; `main` assembles them."""

from __future__ import annotations

import argparse
import sys

from . import demo, doctor, eval, export, lm_eval, moshi_encode, moshi_eval, moshi_infer, moshi_kit, moshi_serve, pretrain, serve, train

COMMANDS = (
    demo,
    doctor,
    eval,
    lm_eval,
    serve,
    export,
    train,
    pretrain,
    moshi_kit,
    moshi_encode,
    moshi_infer,
    moshi_serve,
    moshi_eval,
)  # in `ittt --help`'s order


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ittt", description="In-Place Test-Time Training")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add(sub)
    args, rest = parser.parse_known_args(argv)
    if rest and not getattr(args, "takes_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.overrides = rest
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"ittt {args.command}: error: {e}", file=sys.stderr)
        return 2

"""What the commands that run from a YAML config share (`ittt train`, `ittt pretrain`): the config
file, ``--section.key value`` overrides, ``--resume`` / ``--allow-changes``, and a ``--help`` that
lists every key of the config, read from its schema (`config_help`)."""

from __future__ import annotations

import argparse
import inspect
import os
from collections.abc import Callable
from pathlib import Path


def add_run_command(sub, name: str, *, help: str, example: str, schemas: Callable[[], dict[str, Callable[[], type]]], func) -> None:
    """A command `name` that runs `func(args)` (``args.overrides``: the ``--section.key value`` pairs);
    `schemas` gives, by title, what loads each config schema its ``--help`` lists."""
    cmd = sub.add_parser(
        name,
        help=help,
        add_help=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=f"Options after CONFIG override the file: --section.key value, e.g. {example}",
    )
    cmd.add_argument("-h", "--help", action=ConfigHelp, schemas=schemas, help="show this help, with every key of the config, and exit")
    cmd.add_argument("config", help="the run's YAML file")
    cmd.add_argument("--resume", action="store_true", help="continue from the run's last complete checkpoint")
    cmd.add_argument(
        "--allow-changes",
        action="store_true",
        help="with --resume: go on with settings that differ from the run's config.yaml (kept as config-until-step-<N>.yaml)",
    )
    cmd.set_defaults(func=func, takes_overrides=True)


class ConfigHelp(argparse.Action):
    """``-h``: the usage and flags, then every key of the config (built only when asked: the
    schemas import the training code)."""

    def __init__(self, option_strings, dest, schemas, help=None):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)
        self.schemas = schemas

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        parser.epilog = config_keys(self.schemas())
        parser.print_help()
        parser.exit()


def config_keys(schemas: dict[str, Callable[[], type]]) -> str:
    """The keys of each schema (a family that cannot load, e.g. an optional install, says why), and the training modes."""
    from ..train import modes
    from .config_help import describe_schema

    parts = ["The config's keys: name, default, type and allowed values (a YAML file sets them by section: ttt: {chunk_size: 2048})."]
    for title, load in schemas.items():
        try:
            lines = describe_schema(load())
        except ValueError as e:
            lines = [f"  ({e})"]
        parts.append("\n".join([title, *("  " + line if line else line for line in lines)]))
    parts.append("train.mode:\n" + "\n".join("  " + line for line in inspect.cleandoc(modes.__doc__).split("\n\n", 1)[1].splitlines()))
    return "\n\n".join(parts)


def finish_run(args: argparse.Namespace, run: Callable[[], Path]) -> int:
    """`run()` (which trains and returns the final model's folder) after the flags are checked; a
    finished run that is resumed has nothing to do, and that is no error."""
    from ..train.run_dir import RunFinished

    if args.allow_changes and not args.resume:
        raise ValueError("--allow-changes goes with --resume")
    try:
        final = run()
    except RunFinished as e:
        print(f"ittt {args.command}: {e}")
        return 0
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun every process runs this: one says it
        print(f"final model: {final}")
    return 0

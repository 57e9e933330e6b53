"""Command-line entry point: ``pelagos <command> ...``.

Each command lives in ``pelagos/commands/<name>.py`` and exposes ``NAME``, ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``. Adding a command = adding one module to ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .core.errors import PelagosError

# module names under pelagos.commands; a module that fails to import is reported, not fatal.
COMMANDS = ["run", "plot", "gradcheck", "calibrate", "assimilate", "qg", "bench"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pelagos", description="Differentiable ocean and geoscience models."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"pelagos.commands.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"pelagos.commands.{name}":
                continue  # command not shipped yet
            raise
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except PelagosError as err:
        print(f"pelagos {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""Command-line entry point: ``pelagos <command> ...``.

Each command lives in ``pelagos/commands/<name>.py`` and exposes ``NAME``, ``HELP``, ``add_arguments(parser)``
and ``run(args) -> int`` (optionally ``DESCRIPTION``, the longer text of ``pelagos NAME --help``). Adding a
command = adding one module to ``COMMANDS``. Commands that read a configuration share the same flags
(:func:`add_config_arguments`): ``--set section.key=value`` (repeatable), ``--output PATH``,
``--no-progress``.

Exit status: 0 success, 1 a pelagos error (one line on stderr, no traceback), 2 usage error,
130 interrupted (Ctrl-C: "interrupted at …; output and restart are valid; rerun to resume").
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .core.errors import Interrupted, PelagosError

# module names under pelagos.commands; a module that is not shipped is skipped.
COMMANDS = [
    "run",
    "calibrate",
    "assimilate",
    "models",
    "params",
    "plot",
    "gradcheck",
    "sensitivity",
    "qg",
    "hydro",
    "sda",
    "bench",
]


def add_config_arguments(p: argparse.ArgumentParser, *, output_help: str) -> None:
    """The flags of every command that reads a configuration."""
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one configuration entry (repeatable; the value is read as YAML), "
        "e.g. --set time.dt=1800 --set method.max_iter=20",
    )
    p.add_argument("--output", default=None, metavar="PATH", help=output_help)
    p.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        default=None,
        help="no progress bar (default: a bar when stderr is a terminal)",
    )
    p.add_argument("--progress", dest="progress", action="store_true", help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pelagos",
        description="Differentiable ocean and geoscience models: run, calibrate, assimilate.",
        epilog="`pelagos COMMAND --help` describes a command; docs/running.md the configuration.",
    )
    parser.add_argument("--version", action="version", version=f"pelagos {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"pelagos.commands.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"pelagos.commands.{name}":
                continue  # command not shipped
            raise
        p = sub.add_parser(
            mod.NAME,
            help=mod.HELP,
            description=getattr(mod, "DESCRIPTION", mod.HELP),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def _interrupted_message(err: BaseException | None, command: str = "") -> str:
    if err is not None and str(err):
        return str(err)
    if command in ("calibrate", "assimilate"):
        return "interrupted; nothing was written (an estimation does not resume: rerun to start it again)"
    return (
        "interrupted; the output written so far is readable and the restart file (if any) is valid; "
        "rerun to resume"
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print(f"\npelagos {args.command}: {_interrupted_message(None, args.command)}", file=sys.stderr)
        return 130
    except Interrupted as err:
        print(f"\npelagos {args.command}: {_interrupted_message(err)}", file=sys.stderr)
        return 130
    except PelagosError as err:
        print(f"pelagos {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

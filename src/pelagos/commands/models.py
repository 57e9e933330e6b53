"""``pelagos models`` — the registered model kinds (built-in and from installed packages)."""

from __future__ import annotations

import argparse

NAME = "models"
HELP = "list the registered model kinds (the model.kind of configurations)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    from ..core.errors import ConfigError
    from ..core.registry import get_model_kind, model_kinds

    names = model_kinds()
    width = max(len(n) for n in names) if names else 0
    for n in names:
        try:
            desc = get_model_kind(n).description
        except ConfigError as err:
            desc = f"(cannot load: {err})"
        print(f"{n:{width}s}  {desc}")
    print("\n`pelagos params KIND` lists a kind's parameters; docs/running.md the configuration.")
    return 0

"""``pelagos qg run|train-closure|evaluate CONFIG.yaml`` — quasi-geostrophic runs and hybrid closures."""

from __future__ import annotations

import argparse

NAME = "qg"
HELP = "quasi-geostrophic model: run, train a neural closure, evaluate closures"
DESCRIPTION = """Quasi-geostrophic commands:

  pelagos qg run CONFIG.yaml            the same as `pelagos run CONFIG.yaml` (NetCDF + a plot)
  pelagos qg train-closure CONFIG.yaml  data, offline and online training of a CNN closure
  pelagos qg evaluate CONFIG.yaml       evaluate the trained closures against baselines

`pelagos qg ACTION --help` describes each. See docs/qg.md and docs/qg_hybrid.md."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..cli import add_config_arguments
    from . import run as run_cmd

    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    r = sub.add_parser(
        "run", help="run a QG configuration (= pelagos run)", description=run_cmd.DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    run_cmd.add_arguments(r)
    for action, text in (
        ("train-closure", "make training data from high-resolution runs, train a CNN closure offline and "
                          "online; writes <output>_closures.pt, the evaluation table and training curves"),
        ("evaluate", "evaluate the closures trained by train-closure (and the baselines) on the same data"),
    ):  # fmt: skip
        q = sub.add_parser(action, help=text, description=text)
        q.add_argument("config", help="QG configuration with a hybrid: section, e.g. examples/qg_hybrid.yaml")
        add_config_arguments(q, output_help="output base name: files go next to it (overrides output.file)")


def run(args: argparse.Namespace) -> int:
    if args.action == "run":
        from . import run as run_cmd

        return run_cmd.run(args)
    from ..qg import config

    cfg = config.load(args.config, overrides=args.overrides, output=args.output)
    if args.action == "train-closure":
        paths = config.train_closure(cfg)
    else:
        paths = config.evaluate_closures(cfg)
    for path in paths if isinstance(paths, list) else [paths]:
        print(f"wrote {path}")
    return 0

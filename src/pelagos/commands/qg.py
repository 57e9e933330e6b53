"""``pelagos qg run|train-closure|evaluate CONFIG.yaml`` — quasi-geostrophic runs and hybrid closures."""

from __future__ import annotations

import argparse

NAME = "qg"
HELP = "quasi-geostrophic model: run to NetCDF, train a neural closure, evaluate closures"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["run", "train-closure", "evaluate"], help="what to do")
    p.add_argument("config", help="QG configuration (YAML), e.g. examples/qg_run.yaml")


def run(args: argparse.Namespace) -> int:
    from ..qg import config

    cfg = config.load(args.config)
    if args.action == "run":
        path = config.run(cfg)
    elif args.action == "train-closure":
        path = config.train_closure(cfg)
    else:
        path = config.evaluate_closures(cfg)
    print(f"wrote {path}")
    return 0

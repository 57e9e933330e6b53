"""``pelagos run CONFIG.yaml`` — run a water-column configuration to NetCDF (with restarts)."""

from __future__ import annotations

import argparse

NAME = "run"
HELP = "run a water-column configuration (YAML) and write CF NetCDF output"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="run configuration (YAML), e.g. examples/nns_annual_npzd.yaml")
    p.add_argument("--fresh", action="store_true", help="ignore an existing restart file and start over")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--plot", action="store_true", help="also write depth-time sections and integrals (PNG)")


def run(args: argparse.Namespace) -> int:
    from ..io.run import run_config

    path = run_config(args.config, resume=not args.fresh, progress=False if args.no_progress else None)
    print(f"wrote {path}")
    if args.plot:
        from ..io.plots import plot_output

        for f in plot_output(path):
            print(f"wrote {f}")
    return 0

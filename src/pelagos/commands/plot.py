"""``pelagos plot OUT.nc`` — depth–time sections and depth-integrated time series of a run's output."""

from __future__ import annotations

import argparse

NAME = "plot"
HELP = "plot a water-column output file (depth-time sections, depth integrals)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("output", help="NetCDF written by `pelagos run`")
    p.add_argument("--outdir", default=None, help="folder for the PNG files (default: next to the output)")


def run(args: argparse.Namespace) -> int:
    from ..io.plots import plot_output

    for f in plot_output(args.output, args.outdir):
        print(f"wrote {f}")
    return 0

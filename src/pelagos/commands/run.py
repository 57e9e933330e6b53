"""``pelagos run CONFIG.yaml`` — run any registered model (column, QG, Lorenz, ...) to CF-NetCDF."""

from __future__ import annotations

import argparse

NAME = "run"
HELP = "run a configuration (any model kind) and write CF-NetCDF output"
DESCRIPTION = """Run the model a configuration describes over its time window and write CF-NetCDF output.

  pelagos run examples/nns_annual_npzd.yaml --plot
  pelagos run examples/qg_run.yaml --output results/qg.nc --set time.duration='1 year'

The output file is --output, else output.file, else results/<config name>.nc. With a restart file
(--restart or restart.file; with --output alone, <output stem>.restart.pt next to it) an interrupted run
resumes where it stopped; --fresh starts over.
Every file written is announced. See docs/running.md for the configuration."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..cli import add_config_arguments

    p.add_argument("config", help="configuration (YAML), e.g. examples/nns_annual_npzd.yaml")
    add_config_arguments(p, output_help="NetCDF output file (overrides output.file)")
    p.add_argument("--restart", default=None, metavar="PATH", help="restart file (overrides restart.file)")
    p.add_argument("--fresh", action="store_true", help="ignore an existing restart file and start over")
    p.add_argument("--plot", action="store_true", help="also write depth-time sections and integrals (PNG)")


def run(args: argparse.Namespace) -> int:
    from ..io.build import run as run_config

    files = run_config(
        args.config,
        overrides=args.overrides,
        output=args.output,
        restart=args.restart,
        fresh=args.fresh,
        progress=args.progress,
    )
    for f in files:
        print(f"wrote {f}")
    if args.plot:
        from ..io.plots import plot_output

        for f in plot_output(files[0]):
            print(f"wrote {f}")
    return 0

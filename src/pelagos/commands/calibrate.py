"""``pelagos calibrate CONFIG.yaml``: estimate model parameters from observations."""

from __future__ import annotations

import argparse

NAME = "calibrate"
HELP = "calibrate model parameters against observations (gradient-based or ES-MDA, with uncertainty)"
DESCRIPTION = """Estimate the free parameters of any model from observations.

The configuration is a run configuration plus two sections:

  observations:  {file: obs.csv, log: true}                   a long CSV or NetCDF
                 or {synthetic: {truth: {rho: 28}, patterns: [{variable: x, every: 0.05}], sigma: 1}}
  method:        {kind: calibrate, free: [npzd.rmax, npzd.gmax], max_iter: 40}
                 kind: calibrate (gradient, Laplace std) | esmda (ensemble smoother)

Results (estimates, std, 95 % intervals, cost history, stop reason) go to --output, else method.results,
else results/<config name>_<kind>.json; output.file gets the analysed run, method.plots the plots.

  pelagos calibrate examples/npzd_calibration.yaml
  pelagos calibrate examples/lorenz63_calibrate.yaml --set method.max_iter=20

See docs/running.md (every key) and docs/inverse.md."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..cli import add_config_arguments

    parser.add_argument("config", help="configuration (YAML) with observations: and method:")
    add_config_arguments(parser, output_help="results file (.json or .yaml; overrides method.results)")


def run(args: argparse.Namespace) -> int:
    return run_inverse_command(args, NAME)


def run_inverse_command(args: argparse.Namespace, mode: str) -> int:
    """``pelagos calibrate`` and ``pelagos assimilate``: one driver, the mode says which methods fit."""
    from ..io.inverse_run import run_inverse_cli

    return run_inverse_cli(
        args.config, mode=mode, overrides=args.overrides, output=args.output, progress=args.progress
    )

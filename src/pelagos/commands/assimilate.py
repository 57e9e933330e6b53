"""``pelagos assimilate CONFIG.yaml``: state estimation (4D-Var, ensemble filters, ES-MDA)."""

from __future__ import annotations

import argparse

NAME = "assimilate"
HELP = "assimilate observations into a model (4D-Var, weak 4D-Var, EnKF, LETKF, ES-MDA)"
DESCRIPTION = """Estimate the state (and free parameters) of any model from observations.

The configuration is a run configuration plus observations: and method: with kind one of
  4dvar       strong-constraint 4D-Var (background: {rel_std, floor, length_scale})
  weak4dvar   weak-constraint 4D-Var (+ model_error: {...}, model_error_every)
  enkf        ensemble Kalman filter (members, inflation, variant: sqrt | pertobs)
  letkf       local ETKF (+ radius, periodic)
  esmda       ensemble smoother with multiple data assimilation (members, alphas)

  pelagos assimilate examples/lorenz96_enkf.yaml --set method.members=40

Results go to --output, else method.results, else results/<config name>_<kind>.json. See docs/running.md."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .calibrate import add_arguments as same_as_calibrate

    same_as_calibrate(parser)


def run(args: argparse.Namespace) -> int:
    from .calibrate import run_inverse_command

    return run_inverse_command(args, NAME)

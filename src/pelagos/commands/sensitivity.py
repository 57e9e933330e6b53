"""``pelagos sensitivity CONFIG``: the misfit on a grid of two parameters, forward-mode gradient arrows."""

from __future__ import annotations

import argparse

NAME = "sensitivity"
HELP = "map the misfit of a calibrate configuration over two free parameters, with forward-mode gradients"
DESCRIPTION = """Evaluate the observation misfit L = ½ Σ ((H(x) − y)/σ)² of a calibrate configuration (any
model kind: its window, observations: and the two parameters in method.free) on a grid of the two parameters,
evenly spaced in their unconstrained (log) space, with the gradient ∂L/∂(log p) at every node from forward
mode (Jacobian-vector products). Writes a JSON file and a quiver plot (descent directions over contours of L).

  pelagos sensitivity examples/lorenz63_calibrate.yaml --set 'method.free=[rho, sigma]' --grid 7
  pelagos sensitivity examples/ocean_calibrate.yaml --grid 9 --set time.duration='10 days'

Axes: --range NAME=LO:HI (physical values), else the configured value and the twin's truth widened by
×/÷ --span. Output: --output (JSON; the plot next to it as .png), else results/<config name>_sensitivity.json.
See docs/ocean_experiments.md (experiment 4)."""


def _range(text: str) -> tuple[str, tuple[float, float]]:
    name, sep, rest = text.partition("=")
    lo, sep2, hi = rest.partition(":")
    try:
        if not (sep and sep2 and name.strip()):
            raise ValueError
        return name.strip(), (float(lo), float(hi))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--range {text!r}: expected NAME=LO:HI, e.g. A_h=1e5:4e5") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..cli import add_config_arguments

    p.add_argument("config", help="a calibrate configuration (observations: and method.free with two names)")
    add_config_arguments(p, output_help="results file (JSON); the plot is written next to it (.png)")
    p.add_argument("--grid", type=int, default=9, help="nodes per axis (default 9)")
    p.add_argument(
        "--span",
        type=float,
        default=2.0,
        help="default axis range: configured value and truth widened by ×/÷ SPAN (default 2)",
    )
    p.add_argument(
        "--range",
        dest="ranges",
        type=_range,
        action="append",
        default=[],
        metavar="NAME=LO:HI",
        help="physical bounds of one axis (repeatable)",
    )
    p.add_argument("--no-plot", dest="plot", action="store_false", help="JSON only")


def run(args: argparse.Namespace) -> int:
    from ..io.inverse_run import run_sensitivity

    res = run_sensitivity(
        args.config,
        grid=args.grid,
        span=args.span,
        ranges=dict(args.ranges),
        overrides=args.overrides,
        output=args.output,
        plot=args.plot,
        progress=args.progress,
    )
    a, b = res["names"]
    loss = res["loss"]
    flat = [(v, i, j) for i, row in enumerate(loss) for j, v in enumerate(row)]
    v, i, j = min(flat)
    print(
        f"sensitivity of {res['model']}: {len(loss)}×{len(loss[0])} grid over ({a}, {b}), {res['n_obs']} "
        f"observations, {res['wall_time']:.1f} s; smallest misfit {v:.4g} at {a} = "
        f"{res['values'][a][i]:.4g}, {b} = {res['values'][b][j]:.4g}"
    )
    for f in res["files"]:
        print(f"wrote {f}")
    return 0

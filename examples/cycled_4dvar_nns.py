"""Cycled strong-constraint 4D-Var state estimation on the NNS NPZD column (spring 1998).

Perfect-model twin: the truth runs from the spun-up 1 March state; the background starts from a wrong state
(spun up with wrong parameters, 20 % less nutrient). Weekly observations (surface phytoplankton; nutrient at
5, 50 and 100 m; 15 % log-normal noise) are assimilated in 2-week windows (two observation times per window,
disjoint windows); each window's analysis, run forward, is the next background. Prints the RMSE against the
truth of the free background run and of the cycled analyses, and writes results/cycled_4dvar_nns.png.
Grid and step as the flagship (11 × 10 m, 6 h). Run: ``python examples/cycled_4dvar_nns.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from flagship_nns_twin import FIRST_GUESS, TRUTH, build, spin_up, trajectory

from pelagos.column.background import ColumnBackground
from pelagos.core.obsio import Sampling, regular_times, synthetic_observations
from pelagos.inverse.fourdvar import cycled_fourdvar

DAY = 86400.0


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--days", type=float, default=84.0)
    ap.add_argument("--lag", type=int, default=2, help="observation times per window")
    ap.add_argument("--out", default="results")
    args = ap.parse_args(argv)
    torch.set_default_dtype(torch.float64)
    cpu0 = time.process_time()
    model, t0, t1 = build(args.days)
    x_true = spin_up(model, TRUTH, t0)
    xb = spin_up(model, FIRST_GUESS, t0, nut_factor=0.8)
    for n, v in TRUTH.items():  # perfect model: only the state is wrong
        model.set_parameter_value(n, v)
    obs = synthetic_observations(  # weekly: surface phytoplankton, nutrient at 5/50/100 m
        model,
        x_true,
        regular_times(model, t0, t1, 7 * DAY),
        [Sampling("npzd_phy", {"depth": "surface"}), Sampling("npzd_nut", {"depth": [5.0, 50.0, 100.0]})],
        start=t0,
        noise="lognormal",
        sigma=0.15,
        generator=torch.Generator().manual_seed(3),
    )
    h = model.forcing.fields["h"][0, 0]
    z = torch.flip(torch.cumsum(torch.flip(h, [0]), 0), [0]) - 0.5 * h
    rel = torch.tensor([0.3, 0.5, 0.5, 0.05])[:, None]  # as the flagship (docs/flagship.md)
    B = ColumnBackground(rel * xb.abs() + torch.tensor([0.1, 1e-3, 1e-4, 0.01])[:, None], z, 20.0)
    res = cycled_fourdvar(model, obs, xb, B, lag=args.lag, t0=t0, max_iter=40, gtol=1e-6, ftol=1e-10)
    steps = round((t1 - t0) / model.dt)
    tr_true = trajectory(model, x_true, t0, steps)
    tr_free = trajectory(model, xb, t0, steps)
    k_obs = [round((float(t) - t0) / model.dt) for t in obs.times]

    def rmse(a: torch.Tensor, b: torch.Tensor, v: int) -> float:
        return float((a[..., v, :] - b[..., v, :]).pow(2).mean().sqrt())

    table = {}
    for v, name in enumerate(model.variables):
        table[name] = {
            "free_run": rmse(tr_free[k_obs], tr_true[k_obs], v),
            "cycled_4dvar": rmse(res.analyses, tr_true[k_obs], v),
        }
    cpu = time.process_time() - cpu0
    print(f"cycled 4D-Var: {len(res.window_starts)} windows, {res.n_evals} model runs, {cpu:.0f} s CPU")
    print(
        f"{'variable':10s} {'RMSE free run':>14s} {'RMSE analysis':>14s}"
        "  (mmol N m-3, at the observation times)"
    )
    for name, d in table.items():
        print(f"{name:10s} {d['free_run']:14.4g} {d['cycled_4dvar']:14.4g}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    days = (torch.arange(steps + 1) * model.dt / DAY).numpy()
    od = ((obs.times - t0) / DAY).numpy()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for ax, v, lev, lab in (
        (axes[0], 1, -1, "surface phytoplankton"),
        (axes[1], 0, 5, f"nutrient at {z[5]:.0f} m"),
    ):
        ax.plot(days, tr_true[:, v, lev].numpy(), "k-", label="truth")
        ax.plot(days, tr_free[:, v, lev].numpy(), "C1--", label="free run (background)")
        ax.plot(od, res.analyses[:, v, lev].numpy(), "C0o-", label="cycled 4D-Var analyses")
        ax.set_title(lab)
        ax.set_xlabel("days after 1998-03-01")
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "cycled_4dvar_nns.png", dpi=110)
    summary = {"rmse": table, "windows": len(res.window_starts), "n_evals": res.n_evals, "cpu_time_s": cpu}
    (out / "cycled_4dvar_nns.json").write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()

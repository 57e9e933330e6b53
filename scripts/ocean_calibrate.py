"""Calibrate A_h and r_bot of the ACC from altimetry-like BSF samples (twin experiment, pelagos.inverse).

Truth: acc_basic at ``resolution`` (A_h Veros formula, r_bot 1e-5), spun up from rest; observations: the
barotropic streamfunction ψ at 24 random ocean points every 5 days over the window, noise σ = 2 % of the ψ
range. First guess: A_h × 2, r_bot × 0.5. Free: log A_h, log r_bot (flat priors), L-BFGS, Laplace std from the
Hessian. Writes ocean_calibrate.json and ocean_calibrate.png (cost, ACC transport of truth/first guess/
calibrated, BSF).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from pelagos.core import rollout
from pelagos.core.observations import ObservationSet
from pelagos.inverse import calibrate
from pelagos.ocean import acc_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--resolution", type=float, default=4.0)
    ap.add_argument("--spinup-days", type=float, default=120.0)
    ap.add_argument("--window-days", type=float, default=20.0)
    ap.add_argument("--every-days", type=float, default=5.0)
    ap.add_argument("--isoneutral", action="store_true")
    ap.add_argument("--out", default="docs/figures/ocean")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    truth = acc_model(args.resolution, isoneutral=args.isoneutral)
    A_true, r_true = float(truth.param("A_h")), float(truth.param("r_bot"))
    x = truth.initial_state(1)
    n_spin = round(args.spinup_days * 86400 / truth.dt)
    with torch.no_grad():
        x = rollout(truth, x, n_spin, save_every=n_spin, include_initial=False).final
    g = truth.grid
    gen = torch.Generator().manual_seed(0)
    wet = torch.nonzero(g.mask_t[0] > 0)
    pick = wet[torch.randperm(len(wet), generator=gen)[:24]]
    jj, ii = pick[:, 0], pick[:, 1]

    def H(state):
        return truth.output(state)["psi"][..., jj, ii]

    n = round(args.window_days * 86400 / truth.dt)
    every = round(args.every_days * 86400 / truth.dt)
    with torch.no_grad():
        traj = rollout(truth, x, n, save_every=every, include_initial=False)
    ys = torch.stack([H(traj.states[i]) for i in range(traj.states["u"].shape[0])])  # (n_t, 1, m)
    sigma = 0.02 * float(ys.max() - ys.min())
    ys = ys + sigma * torch.randn(ys.shape, generator=gen, dtype=ys.dtype)
    times = torch.arange(1, ys.shape[0] + 1, dtype=torch.float64) * every * truth.dt
    obs = ObservationSet(times, ys, sigma, operator=H)

    model = acc_model(args.resolution, isoneutral=args.isoneutral, A_h=2 * A_true, r_bot=0.5 * r_true)
    t0 = time.time()
    cal = calibrate(model, obs, x, free=["A_h", "r_bot"], max_iter=40, uncertainty="hessian")
    wall = time.time() - t0
    res = {
        "truth": {"A_h": A_true, "r_bot": r_true},
        "first_guess": {"A_h": 2 * A_true, "r_bot": 0.5 * r_true},
        "estimates": {k: float(v) for k, v in cal.estimates.items()},
        "std": {k: float(v) for k, v in cal.std.items()},
        "relative_error": {
            "A_h": float(cal.estimates["A_h"]) / A_true - 1,
            "r_bot": float(cal.estimates["r_bot"]) / r_true - 1,
        },
        "n_obs": int(ys.numel()),
        "sigma_Sv": sigma,
        "window_steps": n,
        "wall_s": wall,
        "evaluations": getattr(cal, "evaluations", None),
    }
    (out / "ocean_calibrate.json").write_text(json.dumps(res, indent=1, default=str))
    print(json.dumps(res, indent=1, default=str))
    plot(truth, model, x, n, cal, A_true, r_true, out / "ocean_calibrate.png", args)


def plot(truth, model, x, n, cal, A_true, r_true, path, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def acc_series(A, r):
        m = acc_model(args.resolution, isoneutral=args.isoneutral, A_h=A, r_bot=r)
        with torch.no_grad():
            tr = rollout(m, x, n, save_every=1)
        return [float(m.output({k: v[i] for k, v in tr.states.items()})["acc_transport"][0])
                for i in range(n + 1)]  # fmt: skip

    days = [i * truth.dt / 86400 for i in range(n + 1)]
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    ax[0].plot(days, acc_series(A_true, r_true), "k", label="truth")
    ax[0].plot(days, acc_series(2 * A_true, 0.5 * r_true), "r--", label="first guess (A_h×2, r_bot×0.5)")
    ax[0].plot(days, acc_series(float(cal.estimates["A_h"]), float(cal.estimates["r_bot"])), "b:",
               label="calibrated")  # fmt: skip
    ax[0].set(xlabel="days into the window", ylabel="ACC transport (Sv)")
    ax[0].legend(fontsize=8)
    hist = getattr(cal, "history", None)
    if hist:
        costs = [h["cost"] if isinstance(h, dict) else float(h) for h in hist]
        ax[1].semilogy(costs, "o-")
        ax[1].set(xlabel="iteration", ylabel="cost")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()

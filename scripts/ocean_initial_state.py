"""Initial-state correction: recover the ACC's initial temperature field from the temperature after n steps.

    python scripts/ocean_initial_state.py --resolution 4 --steps 4 20 --iters 60 --out docs/figures/ocean

Reference: a 30-day spin-up of the ACC (z-level diffusion, Veros EOS). Perturbed: + a Gaussian warm anomaly
(2 °C, radius 8°, decaying with depth over 300 m) in the channel. Loss: mean squared difference between the
temperature after n steps and the reference's; control: the full initial temperature field; L-BFGS (strong
Wolfe). Writes ocean_initial_state.json/.png (loss and distance to the true initial field per iteration,
reference / perturbed / reconstructed surface temperature).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from pelagos.ocean import acc_model


def correct(m, s0, t_true, t_bad, vol, n: int, iters: int):
    """L-BFGS on the initial temperature so that the temperature after ``n`` steps matches the reference's."""
    g = m.grid

    def run(temp):
        st = dict(s0, temp=temp)
        for i in range(n):
            st = m.step(st, i * m.dt)
        return st["temp"]

    with torch.no_grad():
        target = run(t_true)
    ctrl = t_bad.clone().reshape(-1).requires_grad_(True)  # flat: L-BFGS needs a contiguous gradient
    opt = torch.optim.LBFGS([ctrl], lr=1.0, max_iter=iters, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-14, tolerance_change=1e-16)  # fmt: skip
    hist = {"loss": [], "dist": []}

    def closure():
        opt.zero_grad()
        loss = ((run(ctrl.reshape(g.shape)) - target) ** 2 * vol).sum() / vol.sum()
        loss.backward()
        with torch.no_grad():
            d = ((ctrl.reshape(g.shape) - t_true) ** 2 * vol).sum() / vol.sum()
        hist["loss"].append(float(loss.detach()))
        hist["dist"].append(math.sqrt(float(d)))
        return loss

    opt.step(closure)
    res = {"loss_first": hist["loss"][0], "loss_last": hist["loss"][-1], "rms_dist_first_K": hist["dist"][0],
           "rms_dist_last_K": hist["dist"][-1], "evaluations": len(hist["loss"]),
           "history": hist}  # fmt: skip
    return res, ctrl.detach().reshape(g.shape)[0].clone()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--resolution", type=float, default=4.0)
    ap.add_argument("--steps", type=int, nargs="+", default=[4, 20])
    ap.add_argument("--iters", type=int, default=60)
    ap.add_argument("--out", default="docs/figures/ocean")
    args = ap.parse_args()
    out = Path(args.out)
    m = acc_model(args.resolution, isoneutral=False)
    g = m.grid
    s0 = m.initial_state()
    with torch.no_grad():
        for i in range(60):
            s0 = m.step(s0, i * m.dt)
    x = g.xt.reshape(1, 1, -1) - 30.0
    y = g.yt.reshape(1, -1, 1) + 30.0
    z = -g.zt.reshape(-1, 1, 1)
    bump = 2.0 * torch.exp(-(x**2 + y**2) / (2 * 8.0**2)) * torch.exp(-z / 300.0) * g.mask_t
    t_true, t_bad = s0["temp"], s0["temp"] + bump
    vol = g.area_t * g.dz3 * g.mask_t
    results, snaps = {}, {}
    for n in args.steps:
        results[n], snaps[n] = correct(m, s0, t_true, t_bad, vol, n, args.iters)
        print(n, {k: v for k, v in results[n].items() if k != "history"}, flush=True)
    (out / "ocean_initial_state.json").write_text(json.dumps(results, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3 + len(args.steps), figsize=(4 * (3 + len(args.steps)), 3.6))
    for n in args.steps:
        ax[0].semilogy(results[n]["history"]["loss"], label=f"loss, n={n}")
        ax[0].semilogy(results[n]["history"]["dist"], "--", label=f"RMS to truth (K), n={n}")
    ax[0].set(xlabel="evaluation")
    ax[0].legend(fontsize=7)
    land = g.mask_t[0] == 0
    panels = [("reference", t_true[0]), ("perturbed", t_bad[0])] + [(f"reconstructed, n={n}", snaps[n])
                                                                     for n in args.steps]  # fmt: skip
    for a, (title, f) in zip(ax[1:], panels):
        c = a.pcolormesh(g.xt, g.yt, f.masked_fill(land, float("nan")), shading="auto", cmap="inferno",
                         vmin=float(t_true[0].min()), vmax=float(t_bad[0].max()))  # fmt: skip
        a.set(title=f"SST at t=0: {title}", xlabel="lon")
    fig.colorbar(c, ax=ax[-1], label="°C")
    fig.tight_layout()
    fig.savefig(out / "ocean_initial_state.png", dpi=90)


if __name__ == "__main__":
    main()

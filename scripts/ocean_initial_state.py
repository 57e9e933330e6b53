"""Initial-state correction: recover the ACC's initial temperature field from the temperature after n steps.

    python scripts/ocean_initial_state.py --resolution 4 --steps 4 20 100 --iters 40 \
        --out docs/figures/ocean_experiments

Reference: a 30-day spin-up of the ACC (z-level diffusion, Veros EOS). Perturbed: + a Gaussian warm anomaly
(2 °C, radius 8°, decaying with depth over 300 m) in the channel. Loss: mean squared difference between the
temperature after n steps and the reference's; control: the full initial temperature field; L-BFGS (strong
Wolfe). Writes ocean_initial_state.json/.png (loss and distance to the true initial field per evaluation;
the reference surface temperature, and the perturbed and reconstructed initial fields as differences from the
reference at the surface and along a meridional section through the anomaly).
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
    return res, ctrl.detach().reshape(g.shape).clone()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--resolution", type=float, default=4.0)
    ap.add_argument("--steps", type=int, nargs="+", default=[4, 20])
    ap.add_argument("--iters", type=int, default=60)
    ap.add_argument("--out", default="docs/figures/ocean")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
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
    i_sec = int(torch.argmin((g.xt - 30.0).abs()))
    sec = {n: (f - t_true)[:, :, i_sec].tolist() for n, f in snaps.items()}
    results["section_lon"] = float(g.xt[i_sec])
    results["bump_section"] = bump[:, :, i_sec].tolist()
    results["error_section"] = sec
    (out / "ocean_initial_state.json").write_text(
        json.dumps({str(k): v for k, v in results.items()}, indent=1)
    )
    plot(g, args.steps, results, t_true, t_bad, snaps, i_sec, out / "ocean_initial_state.png")


def plot(g, steps, results, t_true, t_bad, snaps, i_sec, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncol = 2 + len(steps)
    fig, ax = plt.subplots(2, ncol, figsize=(3.6 * ncol, 6.4), layout="constrained")
    for n in steps:
        ax[0, 0].semilogy(results[n]["history"]["loss"], label=f"loss (K²), n={n}")
        ax[1, 0].plot(results[n]["history"]["dist"], label=f"n={n}")
    ax[0, 0].set(xlabel="evaluation", title="loss")
    ax[0, 0].legend(fontsize=7)
    ax[1, 0].set(xlabel="evaluation", ylabel="K", title="RMS distance to the true initial T")
    ax[1, 0].set_ylim(bottom=0)
    ax[1, 0].legend(fontsize=7)
    land = g.mask_t[0] == 0
    c = ax[0, 1].pcolormesh(
        g.xt, g.yt, t_true[0].masked_fill(land, float("nan")), shading="auto", cmap="inferno"
    )
    fig.colorbar(c, ax=ax[0, 1], label="°C")
    ax[0, 1].set(title="reference SST at t=0 (cyan: +0.5, 1, 1.5 K perturbation)", xlabel="lon")
    depth = -g.zt
    wet = g.mask_t[:, :, i_sec] == 0
    panels = [("perturbed − ref.", t_bad - t_true)]
    panels += [(f"reconstructed − ref., n={n}", snaps[n] - t_true) for n in steps]
    axes = [ax[1, 1]] + [ax[0, k + 2] for k in range(len(steps))]
    secs = [ax[1, 1]] + [ax[1, k + 2] for k in range(len(steps))]
    for k, (title, d) in enumerate(panels):
        top = axes[k] if k else ax[0, 1]
        if k == 0:  # the perturbation: surface (inset as contours on the reference) and section
            top.contour(g.xt, g.yt, d[0], levels=[0.5, 1.0, 1.5], colors="c", linewidths=0.8)
        else:
            c = top.pcolormesh(g.xt, g.yt, d[0].masked_fill(land, float("nan")), shading="auto",
                               cmap="RdBu_r", vmin=-2, vmax=2)  # fmt: skip
            top.set(title=f"SST error at t=0, n={steps[k - 1]}", xlabel="lon")
        cs = secs[k].pcolormesh(g.yt, depth, d[:, :, i_sec].masked_fill(wet, float("nan")), shading="auto",
                                cmap="RdBu_r", vmin=-2, vmax=2)  # fmt: skip
        secs[k].set(title=f"{title}, {float(g.xt[i_sec]):.0f}°E", xlabel="lat", ylim=(float(depth.max()), 0))
        secs[k].set_ylim(1000, 0)
    secs[0].set_ylabel("depth (m)")
    fig.colorbar(cs, ax=list(ax[:, -1]), label="initial temperature difference (K)")
    fig.savefig(path, dpi=90)


if __name__ == "__main__":
    main()

"""Spin up pelagos's 2° ACC (Veros acc_basic geometry) from rest; record the ACC transport; save the state.

    python scripts/ocean_acc_spinup.py --years 2 --out docs/figures/ocean [--resolution 2]

Writes ``acc_spinup.pt`` (final state + transport series), ``acc_spinup.png`` (transport vs time, BSF, SST,
zonal-mean temperature section, overturning) and ``acc_spinup.json`` (transport at each year end).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from pelagos.ocean import acc_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--years", type=float, default=2.0)
    ap.add_argument("--resolution", type=float, default=2.0)
    ap.add_argument("--out", default="docs/figures/ocean")
    ap.add_argument("--A_h", type=float, default=None)
    ap.add_argument("--r_bot", type=float, default=1e-5)
    ap.add_argument("--every", type=int, default=5)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    kw = {"r_bot": args.r_bot}
    if args.A_h is not None:
        kw["A_h"] = args.A_h
    m = acc_model(args.resolution, **kw)
    s = m.initial_state()
    steps_per_year = round(365 * 86400 / m.dt)
    n = round(args.years * steps_per_year)
    times, acc, ke = [], [], []
    t0 = time.time()
    with torch.no_grad():
        for i in range(1, n + 1):
            s = m.step(s, (i - 1) * m.dt)
            if i % args.every == 0 or i == n:
                o = m.output(s)
                times.append(i * m.dt / (365 * 86400))
                acc.append(float(o["acc_transport"]))
                ke.append(float(o["kinetic_energy"]))
            if i % steps_per_year == 0:
                m.check_cfl(s)
                print(f"year {i // steps_per_year}: ACC {acc[-1]:.2f} Sv, KE {ke[-1]:.3g} m2/s2, "
                      f"{time.time() - t0:.0f} s", flush=True)  # fmt: skip
    wall = time.time() - t0
    torch.save(
        {"state": s, "times": times, "acc": acc, "ke": ke, "resolution": args.resolution},
        out / "acc_spinup.pt",
    )
    year_ends = {round(t): a for t, a in zip(times, acc) if abs(t - round(t)) < 1e-9 and round(t) > 0}
    (out / "acc_spinup.json").write_text(
        json.dumps(
            {"year_end_transport_Sv": year_ends, "steps": n, "wall_s": wall, "ms_per_step": 1e3 * wall / n},
            indent=1,
        )
    )
    plot(m, s, times, acc, out / "acc_spinup.png")
    print(f"{n} steps in {wall:.1f} s ({1e3 * wall / n:.1f} ms/step); final ACC {acc[-1]:.2f} Sv")


def plot(m, s, times, acc, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = m.grid
    o = m.output(s)
    fig, ax = plt.subplots(2, 3, figsize=(14, 7.5))
    ax[0, 0].plot(times, acc)
    ax[0, 0].set(xlabel="years", ylabel="ACC transport (Sv)", title="transport through the channel")
    land = g.mask_t[0] == 0
    psi = o["psi"].masked_fill(land, float("nan"))
    c = ax[0, 1].pcolormesh(g.xu, g.yv, psi, shading="auto", cmap="RdBu_r")
    fig.colorbar(c, ax=ax[0, 1], label="Sv")
    ax[0, 1].set(title="barotropic streamfunction", xlabel="lon", ylabel="lat")
    c = ax[0, 2].pcolormesh(
        g.xt, g.yt, o["sst"].masked_fill(land, float("nan")), shading="auto", cmap="inferno"
    )
    fig.colorbar(c, ax=ax[0, 2], label="°C")
    ax[0, 2].set(title="SST", xlabel="lon")
    mt = g.mask_t
    zm = (s["temp"] * mt).sum(-1) / mt.sum(-1).clamp(min=1)
    c = ax[1, 0].pcolormesh(g.yt, -g.zt, zm, shading="auto", cmap="inferno")
    ax[1, 0].invert_yaxis()
    fig.colorbar(c, ax=ax[1, 0], label="°C")
    ax[1, 0].set(title="zonal-mean temperature", xlabel="lat", ylabel="depth (m)")
    c = ax[1, 1].pcolormesh(g.yv, -g.zw, o["moc"], shading="auto", cmap="RdBu_r")
    ax[1, 1].invert_yaxis()
    fig.colorbar(c, ax=ax[1, 1], label="Sv")
    ax[1, 1].set(title="meridional overturning", xlabel="lat", ylabel="depth (m)")
    um = (s["u"][0] * g.mask_u[0]).mean(-1)
    ax[1, 2].plot(um, g.yt)
    ax[1, 2].set(title="zonal-mean surface u", xlabel="m/s", ylabel="lat")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


if __name__ == "__main__":
    main()

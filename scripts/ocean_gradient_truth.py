"""Gradient truth of the ACC model: reverse mode vs central finite differences after 1 … 200 steps.

    python scripts/ocean_gradient_truth.py --resolution 4 --steps 1 2 4 10 50 200 --h-temp 1e-7 \
        --out docs/figures/ocean_experiments

Loss L = mean(u²) + mean(v²) + 1e-4 mean(temp²) after n tracer steps from a 30-day spin-up; derivatives
w.r.t. (log A_h, log r_bot) and the initial temperature field along random directions (float64,
pelagos.core.check_directional: relative FD step 1e-5 scaled to each input RMS, ``--h-temp`` for the
temperature field, with Richardson O(h⁴); with TKE use 1e-7: larger steps straddle the kinks of the TKE
mixing-length limiter); JVP vs VJP (``check_jvp_vjp``: forward and reverse mode of the same loss w.r.t. both
inputs, at every horizon). Run with and without Veros's isoneutral/GM scheme (which keeps kinks). Writes
ocean_gradient_truth.json/.png (``--replot``: only the figure, from the JSON).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from pelagos.core import check_directional, check_jvp_vjp
from pelagos.ocean import acc_model


def experiment(
    resolution: float, steps: list[int], isoneutral: bool, jvp_max: int = 10**9, h_temp: float = 1e-5
) -> list[dict]:
    m = acc_model(resolution, isoneutral=isoneutral)
    s0 = m.initial_state()
    with torch.no_grad():
        for i in range(60):
            s0 = m.step(s0, i * m.dt)
    m.select_free(["A_h", "r_bot"])
    u0 = m.free_vector().detach()
    g = m.grid
    rows = []
    for n in steps:

        def loss(temp0, u, n=n):
            with m.using(u):
                st = dict(s0, temp=temp0)
                for i in range(n):
                    st = m.step(st, i * m.dt)
            return (
                (st["u"] ** 2).sum() / g.mask_u.sum()
                + (st["v"] ** 2).sum() / g.mask_v.sum()
                + 1e-4 * (st["temp"] ** 2).sum() / g.mask_t.sum()
            )

        t0 = time.time()
        rp = check_directional(lambda u: loss(s0["temp"], u), [u0], n_directions=2, seed=1, tol=1e-6)
        rt = check_directional(
            lambda t: loss(t, u0), [s0["temp"]], n_directions=2, seed=2, tol=1e-6, richardson=True, h=h_temp
        )
        rj = check_jvp_vjp(loss, [s0["temp"], u0], n_directions=1, tol=1e-9) if n <= jvp_max else None
        row = {
            "steps": n,
            "isoneutral": isoneutral,
            "rel_err_params": max(r["rel_error"] for r in rp.rows),
            "rel_err_temp": max(r["rel_error"] for r in rt.rows),
            "jvp_vs_vjp": None if rj is None else max(r["rel_error"] for r in rj.rows),
            "wall_s": time.time() - t0,
            "h_temp": h_temp,
        }
        print(row, flush=True)
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--resolution", type=float, default=4.0)
    ap.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 10, 50, 200])
    ap.add_argument("--jvp-max", type=int, default=10**9, help="JVP vs VJP only up to this many steps")
    ap.add_argument("--out", default="docs/figures/ocean")
    h_help = "relative FD step of the temperature directions (with TKE: 1e-7, see docs/ocean.md)"
    ap.add_argument("--h-temp", type=float, default=1e-5, help=h_help)
    ap.add_argument(
        "--replot", action="store_true", help="only redraw the figure from OUT/ocean_gradient_truth.json"
    )
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.replot:
        rows = json.loads((out / "ocean_gradient_truth.json").read_text())
    else:
        torch.set_num_threads(1)
        rows = experiment(args.resolution, args.steps, False, args.jvp_max, args.h_temp)
        rows += experiment(args.resolution, args.steps, True, args.jvp_max, args.h_temp)
        (out / "ocean_gradient_truth.json").write_text(json.dumps(rows, indent=1))
    plot(rows, out, args.resolution)


def plot(rows: list[dict], out: Path, resolution: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axs = plt.subplots(1, 2, figsize=(11, 4))
    ax = axs[0]
    for iso, ls in ((False, "-"), (True, "--")):
        r = [x for x in rows if x["isoneutral"] == iso]
        lab = "isoneutral+GM" if iso else "z-level diffusion"
        ax.loglog([x["steps"] for x in r], [max(x["rel_err_params"], 1e-16) for x in r], "o" + ls,
                  label=f"(A_h, r_bot), {lab}")  # fmt: skip
        ax.loglog([x["steps"] for x in r], [max(x["rel_err_temp"], 1e-16) for x in r], "s" + ls,
                  label=f"initial temp, {lab}")  # fmt: skip
    ax.axhline(1e-6, color="k", lw=0.5)
    ax.axhline(1e-2, color="r", lw=0.5, ls=":")
    ax.text(1, 1.3e-2, "Veros-Autodiff at 4 steps", color="r", fontsize=8)
    ax.set(xlabel="tracer steps", ylabel="|AD − FD| / |FD|", title=f"ACC {resolution:g}°: gradient truth")
    ax.legend(fontsize=7)
    for iso, ls in ((False, "-"), (True, "--")):
        r = [x for x in rows if x["isoneutral"] == iso and x["jvp_vs_vjp"] is not None]
        axs[1].loglog([x["steps"] for x in r], [max(x["jvp_vs_vjp"], 1e-17) for x in r], "o" + ls,
                      label="isoneutral+GM" if iso else "z-level diffusion")  # fmt: skip
    axs[1].set(xlabel="tracer steps", ylabel="|JVP − VJP| / |JVP|", title="forward vs reverse mode")
    axs[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "ocean_gradient_truth.png", dpi=100)
    print("wrote", out / "ocean_gradient_truth.json", math.nan)


if __name__ == "__main__":
    main()

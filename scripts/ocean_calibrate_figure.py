"""Figure of experiment 3 (issue 11): ACC transport and barotropic streamfunction of the truth, the first
guess and the calibrated run of ``pelagos calibrate examples/ocean_calibrate.yaml``.

    pelagos run examples/ocean_spinup_4deg.yaml
    pelagos calibrate examples/ocean_calibrate.yaml
    python scripts/ocean_calibrate_figure.py   # -> docs/figures/ocean_experiments/ocean_calibrate.png

The three runs go through the same door as every run (``pelagos.io.build.run`` of the calibration
configuration, which starts from the spin-up's restart file through ``initial.restart``), with the parameter
values of the truth (``observations.synthetic.truth``), the first guess (``parameters:``) and the estimates
of the results file. The ψ panels show the end of the window; the altimeter tracks are drawn on the truth.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from pelagos.io.build import run
from pelagos.io.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(ROOT / "examples/ocean_calibrate.yaml"))
    ap.add_argument("--results", default=str(ROOT / "results/ocean_calibrate.json"))
    ap.add_argument("--out", default=str(ROOT / "docs/figures/ocean_experiments/ocean_calibrate.png"))
    ap.add_argument("--work", default=str(ROOT / "results/ocean_calibrate_runs"))
    args = ap.parse_args()
    res = json.loads(Path(args.results).read_text())
    cfg = load_config(args.config)
    truth = cfg.observations.synthetic.truth
    runs = {
        "truth": truth,
        "first guess": {n: cfg.parameters[n] for n in truth},
        "calibrated": res["estimates"],
    }
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    import xarray as xr

    data = {}
    for label, p in runs.items():
        nc = work / f"{label.replace(' ', '_')}.nc"
        sets = [f"parameters.{n}={float(v)!r}" for n, v in p.items()]
        sets += ["output.variables=[acc_transport, psi]", "output.interval=43200", "output.precision=float64"]
        run(args.config, overrides=sets, output=nc, fresh=True, progress=False)
        with xr.open_dataset(nc, decode_times=False) as ds:
            data[label] = {
                "t": ds["time"].values / 86400.0,
                "acc": ds["acc_transport"].values.squeeze(),
                "psi": ds["psi"].values.squeeze()[-1],
                "x": ds["xu"].values,
                "y": ds["yv"].values,
            }
        print(label, p, "ACC at the end", float(data[label]["acc"][-1]), flush=True)
    plot(data, res, cfg, Path(args.out))


def plot(data: dict, res: dict, cfg, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(15, 4.2), layout="constrained")
    gs = fig.add_gridspec(1, 4, width_ratios=[1.3, 1, 1, 1])
    ax = fig.add_subplot(gs[0])
    styles = {"truth": "k-", "first guess": "r--", "calibrated": "b:"}
    for label, d in data.items():
        ax.plot(d["t"] - d["t"][0], d["acc"], styles[label], lw=2 if label != "truth" else 1.2, label=label)
    ax.set(xlabel="days into the 40-day window (after a 1-year spin-up)", ylabel="ACC transport (Sv)")
    est, sd, tr = res["estimates"], res["std"], res["truth"]
    txt = "\n".join(
        f"{n}: {est[n]:.4g} ± {sd[n]:.2g} (truth {tr[n]:.4g}, {100 * (est[n] / tr[n] - 1):+.2f} %)"
        for n in est
    )
    ax.set_title(txt, fontsize=7.5)
    ax.legend(fontsize=8, loc="upper left")
    vmin = min(float(np.nanmin(d["psi"])) for d in data.values())
    vmax = max(float(np.nanmax(d["psi"])) for d in data.values())
    levels = np.linspace(vmin, vmax, 21)
    for k, (label, d) in enumerate(data.items()):
        a = fig.add_subplot(gs[k + 1])
        cs = a.contourf(d["x"], d["y"], d["psi"], levels=levels, cmap="RdBu_r")
        if label != "truth":
            diff = d["psi"] - data["truth"]["psi"]
            a.contour(d["x"], d["y"], diff, levels=[-2, -1, 1, 2], colors="k", linewidths=0.6)
        if label == "truth":
            for p in cfg.observations.synthetic.patterns:
                a.plot(p.at["xu"], p.at["yv"], "k.", ms=3)
        a.set(title=f"ψ (Sv) at day 40: {label}", xlabel="longitude (°E)")
        if k == 0:
            a.set_ylabel("latitude (°N)")
    fig.colorbar(cs, ax=fig.axes[1:], label="ψ (Sv); lines: ±1, ±2 Sv from truth")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    print("wrote", out)


if __name__ == "__main__":
    main()

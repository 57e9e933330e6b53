"""Plots of a QG run: PV snapshots of each layer and the time-mean isotropic kinetic-energy spectrum.

Axes carry units (x, y in km; q in s⁻¹; KE spectral density in m³ s⁻² against wavenumber in rad m⁻¹), the
time of the snapshot is stated in days since the start of the run (or since the model's epoch as a date),
and the figure uses constrained layout so no label is clipped.
"""

from __future__ import annotations

import datetime as _dt
import os

import numpy as np
import torch

from .diagnostics import calc_ispec


def _when(t_seconds: float, epoch: _dt.datetime | None) -> str:
    if epoch is not None:
        return (epoch + _dt.timedelta(seconds=float(t_seconds))).strftime("%Y-%m-%d %H:%M")
    return f"day {float(t_seconds) / 86400.0:.4g} of the run"


def plot_run(model, ds, path: str | os.PathLike | None = None, *, run: int = 0):
    """PV q of every layer at the last saved time, and the KE spectrum of the time-mean diagnostics.

    ``ds``: the run's dataset (``q`` with dims (time, run, lev, y, x), coordinates x, y in m, time in model
    seconds; optional ``KEspec_mean`` (lev, l, k)). Writes ``path`` when given; returns the figure.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nz = int(model.nz)
    has_spec = "KEspec_mean" in ds
    ncol = nz + int(has_spec)
    fig, ax = plt.subplots(1, ncol, figsize=(4.3 * ncol, 3.8), squeeze=False, layout="constrained")
    ax = ax[0]
    x_km = np.asarray(ds["x"].values, dtype=float) / 1e3 if "x" in ds.coords else None
    y_km = np.asarray(ds["y"].values, dtype=float) / 1e3 if "y" in ds.coords else None
    extent = None
    if x_km is not None and y_km is not None and x_km.size > 1 and y_km.size > 1:
        dx, dy = x_km[1] - x_km[0], y_km[1] - y_km[0]
        extent = (x_km[0] - dx / 2, x_km[-1] + dx / 2, y_km[0] - dy / 2, y_km[-1] + dy / 2)
    t_last = float(np.asarray(ds["time"].values)[-1]) if "time" in ds.coords else 0.0
    when = _when(t_last, getattr(model, "epoch", None))
    q_units = ds["q"].attrs.get("units", "s-1")
    for lev in range(nz):
        q = ds["q"].isel(time=-1, run=run, lev=lev).values
        lim = float(np.nanmax(np.abs(q))) or 1.0
        im = ax[lev].imshow(q, origin="lower", cmap="RdBu_r", vmin=-lim, vmax=lim, extent=extent)
        ax[lev].set_title(f"q, layer {lev + 1}: snapshot at {when}", fontsize=9)
        ax[lev].set_xlabel("x (km)" if extent else "x (grid index)")
        ax[lev].set_ylabel("y (km)" if extent else "y (grid index)")
        fig.colorbar(im, ax=ax[lev], shrink=0.85, label=f"q ({q_units})")
    if has_spec:
        ke = torch.as_tensor(np.asarray(ds["KEspec_mean"].values)).mean(0)
        kr, phr = calc_ispec(model, ke)
        for lev in range(nz):
            ax[-1].loglog(np.asarray(kr), np.asarray(phr[lev]), label=f"layer {lev + 1}")
        ax[-1].set_title("KE spectrum, time mean", fontsize=9)
        ax[-1].set_xlabel("isotropic wavenumber k (rad m-1)")
        ax[-1].set_ylabel("KE spectral density (m3 s-2)")
        ax[-1].legend(fontsize=8)
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig

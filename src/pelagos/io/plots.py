"""Plots of water-column output: depth–time sections and depth-integrated time series."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _ds(source):
    import xarray as xr

    return source if isinstance(source, xr.Dataset) else xr.open_dataset(source)


def profile_variables(ds) -> list[str]:
    """Names of the (time, column, z) variables of an output dataset."""
    return [n for n, v in ds.data_vars.items() if v.dims == ("time", "column", "z")]


def plot_sections(
    source, variables: Sequence[str] | None = None, *, column: int = 0, out: str | os.PathLike | None = None
):
    """Depth–time sections (pcolormesh) of each profile variable of one column; returns the figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ds = _ds(source)
    names = list(variables or profile_variables(ds))
    fig, axes = plt.subplots(len(names), 1, figsize=(9, 1.9 * len(names) + 0.6), sharex=True, squeeze=False)
    t = ds["time"].values
    z = ds["z"].values
    for ax, n in zip(axes[:, 0], names):
        v = ds[n].isel(column=column).values.T
        m = ax.pcolormesh(t, z, v, shading="nearest", cmap="viridis")
        fig.colorbar(m, ax=ax, label=ds[n].attrs.get("units", ""))
        ax.set_ylabel("z (m)")
        ax.set_title(
            n + (f" — {ds[n].attrs['long_name']}" if ds[n].attrs.get("long_name") else ""), fontsize=9
        )
    fig.tight_layout()
    if out is not None:
        fig.savefig(out, dpi=110)
    return fig


def plot_integrals(
    source, variables: Sequence[str] | None = None, *, column: int = 0, out: str | os.PathLike | None = None
):
    """Depth-integrated (Σ h·c, per m2) time series of the state variables, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ds = _ds(source)
    if variables is None:
        roles = {n: ds[n].attrs.get("pelagos_role") for n in profile_variables(ds)}
        variables = [n for n, r in roles.items() if r == "state"] or [
            n for n, r in roles.items() if r != "physics"
        ]
    names = list(variables)
    ncol = min(3, max(1, len(names)))
    nrow = -(-len(names) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 2.4 * nrow + 0.4), sharex=True, squeeze=False)
    h = ds["h"].isel(column=column).values
    for ax, n in zip(axes.flat, names):
        v = ds[n].isel(column=column).values
        ax.plot(ds["time"].values, np.sum(v * h, axis=-1), lw=1.2)
        ax.set_title(n, fontsize=9)
        ax.set_ylabel(f"{ds[n].attrs.get('units', '')} · m", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(names) :]:
        ax.set_visible(False)
    fig.autofmt_xdate()
    fig.tight_layout()
    if out is not None:
        fig.savefig(out, dpi=110)
    return fig


def plot_output(path: str | os.PathLike, outdir: str | os.PathLike | None = None) -> list[Path]:
    """Both plots of an output file, written next to it (or to ``outdir``); returns the PNG paths."""
    import matplotlib.pyplot as plt

    p = Path(path)
    d = Path(outdir) if outdir else p.parent
    d.mkdir(parents=True, exist_ok=True)
    a, b = d / f"{p.stem}_sections.png", d / f"{p.stem}_integrals.png"
    plt.close(plot_sections(p, out=a))
    plt.close(plot_integrals(p, out=b))
    return [a, b]

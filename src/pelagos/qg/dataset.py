"""xarray output in pyqg's layout (``to_dataset``): grid fields, coordinates, parameters as attributes."""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr

from .base import QGState
from .diagnostics import DIAGNOSTICS
from .diagnostics import diagnostics as compute_diagnostics

UNITS = {"q": "s^-1", "u": "m s^-1", "v": "m s^-1", "p": "m^2 s^-1", "ufull": "m s^-1", "vfull": "m s^-1"}
LONG = {
    "q": "potential vorticity anomaly",
    "u": "zonal velocity anomaly",
    "v": "meridional velocity anomaly",
    "p": "streamfunction",
    "ufull": "zonal full velocity",
    "vfull": "meridional full velocity",
}


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy()


def to_dataset(
    model, state: QGState, time: float | None = None, diagnostics: bool | list[str] = False
) -> xr.Dataset:
    """Dataset with q, u, v, p, ufull, vfull (dims ``run, lev, y, x``), coordinates x, y [m], k, l [rad m⁻¹],
    the model's parameters as attributes and, if asked, the instantaneous pyqg diagnostics of ``state``."""
    with torch.no_grad():
        f = model.flow(state)
        Ubg = model.coefficients()["Ubg"]
        fields = {"q": f.q, "u": f.u, "v": f.v, "p": model.ifft(f.ph), "ufull": f.u + Ubg, "vfull": f.v}
        dims = ("run", "lev", "y", "x")
        data = {
            n: xr.DataArray(_np(v), dims=dims, attrs={"units": UNITS[n], "long_name": LONG[n]})
            for n, v in fields.items()
        }
        if diagnostics:
            names = None if diagnostics is True else list(diagnostics)
            for n, v in compute_diagnostics(model, state, names).items():
                d = ("run", "lev", "l", "k")[:1] + {4: ("lev", "l", "k"), 3: ("l", "k"), 2: ("lev",), 1: ()}[
                    v.ndim
                ]
                data[n] = xr.DataArray(_np(v), dims=d, attrs={"long_name": DIAGNOSTICS.get(n, n)})
    g = model.grid
    coords = {
        "run": np.arange(state["q"].shape[0]),
        "lev": np.arange(1, model.nz + 1),
        "x": ("x", _np(g.x[0]), {"units": "m"}),
        "y": ("y", _np(g.y[:, 0]), {"units": "m"}),
        "k": ("k", _np(g.kk), {"units": "m^-1"}),
        "l": ("l", _np(g.ll), {"units": "m^-1"}),
    }
    attrs = {
        r["name"]: r["value"] for r in model.parameters_table(as_rows=True) if isinstance(r["value"], float)
    }
    attrs.update(nx=model.nx, ny=model.ny, L=model.L, W=model.W, dt=model.dt, model=type(model).__name__)
    if time is not None:
        attrs["time"] = float(time)
    return xr.Dataset(data, coords=coords, attrs=attrs)

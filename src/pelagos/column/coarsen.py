"""Coarser physics forcing for cheap runs (inverse problems, twins): fewer layers and a longer step.

``coarsen_forcing(forcing, layers=2, dt=21600, start=..., stop=...)`` merges every ``layers`` adjacent layers
and averages every field over each step:

- layers: thickness ``h`` summed, ``temp``/``salt`` thickness-weighted means (heat and salt contents kept);
  ``nuh`` is kept on the interfaces that survive (every ``layers``-th one; the merged layer is well mixed
  inside, so no interior diffusivity is needed);
- time: the record at ``t_k`` is the mean of the hourly (or whatever) records in ``(t_k − dt, t_k]`` — what
  the column driver samples at the end of a step is then the step's mean forcing (light included, so the
  daily light dose is kept exactly when ``dt`` divides a day).

The time axis is ``start, start + dt, ..., stop``; ``start`` itself gets the mean over ``(start − dt, start]``
when the forcing reaches back that far, else its own record.
"""

from __future__ import annotations

import numpy as np

from ..core.errors import ConfigError
from .forcing import ColumnForcing

__all__ = ["coarsen_forcing"]


def coarsen_forcing(
    forcing: ColumnForcing,
    *,
    layers: int = 1,
    dt: float | None = None,
    start: float | str | None = None,
    stop: float | str | None = None,
) -> ColumnForcing:
    """A forcing with ``nz / layers`` layers and records every ``dt`` seconds over ``[start, stop]``.

    ``layers`` must divide ``nz``; ``dt`` must be a multiple of the forcing's record interval (default: that
    interval). ``start``/``stop``: model seconds or ISO dates (default: the whole forcing).
    """
    f = forcing
    nz = f.nz
    if layers < 1 or nz % layers:
        raise ConfigError(f"layers={layers} must be a positive divisor of the forcing's nz={nz}")
    t = f.time
    step = float(np.median(np.diff(t))) if t.size > 1 else 1.0
    dt = step if dt is None else float(dt)
    n_avg = round(dt / step)
    if n_avg < 1 or abs(n_avg * step - dt) > 1e-6 * step:
        raise ConfigError(f"dt={dt:g} s must be a positive multiple of the forcing interval {step:g} s")
    t0 = f.t_start if start is None else f.seconds(start)
    t1 = f.t_stop if stop is None else f.seconds(stop)
    f.check_covers(t0, t1)
    n_out = round((t1 - t0) / dt)
    if n_out < 1 or abs(n_out * dt - (t1 - t0)) > 1e-6 * dt:
        raise ConfigError(f"stop - start ({t1 - t0:g} s) must be a positive multiple of dt ({dt:g} s)")
    times = t0 + dt * np.arange(n_out + 1)
    idx = np.searchsorted(t, times)
    if np.any(np.abs(t[np.minimum(idx, t.size - 1)] - times) > 1e-6 * step):
        raise ConfigError("start must fall on a record of the forcing")

    def window_mean(x: np.ndarray) -> np.ndarray:  # x (Bf, T, ...) -> (Bf, n_out+1, ...)
        out = []
        for i in idx:
            lo = max(i - n_avg + 1, 0)
            out.append(x[:, lo : i + 1].mean(axis=1))
        return np.stack(out, axis=1)

    fl = {k: v.detach().cpu().numpy() for k, v in f.fields.items()}
    h = window_mean(fl["h"])
    Bf, T = h.shape[:2]
    hc = h.reshape(Bf, T, nz // layers, layers)
    h_new = hc.sum(-1)

    def merge(x: np.ndarray) -> np.ndarray:
        return (window_mean(x * fl["h"]).reshape(Bf, T, nz // layers, layers)).sum(-1) / h_new

    nuh = window_mean(fl["nuh"])[..., ::layers]
    out = ColumnForcing(
        times,
        h_new,
        merge(fl["temp"]),
        merge(fl["salt"]),
        nuh,
        window_mean(fl["I_0"]),
        bottom_stress=window_mean(fl["bottom_stress"]) if "bottom_stress" in fl else None,
        epoch=f.epoch,
        latitude=None if f.latitude is None else f.latitude.cpu().numpy(),
        longitude=None if f.longitude is None else f.longitude.cpu().numpy(),
        dtype=f.dtype,
        name=f"{f.name} (coarsened: {nz // layers} layers, dt {dt:g} s)",
    )
    return out

"""Setups: Veros's ``acc_basic`` (re-entrant channel south of 20°S joined to a closed basin)."""

from __future__ import annotations

import math

import torch

from .grid import Grid, acc_grid
from .model import OceanModel


def acc_wind(g: Grid, amplitude: float = 0.1) -> torch.Tensor:
    """Zonal wind stress of acc_basic on the u rows (N m⁻², ``(ny,)``): an eastward ``τ₀ sin`` arch over the
    channel (south of 20°S) and ``τ₀ (1 − cos)`` north of 10°N, zero in between."""
    y = g.yt
    y_s, y_n = float(g.y0), float(g.yv[-1])
    tx = torch.zeros_like(y)
    tx = torch.where(y < -20, amplitude * torch.sin(math.pi * (y - y_s) / (-20.0 - y_s)), tx)
    tx = torch.where(y > 10, amplitude * (1 - torch.cos(2 * math.pi * (y - 10.0) / (y_n - 10.0))), tx)
    return tx


def acc_t_star(g: Grid) -> torch.Tensor:
    """Restoring SST of acc_basic (°C, ``(ny,)``): 15 °C, falling linearly to 0 at the southern edge south of
    20°S and to 0 at the northern edge north of 20°N."""
    y = g.yt
    y_s, y_n = float(g.y0), float(g.yv[-1])
    ts = torch.full_like(y, 15.0)
    ts = torch.where(y < -20, 15 * (y - y_s) / (-20.0 - y_s), ts)
    ts = torch.where(y > 20, 15 * (1 - (y - 20.0) / (y_n - 20.0)), ts)
    return ts


def acc_model(
    resolution: float = 2.0, *, nz: int = 15, dtype: torch.dtype = torch.float64, **kwargs
) -> OceanModel:
    """The acc_basic configuration: 2° → 30 × 42 × 15, dt_mom 4800 s, dt_tracer 43 200 s
    (scaled down with finer resolution),
    A_h = 2e-11 (resolution·degtom)³ m² s⁻¹ (Veros's scaling with the grid spacing), r_bot 1e-5 s⁻¹,
    wind 0.1 N m⁻², SST restoring over 30 days. ``kwargs`` go to :class:`OceanModel`."""
    g = acc_grid(resolution, nz=nz, dtype=dtype)
    degtom = 6370e3 * math.pi / 180
    kw = dict(dt_mom=4800.0 * min(1.0, resolution / 2.0), dt_tracer=43200.0 * min(1.0, resolution / 2.0),
              A_h=2e-11 * (resolution * degtom) ** 3, r_bot=1e-5)  # fmt: skip
    kw.update(kwargs)
    amp = float(kw.get("taux_0", 0.1))
    return OceanModel(g, taux=acc_wind(g, amp), t_star=acc_t_star(g), taux_ref=amp, **kw)

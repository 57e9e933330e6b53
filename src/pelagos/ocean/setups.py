"""Setups: Veros's ``acc_basic`` (re-entrant channel south of 20°S joined to a closed basin)."""

from __future__ import annotations

import math

import torch

from .grid import Grid, acc_grid
from .model import OceanModel

HALO = 2  # Veros's halo width: its global latitude extremes include two rows beyond each edge


def acc_wind(g: Grid, amplitude: float = 0.1) -> torch.Tensor:
    """Zonal wind stress of acc_basic on the u rows (N m⁻², ``(ny,)``), Veros's formula: evaluated at the face
    latitudes ``yu = yt + Δφ/2`` and normalised with Veros's *global* latitude extremes, which include its
    two halo rows (``yt₀ = yt[0] − 2Δφ``, ``yu₀ = yu[0] − 2Δφ``, ``yu_max = yu[−1] + 2Δφ``):
    ``τ₀ sin(π (yu − yu₀)/(−20 − yt₀))`` where ``yt < −20°`` (2°: ``0.1 sin(π (yu + 44)/25)``) and
    ``τ₀ (1 − cos(2π (yu − 10)/(yu_max − 10)))`` where ``yt > 10°``; zero in between. Enters the momentum
    equation as τ/ρ₀ in the surface cell."""
    yt = g.yt
    yu = g.yv
    d = HALO * g.dlat
    yt0, yu0, yu_max = float(yt[0]) - d, float(yu[0]) - d, float(yu[-1]) + d
    tx = torch.zeros_like(yt)
    tx = torch.where(yt < -20, amplitude * torch.sin(math.pi * (yu - yu0) / (-20.0 - yt0)), tx)
    tx = torch.where(yt > 10, amplitude * (1 - torch.cos(2 * math.pi * (yu - 10.0) / (yu_max - 10.0))), tx)
    return tx


def acc_t_star(g: Grid) -> torch.Tensor:
    """Restoring SST of acc_basic (°C, ``(ny,)``), Veros's formula: 15 °C, ``15 (yt − yt₀)/(−20 − yt₀)`` where
    ``yt < −20°`` and ``15 (1 − (yt − 20)/(yt_max − 20))`` where ``yt > 20°``, with Veros's global extremes
    including the two halo rows (``yt₀ = yt[0] − 2Δφ``, ``yt_max = yt[−1] + 2Δφ``; 2°: 2.4 °C at 41°S)."""
    y = g.yt
    y0, y1 = float(y[0]) - HALO * g.dlat, float(y[-1]) + HALO * g.dlat
    ts = torch.full_like(y, 15.0)
    ts = torch.where(y < -20, 15 * (y - y0) / (-20.0 - y0), ts)
    ts = torch.where(y > 20, 15 * (1 - (y - 20.0) / (y1 - 20.0)), ts)
    return ts


def acc_model(
    resolution: float = 2.0, *, nz: int = 15, dtype: torch.dtype = torch.float64, **kwargs
) -> OceanModel:
    """The acc_basic configuration: 2° → 30 × 42 × 15, dt_mom 4800 s, dt_tracer 43 200 s
    (scaled down with finer resolution),
    A_h = 2e-11 (resolution·degtom)³ m² s⁻¹ (Veros's scaling with the grid spacing), r_bot 1e-5 s⁻¹,
    wind 0.1 N m⁻², SST restoring over 30 days, Veros's vertical grid and TKE mixing (``mixing="tke"``;
    ``mixing="constant"`` for the constant-viscosity stand-in). ``kwargs`` go to :class:`OceanModel`."""
    g = acc_grid(resolution, nz=nz, dtype=dtype)
    degtom = 6370e3 * math.pi / 180
    kw = dict(dt_mom=4800.0 * min(1.0, resolution / 2.0), dt_tracer=43200.0 * min(1.0, resolution / 2.0),
              A_h=2e-11 * (resolution * degtom) ** 3, r_bot=1e-5)  # fmt: skip
    kw.update(kwargs)
    kw.setdefault("mixing", "tke")
    amp = float(kw.get("taux_0", 0.1))
    return OceanModel(g, taux=acc_wind(g, amp), t_star=acc_t_star(g), taux_ref=amp, **kw)

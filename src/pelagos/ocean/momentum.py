"""Explicit momentum tendencies on the C-grid: Coriolis + metric, advection, pressure gradient, friction.

All functions take ``u, v`` of shape ``(..., nz, ny, nx)`` (m s⁻¹, masked: zero on dry faces) and return
tendencies in m s⁻² on the u and v points (see :mod:`pelagos.ocean.grid`). The discretisations are chosen
so that the discrete kinetic energy ``KE = ½ Σ (V_u u² + V_v v²)`` (``V_u = area_t·dz``, ``V_v = area_v·dz``)
is exactly unchanged by the Coriolis + metric term, changed by advection only through boundary/divergence
terms, and only decreased by friction.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .grid import Grid

GRAV = 9.81  # m s-2 (Veros)
RHO_0 = 1024.0  # kg m-3 (Veros)


def grid_cached(g: Grid, key, ref: torch.Tensor, build: Callable[[], Any]) -> Any:
    """``build()`` once per grid, ``key``, dtype and device (state-independent coefficients: masks × metric
    factors), kept on the grid object; rebuilt if the grid's masks or layer thicknesses are replaced or
    modified in place."""
    store = g.__dict__.setdefault("_ocean_coefficient_cache", {})
    version = tuple((a.data_ptr(), a._version) for a in (g.mask_t, g.mask_u, g.mask_v, g.dz))
    k = (key, ref.dtype, ref.device)
    hit = store.get(k)
    if hit is not None and hit[0] == version:
        return hit[1]
    value = build()
    store[k] = (version, value)
    return value


def transports(g: Grid, u: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Volume transports (m³ s⁻¹): through east faces ``ut``, north faces ``vt``, and up through the top
    face of every T cell ``wt`` (from continuity, integrated up from the bottom: ``wt = 0`` below the deepest
    cell; at the surface ``wt`` is the residual of the depth-integrated divergence, 0 under the rigid lid).
    """
    dz = g.dz3
    ut = u * g.dy * dz
    vt = v * g.dxv * dz
    div = ut - g.west(ut) + vt - g.south(vt)
    wt = -torch.flip(torch.cumsum(torch.flip(div, (-3,)), -3), (-3,))
    return ut, vt, wt


def surface_closed(wt: torch.Tensor) -> torch.Tensor:
    """``wt`` with the transport through the surface (level 0's top face) set to zero (rigid lid)."""
    return torch.cat([torch.zeros_like(wt[..., :1, :, :]), wt[..., 1:, :, :]], -3)


def coriolis_metric(g: Grid, u: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Coriolis force plus the spherical metric term, ``(f + u tanφ / R) k × u``, energy-neutral.

    Both velocity components are averaged to the T points (``ū, v̄``), multiplied there by
    ``(f + ū tanφ/R)·area_t``, and averaged back with the transposes of the same averaging operators, so
    ``Σ V_u u du + Σ V_v v dv = 0`` to rounding for any ``u, v``.
    """
    ubar = 0.5 * (u + g.west(u))
    vbar = 0.5 * (v + g.south(v))
    feff = (g.f_t + g.tan_t / g.radius * ubar) * g.area_t
    gx = feff * vbar
    gy = feff * ubar
    du = 0.5 * (gx + g.east(gx)) / g.area_t * g.mask_u
    dv = -0.5 * (gy + g.north(gy)) / g.area_v * g.mask_v
    return du, dv


def advection(
    g: Grid, u: torch.Tensor, v: torch.Tensor, transport: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flux-form momentum advection, second-order centred (transports averaged to the momentum cells' faces).

    ``transport``: ``(ut, vt, wt)`` from :func:`transports`. Returns ``(du, dv)`` in m s⁻².
    """
    ut, vt, wt = transport
    wt = surface_closed(wt)  # rigid lid: nothing leaves through the surface
    vol_u = g.area_t * g.dz3
    vol_v = g.area_v * g.dz3
    # u cells: west face at T(i), north face at the corner (i+½, j+½), top face at w(k)
    fx = 0.25 * (ut + g.west(ut)) * (u + g.west(u))
    fy = 0.25 * (vt + g.east(vt)) * (u + g.north(u))
    fz = 0.25 * (wt + g.east(wt)) * (u + g.above(u))
    du = -((g.east(fx) - fx) + (fy - g.south(fy)) + (fz - g.below(fz))) / vol_u * g.mask_u
    # v cells: east face at the corner, south face at T(j), top face at w(k)
    fx = 0.25 * (ut + g.north(ut)) * (v + g.east(v))
    fy = 0.25 * (vt + g.south(vt)) * (v + g.south(v))
    fz = 0.25 * (wt + g.north(wt)) * (v + g.above(v))
    dv = -((fx - g.west(fx)) + (g.north(fy) - fy) + (fz - g.below(fz))) / vol_v * g.mask_v
    return du, dv


def hydrostatic_pressure(g: Grid, rho: torch.Tensor, rho_0: float = RHO_0) -> torch.Tensor:
    """Hydrostatic pressure anomaly over ``rho_0`` at T points (m² s⁻²): ``g/ρ₀ ∫ (ρ − ρ₀) dz`` from the
    surface to the cell centre (rigid lid: the surface pressure is the solve's job)."""
    b = GRAV / rho_0 * (rho - rho_0) * g.mask_t * g.dz3
    return torch.cumsum(b, -3) - 0.5 * b


def pressure_gradient(g: Grid, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``−∇p`` on the u and v faces (m s⁻²) of a pressure/ρ₀ ``p`` at T points (m² s⁻²)."""
    du = -(g.east(p) - p) / g.dxt * g.mask_u
    dv = -(g.north(p) - p) / g.dy * g.mask_v
    return du, dv


def harmonic_friction(
    g: Grid, u: torch.Tensor, v: torch.Tensor, A_h: torch.Tensor, cos_power: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lateral friction ``∇·(A_h cos^p φ ∇u)`` (free slip at coasts), m s⁻².

    ``A_h``: viscosity, m² s⁻¹ (scalar or broadcastable, e.g. ``(B, 1, 1, 1)``); ``cos_power``: Veros's
    ``hor_friction_cosPower`` (the viscosity is scaled by ``cos(latitude)**cos_power``). Dissipative:
    ``Σ V_u u du + Σ V_v v dv ≤ 0``.
    """
    ct = g.cos_t**cos_power
    cv = g.cos_v**cos_power
    mu, mv = g.mask_u, g.mask_v
    fx = A_h * ct * g.dy / g.dxt * (u - g.west(u)) * mu * g.west(mu)
    fy = A_h * cv * g.dxv / g.dy * (g.north(u) - u) * mu * g.north(mu)
    du = ((g.east(fx) - fx) + (fy - g.south(fy))) / g.area_t * mu
    fx = A_h * cv * g.dy / g.dxv * (g.east(v) - v) * mv * g.east(mv)
    fy = A_h * ct * g.dxt / g.dy * (v - g.south(v)) * mv * g.south(mv)
    dv = ((fx - g.west(fx)) + (g.north(fy) - fy)) / g.area_v * mv
    return du, dv


def kinetic_energy(g: Grid, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Volume-integrated kinetic energy per unit density ``½ Σ (V_u u² + V_v v²)`` (m⁵ s⁻²), ``(...)``."""
    e = g.area_t * g.dz3 * u**2 * g.mask_u + g.area_v * g.dz3 * v**2 * g.mask_v
    return 0.5 * e.sum((-3, -2, -1))

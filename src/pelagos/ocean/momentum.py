"""Explicit momentum tendencies on the C-grid: Coriolis + metric, advection, pressure gradient, friction.

All functions take ``u, v`` of shape ``(..., nz, ny, nx)`` (m s⁻¹, masked: zero on dry faces) and return
tendencies in m s⁻² on the u and v points (see :mod:`pelagos.ocean.grid`). The discretisations are chosen
so that the discrete kinetic energy ``KE = ½ Σ (V_u u² + V_v v²)`` (``V_u = area_t·dz``, ``V_v = area_v·dz``)
is exactly unchanged by the Coriolis + metric term, changed by advection only through boundary/divergence
terms, and only decreased by friction.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

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


class _Coefficients(NamedTuple):
    """State-independent factors of the momentum operators (metric terms × masks), built once per grid."""

    ut: torch.Tensor  # dy·dz (nz, 1, 1), m²
    vt: torch.Tensor  # dxv·dz (nz, ny, 1), m²
    fa: torch.Tensor  # f·area_t (ny, 1), m² s⁻¹
    ta: torch.Tensor  # ½ tanφ/R·area_t (ny, 1), m
    cor_u: torch.Tensor  # ¼ mask_u / area_t
    cor_v: torch.Tensor  # −¼ mask_v / area_v
    adv_u: torch.Tensor  # −¼ mask_u / vol_u
    adv_v: torch.Tensor  # −¼ mask_v / vol_v


def _coefficients(g: Grid) -> _Coefficients:
    def build() -> _Coefficients:
        dz = g.dz3
        return _Coefficients(
            ut=g.dy * dz,
            vt=g.dxv * dz,
            fa=g.f_t * g.area_t,
            ta=0.5 * (g.tan_t / g.radius) * g.area_t,
            cor_u=0.25 * g.mask_u / g.area_t,
            cor_v=-0.25 * g.mask_v / g.area_v,
            adv_u=-0.25 * g.mask_u / (g.area_t * dz),
            adv_v=-0.25 * g.mask_v / (g.area_v * dz),
        )

    return grid_cached(g, "momentum", g.mask_t, build)


def _friction_coefficients(g: Grid, cos_power: float) -> tuple[torch.Tensor, ...]:
    def build() -> tuple[torch.Tensor, ...]:
        ct, cv = g.cos_t**cos_power, g.cos_v**cos_power
        mu, mv = g.mask_u, g.mask_v
        return (
            ct * g.dy / g.dxt * mu * g.west(mu),  # u, west faces
            cv * g.dxv / g.dy * mu * g.north(mu),  # u, north faces
            mu / g.area_t,
            cv * g.dy / g.dxv * mv * g.east(mv),  # v, east faces
            ct * g.dxt / g.dy * mv * g.south(mv),  # v, south faces
            mv / g.area_v,
        )

    return grid_cached(g, ("friction", float(cos_power)), g.mask_t, build)


def transports(g: Grid, u: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Volume transports (m³ s⁻¹): through east faces ``ut``, north faces ``vt``, and up through the top
    face of every T cell ``wt`` (from continuity, integrated up from the bottom: ``wt = 0`` below the deepest
    cell; at the surface ``wt`` is the residual of the depth-integrated divergence, 0 under the rigid lid).
    """
    c = _coefficients(g)
    ut = u * c.ut
    vt = v * c.vt
    div = ut - g.west(ut) + vt - g.south(vt)
    wt = -torch.flip(torch.cumsum(torch.flip(div, (-3,)), -3), (-3,))
    return ut, vt, wt


def surface_closed(wt: torch.Tensor) -> torch.Tensor:
    """``wt`` with the transport through the surface (level 0's top face) set to zero (rigid lid)."""
    return torch.nn.functional.pad(wt[..., 1:, :, :], (0, 0, 0, 0, 1, 0))


def coriolis_metric(g: Grid, u: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Coriolis force plus the spherical metric term, ``(f + u tanφ / R) k × u``, energy-neutral.

    Both velocity components are averaged to the T points (``ū, v̄``), multiplied there by
    ``(f + ū tanφ/R)·area_t``, and averaged back with the transposes of the same averaging operators, so
    ``Σ V_u u du + Σ V_v v dv = 0`` to rounding for any ``u, v``.
    """
    c = _coefficients(g)
    u2 = u + g.west(u)  # 2 ū
    v2 = v + g.south(v)  # 2 v̄
    feff = c.fa + c.ta * u2  # (f + ū tanφ/R)·area_t
    gx = feff * v2
    gy = feff * u2
    du = (gx + g.east(gx)) * c.cor_u
    dv = (gy + g.north(gy)) * c.cor_v
    return du, dv


def advection(
    g: Grid, u: torch.Tensor, v: torch.Tensor, transport: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flux-form momentum advection, second-order centred (transports averaged to the momentum cells' faces).

    ``transport``: ``(ut, vt, wt)`` from :func:`transports`. Returns ``(du, dv)`` in m s⁻².
    """
    ut, vt, wt = transport
    wt = surface_closed(wt)  # rigid lid: nothing leaves through the surface
    c = _coefficients(g)
    e, w, n, so, a, b = g.east, g.west, g.north, g.south, g.above, g.below
    # u cells: west face at T(i), north face at the corner (i+½, j+½), top face at w(k)
    fx = (ut + w(ut)) * (u + w(u))
    fy = (vt + e(vt)) * (u + n(u))
    fz = (wt + e(wt)) * (u + a(u))
    du = ((e(fx) - fx) + (fy - so(fy)) + (fz - b(fz))) * c.adv_u
    # v cells: east face at the corner, south face at T(j), top face at w(k)
    fx = (ut + n(ut)) * (v + e(v))
    fy = (vt + so(vt)) * (v + so(v))
    fz = (wt + n(wt)) * (v + a(v))
    dv = ((fx - w(fx)) + (n(fy) - fy) + (fz - b(fz))) * c.adv_v
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
    cxu, cyu, au, cxv, cyv, av = _friction_coefficients(g, cos_power)
    fx = cxu * (u - g.west(u))
    fy = cyu * (g.north(u) - u)
    du = A_h * (((g.east(fx) - fx) + (fy - g.south(fy))) * au)
    fx = cxv * (g.east(v) - v)
    fy = cyv * (v - g.south(v))
    dv = A_h * (((fx - g.west(fx)) + (g.north(fy) - fy)) * av)
    return du, dv


def kinetic_energy(g: Grid, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Volume-integrated kinetic energy per unit density ``½ Σ (V_u u² + V_v v²)`` (m⁵ s⁻²), ``(...)``."""
    e = g.area_t * g.dz3 * u**2 * g.mask_u + g.area_v * g.dz3 * v**2 * g.mask_v
    return 0.5 * e.sum((-3, -2, -1))

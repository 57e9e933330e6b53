"""Equation of state of Veros's ``eq_of_state_type = 3`` (the ``acc_basic`` setup) and what derives from it.

Veros's type 3 is the simplified nonlinear equation of state of Vallis (2008) (Veros module
``nonlinear_eq2``):
compressibility, thermobaricity and a quadratic temperature term, linear in salinity::

    ρ' = −ρ₀ [ g z/c₀² + β_T (1 − γ g z ρ₀) Θ' + ½ β_TT Θ'² − β_S (S − S₀) ]     (kg m⁻³, ρ' = ρ − ρ₀)

with z = −p the height (m, negative below the surface; Veros passes p = |zt| in m as "pressure"),
Θ' = Θ − 9.85 °C, ρ₀ = 1024 kg m⁻³, g = 9.81 m s⁻², c₀ = 1490 m s⁻¹, β_T = 1.67e-4 K⁻¹, β_TT = 1e-5 K⁻²,
β_S = 0.78e-3 (g/kg)⁻¹, γ = 1.1e-8 m s² kg⁻¹, S₀ = 35 g/kg.

Layout (see :mod:`pelagos.ocean.grid`): 3-D fields ``(..., nz, ny, nx)``, level 0 the surface layer, any
leading batch dims; ``depth`` (m, ≥ 0) broadcastable, e.g. ``(nz, 1, 1)``. Every function is pure and
differentiable (a
polynomial: no kinks), float32/float64, any device.

Public API (stable; used by the ``ocean`` model):

- ``density_anomaly(temp, salt, depth) -> Tensor``: ρ − ρ₀ (kg m⁻³), Veros's ``rho`` (unmasked: × mask_t).
- ``drho_dtemp(temp, depth) -> Tensor``: ∂ρ/∂Θ (kg m⁻³ K⁻¹); ``drho_dsalt(temp) -> Tensor``: ∂ρ/∂S, constant
  β_S ρ₀ (kg m⁻³ (g/kg)⁻¹), shaped like ``temp``.
- ``dyn_enthalpy(temp, salt, depth) -> Tensor``: Veros's dynamic enthalpy (m² s⁻²).
- ``int_drho_dtemp(temp, depth)``, ``int_drho_dsalt(depth)``: ∫ ∂ρ/∂Θ dp and ∫ ∂ρ/∂S dp from the surface
  (kg m⁻² K⁻¹, kg m⁻² (g/kg)⁻¹), Veros's ``int_drhodT`` / ``int_drhodS`` (the energy diagnostics use them).
- ``vertical_grid(dz) -> VerticalGrid(zt, zw, dzw)``: Veros's u-centred vertical grid (T points *not* at the
  cell centres; see the function), surface first, m. ``w_spacing(dz)`` = its ``dzw``.
- ``mask_w(mask_t) -> Tensor``: W-point mask (top face of cell k wet when cells k−1 and k are; k = 0: cell 0).
- ``buoyancy_frequency_sq(temp, salt, dz, mask_t) -> Tensor``: N² at the W points (s⁻²), Veros's ``Nsqr``:
  ``−g/ρ₀ (ρ'(Θ[k−1], S[k−1], p[k]) − ρ'(Θ[k], S[k], p[k])) / dzw[k] · mask_w`` for k ≥ 1 (the upper cell
  brought to the lower cell's pressure), copied from k = 1 at the surface; p = −zt of :func:`vertical_grid`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = [
    "BETA_S",
    "BETA_T",
    "BETA_TT",
    "C_0",
    "GAMMA",
    "GRAV",
    "RHO_0",
    "S_0",
    "THETA_0",
    "VerticalGrid",
    "buoyancy_frequency_sq",
    "density_anomaly",
    "drho_dsalt",
    "drho_dtemp",
    "dyn_enthalpy",
    "int_drho_dsalt",
    "int_drho_dtemp",
    "mask_w",
    "vertical_grid",
    "w_spacing",
]

RHO_0 = 1024.0  # kg m-3, Boussinesq reference density (Veros rho_0)
GRAV = 9.81  # m s-2
THETA_0 = 283.0 - 273.15  # deg C
S_0 = 35.0  # g/kg
C_0 = 1490.0  # m s-1, sound speed
BETA_T = 1.67e-4  # 1/K
BETA_TT = 1e-5  # 1/K^2
BETA_S = 0.78e-3  # (g/kg)^-1
GAMMA = 1.1e-8  # thermobaric coefficient, m s2 kg-1


def density_anomaly(temp: torch.Tensor, salt: torch.Tensor | float | None, depth) -> torch.Tensor:
    """ρ − ρ₀ (kg m⁻³) from conservative temperature ``temp`` (°C), salinity ``salt`` (g/kg; None = S₀) and
    ``depth`` = −z ≥ 0 (m)."""
    z = -depth
    th = temp - THETA_0
    r = GRAV * z / C_0**2 + BETA_T * (1.0 - GAMMA * GRAV * z * RHO_0) * th + 0.5 * BETA_TT * th * th
    if salt is not None:
        r = r - BETA_S * (salt - S_0)
    return -r * RHO_0


def drho_dtemp(temp: torch.Tensor, depth) -> torch.Tensor:
    """∂ρ/∂Θ (kg m⁻³ K⁻¹) at ``depth`` (m)."""
    z = -depth
    return -(BETA_TT * (temp - THETA_0) + BETA_T * (1.0 - GAMMA * GRAV * z * RHO_0)) * RHO_0


def drho_dsalt(temp: torch.Tensor) -> torch.Tensor:
    """∂ρ/∂S = β_S ρ₀ (kg m⁻³ (g/kg)⁻¹), shaped like ``temp``."""
    return torch.full_like(temp, BETA_S * RHO_0)


def dyn_enthalpy(temp: torch.Tensor, salt: torch.Tensor | float | None, depth) -> torch.Tensor:
    """Veros's dynamic enthalpy for type 3 (m² s⁻²) (its formula, including its β_TT Θ'² coefficient)."""
    z = -depth
    th = temp - THETA_0
    lin = -BETA_T * th - BETA_TT * th * th
    if salt is not None:
        lin = lin + BETA_S * (salt - S_0)
    return GRAV * 0.5 * z * z * (-GRAV / C_0**2 + BETA_T * GRAV * RHO_0 * GAMMA * th) + GRAV * z * lin


def int_drho_dtemp(temp: torch.Tensor, depth) -> torch.Tensor:
    """Veros's ``int_drhodT`` (kg m⁻² K⁻¹)."""
    z = -depth
    th = temp - THETA_0
    return RHO_0 * z * (BETA_T + BETA_TT * th) - RHO_0 * BETA_T * GAMMA * GRAV * RHO_0 * z * z / 2


def int_drho_dsalt(depth) -> torch.Tensor:
    """Veros's ``int_drhodS`` (kg m⁻² (g/kg)⁻¹)."""
    return BETA_S * RHO_0 * torch.as_tensor(depth)


class VerticalGrid(NamedTuple):
    zt: torch.Tensor
    zw: torch.Tensor
    dzw: torch.Tensor


def vertical_grid(dz: torch.Tensor) -> VerticalGrid:
    """Veros's vertical grid from the layer thicknesses ``dz`` (surface first, m), surface first.

    Veros builds a "u-centred" grid: the W points ``zw`` (top face of each cell, 0 at the surface) are the
    cumulative thicknesses, and the T points ``zt`` are placed so that every interior face lies *midway
    between* the two T points around it (not at the cell centres: for acc_basic ``zt = −14, −26, −70, −106,
    …`` m instead of ``−10, −34, −68, …``). ``dzw[k]`` is the distance attached to the W point k: ``zt[k−1] −
    zt[k]`` for k ≥ 1 and ``2 dz[0] − dzw[1]`` at the surface (acc_basic: 28, 12, 44, 36, 76, 76, … m).
    Returns heights in m (negative below the surface), each ``(nz,)``.
    """
    dz = torch.as_tensor(dz)
    d = torch.flip(dz, (0,))  # Veros order: bottom first
    n = d.numel()
    zw = torch.cat([torch.zeros_like(d[:1]), torch.cumsum(d[1:], 0)])
    zt = torch.cat([zw[:1] - 0.5 * d[:1], 2.0 * zw[:-1]])
    sign = torch.ones_like(d)
    sign[::2] = -1.0
    zt = sign * torch.cumsum(sign * zt, 0)
    if n > 1:
        dzw = torch.cat([zt[1:] - zt[:-1], (2.0 * d[-1] - (zt[-1] - zt[-2])).reshape(1)])
    else:
        dzw = d.clone()
    zt = zt - zw[-1]
    zw = zw - zw[-1]
    flip = lambda a: torch.flip(a, (0,))  # noqa: E731
    return VerticalGrid(flip(zt), flip(zw), flip(dzw))


def w_spacing(dz: torch.Tensor) -> torch.Tensor:
    """Veros's ``dzw`` (m, surface first): the distance attached to each W point, see
    :func:`vertical_grid`."""
    return vertical_grid(dz).dzw


def mask_w(mask_t: torch.Tensor) -> torch.Tensor:
    """W-point mask ``(..., nz, ny, nx)``: the top face of cell k (k ≥ 1) is wet when cells k−1 and k are;
    the surface point (k = 0) follows cell 0."""
    return torch.cat(
        [mask_t[..., :1, :, :], torch.minimum(mask_t[..., 1:, :, :], mask_t[..., :-1, :, :])], -3
    )


def buoyancy_frequency_sq(
    temp: torch.Tensor,
    salt: torch.Tensor | float | None,
    dz: torch.Tensor,
    mask_t: torch.Tensor,
) -> torch.Tensor:
    """N² (s⁻²) at the W points (top face of each cell), ``(..., nz, ny, nx)``, as Veros's ``Nsqr`` (see the
    module doc); ``dz`` layer thicknesses (nz,) m, surface first."""
    vg = vertical_grid(torch.as_tensor(dz).to(temp))
    p = (-vg.zt).reshape(-1, 1, 1)
    dzw = vg.dzw.reshape(-1, 1, 1)

    def lev(a, sl):
        return a[..., sl, :, :] if torch.is_tensor(a) and a.dim() >= 3 else a

    rho_up = density_anomaly(temp[..., :-1, :, :], lev(salt, slice(None, -1)), p[1:])
    rho_lo = density_anomaly(temp[..., 1:, :, :], lev(salt, slice(1, None)), p[1:]) * mask_t[..., 1:, :, :]
    mw = mask_w(mask_t)
    n2 = -GRAV / RHO_0 * (rho_up - rho_lo) / dzw[1:] * mw[..., 1:, :, :]
    return torch.cat([n2[..., :1, :, :], n2], -3)

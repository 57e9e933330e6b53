"""Turbulent kinetic energy (TKE) vertical mixing as in Veros (Gaspar et al. 1990 / Eden et al. 2014 closure).

Equations (on the W points, the top face of every cell):

- mixing length ``l = √2 √e / N`` (N² floored at 1e-12 s⁻²), then limited as in MITgcm/OPA
  (``tke_mxl_choice = 2``): ``l[k] ≤ l[k−1] + Δz[k−1]`` going down from the surface, ``l[0] ≤ l_min + Δz[0]``,
  ``l[k] ≤ l[k+1] + Δz[k]`` going up from the bottom, and ``l ≥ l_min``;
- viscosity ``κ_M = max(κ_M,min, min(κ_M,max, c_k l √e))`` and diffusivity ``κ_H = max(κ_H,min, κ_M/Pr)``
  (Pr = ``Prandtl`` constant, or ``max(1, min(10, 6.6 Ri))`` with ``prandtl_from_ri``), optionally raised to
  the Bryan & Lewis (1979) profile ``(0.8 + 1.05/π atan((d − 2500 m)/222.2 m))·1e-4 m² s⁻¹`` (d the W-point
  depth); - one implicit step of ``∂e/∂t = ∂_z(α_tke κ_M ∂_z e) − c_ε e^{3/2}/l + forc`` over ``dt_tke``
  (Veros uses the momentum step), the dissipation linearised as ``c_ε √e^n / l · e^{n+1}``, with the surface
  flux ``forc_tke_surface`` (m³ s⁻³) into the top half box; a negative surface TKE is set to 0 and the deficit
  reported as ``tke_surf_corr``.

Layout (see :mod:`pelagos.ocean.grid`): ``(..., nz, ny, nx)``, level 0 at the surface; W point k is the top
face of cell k (so ``tke[..., 0, :, :]`` is the surface value). Vertical metrics are Veros's (see
:func:`pelagos.ocean.eos.vertical_grid`: ``dzw`` box sizes of the W points, the surface box ``½ dzw[0]``).

Safe operations: ``√e`` is :func:`pelagos.core.safe.safe_sqrt` (exact value ``√max(e, 0)``, derivative bounded
by ``1/(2√sqrt_eps)`` as e → 0, where Veros's ``sqrt(max(0, e))`` has an infinite one and gives NaN gradients
after two steps); ``1/N`` uses ``N² ≥ 1e-12`` as Veros; min/max keep their subgradients.

Public API (stable; used by the ``ocean`` model):

``tke_diffusivities(tke, nsqr, dz, mask_t, *, c_k=0.1, kappaM_min=2e-4, kappaH_min=2e-5, kappaM_max=100.,
mxl_min=1e-8, prandtl=10., kappaH_profile=True, prandtl_from_ri=False, K_diss_v=None, sqrt_eps=1e-12)
-> TKEDiffusivities(sqrttke, mxl, kappaM, kappaH)``  (m s⁻¹, m, m² s⁻¹, m² s⁻¹)
``integrate_tke(tke, forc, diff, dz, mask_t, forc_tke_surface, *, dt_tke, alpha_tke=30., c_eps=0.7)
-> TKEStep(tke, tke_surf_corr, tke_diss)``  (m² s⁻², m³ s⁻³, m² s⁻³); ``forc`` m² s⁻³ (sum of the energy
transfers: in acc_basic ``K_diss_v − P_diss_v − P_diss_adv − P_diss_nonlin + K_diss_gm + K_diss_h −
P_diss_skew + K_diss_bot``, see :func:`tke_forcing`); land points keep their input value.
``surface_tke_forcing(taux, tauy, cyclic, rho_0=1024.) -> Tensor (..., ny, nx)``: ``(|τ|/ρ₀)^{3/2}`` at T
points from the wind stress on u and v points (N m⁻²), as acc_basic sets ``forc_tke_surface``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ..core.safe import safe_sqrt
from ..core.tridiagonal import solve_tridiagonal
from .eos import RHO_0, vertical_grid

__all__ = [
    "TKEDiffusivities",
    "TKEStep",
    "integrate_tke",
    "surface_tke_forcing",
    "tke_diffusivities",
    "tke_forcing",
]


class TKEDiffusivities(NamedTuple):
    sqrttke: torch.Tensor
    mxl: torch.Tensor
    kappaM: torch.Tensor  # noqa: N815 (Veros's name)
    kappaH: torch.Tensor  # noqa: N815


class TKEStep(NamedTuple):
    tke: torch.Tensor
    tke_surf_corr: torch.Tensor
    tke_diss: torch.Tensor


def _zcol(a: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(a).to(ref).reshape(-1, 1, 1)


def tke_diffusivities(
    tke: torch.Tensor,
    nsqr: torch.Tensor,
    dz: torch.Tensor,
    mask_t: torch.Tensor,
    *,
    c_k: float | torch.Tensor = 0.1,
    kappaM_min: float | torch.Tensor = 2e-4,
    kappaH_min: float | torch.Tensor = 2e-5,
    kappaM_max: float | torch.Tensor = 100.0,
    mxl_min: float = 1e-8,
    prandtl: float | torch.Tensor = 10.0,
    kappaH_profile: bool = True,
    prandtl_from_ri: bool = False,
    K_diss_v: torch.Tensor | None = None,
    sqrt_eps: float = 1e-12,
) -> TKEDiffusivities:
    """Mixing length, viscosity and diffusivity from TKE ``tke`` (m² s⁻²) and N² ``nsqr`` (s⁻²) on W
    points."""
    from .eos import mask_w

    dz = torch.as_tensor(dz).to(tke)
    vg = vertical_grid(dz)
    mw = mask_w(torch.as_tensor(mask_t).to(tke))
    sqrttke = safe_sqrt(tke, eps=sqrt_eps)
    mxl = math.sqrt(2.0) * sqrttke / torch.sqrt(torch.clamp(nsqr, min=1e-12)) * mw
    # MITgcm/OPA limits: downward from the surface, cap the surface value, upward from the bottom
    levels = list(torch.unbind(mxl, -3))
    nz = len(levels)
    for k in range(1, nz):
        levels[k] = torch.minimum(levels[k], levels[k - 1] + dz[k - 1])
    levels[0] = torch.clamp(levels[0], max=mxl_min + float(dz[0]))
    for k in range(nz - 2, -1, -1):
        levels[k] = torch.minimum(levels[k], levels[k + 1] + dz[k])
    mxl = torch.clamp(torch.stack(levels, -3), min=mxl_min)

    kappaM = torch.minimum(torch.as_tensor(kappaM_max).to(tke), c_k * mxl * sqrttke)
    if prandtl_from_ri:
        if K_diss_v is None:
            raise ValueError("tke_diffusivities: prandtl_from_ri=True needs K_diss_v (m² s⁻³)")
        ri = nsqr / torch.clamp(K_diss_v / torch.clamp(kappaM, min=1e-12), min=1e-12)
        pr = torch.clamp(6.6 * ri, min=1.0, max=10.0)
    else:
        pr = prandtl
    kappaH = torch.maximum(kappaM / pr, torch.as_tensor(kappaH_min).to(tke))
    if kappaH_profile:
        depth_w = _zcol(-vg.zw, tke)
        prof = (0.8 + 1.05 / math.pi * torch.atan((depth_w - 2500.0) / 222.2)) * 1e-4
        kappaH = torch.maximum(kappaH, prof)
    kappaM = torch.maximum(kappaM, torch.as_tensor(kappaM_min).to(tke))
    return TKEDiffusivities(sqrttke, mxl, kappaM, kappaH)


def integrate_tke(
    tke: torch.Tensor,
    forc: torch.Tensor,
    diff: TKEDiffusivities,
    dz: torch.Tensor,
    mask_t: torch.Tensor,
    forc_tke_surface: torch.Tensor,
    *,
    dt_tke: float | torch.Tensor,
    alpha_tke: float | torch.Tensor = 30.0,
    c_eps: float | torch.Tensor = 0.7,
) -> TKEStep:
    """One implicit TKE step (see module doc); ``diff`` from :func:`tke_diffusivities` at the same level."""
    dz = torch.as_tensor(dz).to(tke)
    mt = torch.as_tensor(mask_t).to(tke)
    dzw = _zcol(vertical_grid(dz).dzw, tke)
    box = torch.cat([0.5 * dzw[:1], dzw[1:]], 0)  # W-point box sizes; the surface box is half
    dz3 = _zcol(dz, tke)
    kM = diff.kappaM
    # coupling between W point k and k−1 through cell k−1 (k ≥ 1); masked where either point is dry
    up_pair = mt[..., 1:, :, :] * mt[..., :-1, :, :]
    cpl = dt_tke / dz3[:-1] * alpha_tke * 0.5 * (kM[..., 1:, :, :] + kM[..., :-1, :, :]) * up_pair
    zero = torch.zeros_like(cpl[..., :1, :, :])
    cpl_above = torch.cat([zero, cpl], -3)  # coupling of W k with k−1
    cpl_below = torch.cat([cpl, zero], -3)  # coupling of W k with k+1
    diss_rate = dt_tke * c_eps * diff.sqrttke / diff.mxl
    lower = -cpl_above / box * mt
    upper = -cpl_below / box * mt
    diag = 1.0 + ((cpl_above + cpl_below) / box + diss_rate) * mt
    rhs = tke + dt_tke * forc * mt
    surf = dt_tke * forc_tke_surface * mt[..., 0, :, :] / box[0]
    rhs = torch.cat([rhs[..., :1, :, :] + surf.unsqueeze(-3), rhs[..., 1:, :, :]], -3)
    mv = lambda a: a.movedim(-3, -1)  # noqa: E731
    sol = solve_tridiagonal(mv(lower), mv(diag), mv(upper), mv(rhs)).movedim(-1, -3)
    new = torch.where(mt > 0, sol, tke)
    tke_diss = c_eps / diff.mxl * diff.sqrttke * new
    top = new[..., 0, :, :]
    corr = torch.where(top < 0, -top * 0.5 * dzw[0] / dt_tke, torch.zeros_like(top))
    new = torch.cat([torch.clamp(top, min=0.0).unsqueeze(-3), new[..., 1:, :, :]], -3)
    return TKEStep(new, corr, tke_diss)


def tke_forcing(
    K_diss_v: torch.Tensor,
    P_diss_v: torch.Tensor | float = 0.0,
    P_diss_adv: torch.Tensor | float = 0.0,
    P_diss_nonlin: torch.Tensor | float = 0.0,
    K_diss_gm: torch.Tensor | float = 0.0,
    K_diss_h: torch.Tensor | float = 0.0,
    P_diss_skew: torch.Tensor | float = 0.0,
    K_diss_bot: torch.Tensor | float = 0.0,
) -> torch.Tensor:
    """TKE source (m² s⁻³) for Veros's acc_basic switches (no EKE, no IDEMIX, no cabbeling heat store)."""
    return K_diss_v - P_diss_v - P_diss_adv - P_diss_nonlin + K_diss_gm + K_diss_h - P_diss_skew + K_diss_bot


def surface_tke_forcing(
    taux: torch.Tensor, tauy: torch.Tensor, cyclic: bool, rho_0: float = RHO_0
) -> torch.Tensor:
    """``(|τ|/ρ₀)^{3/2}`` (m³ s⁻³) at T points from ``taux`` on u points (east faces) and ``tauy`` on v points
    (north faces), ``(..., ny, nx)`` in N m⁻², each averaged from the two faces of the cell."""
    west = torch.roll(taux, 1, -1) if cyclic else torch.nn.functional.pad(taux[..., :-1], (1, 0))
    south = torch.nn.functional.pad(tauy[..., :-1, :], (0, 0, 1, 0))
    ux = 0.5 * (taux + west) / rho_0
    vy = 0.5 * (tauy + south) / rho_0
    return safe_sqrt(ux * ux + vy * vy) ** 1.5

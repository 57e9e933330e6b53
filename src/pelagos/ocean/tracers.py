"""Tracer transport: superbee-limited advection, horizontal diffusion, implicit vertical mixing.

Fields ``(..., nz, ny, nx)`` at T points. Advection is in flux form with the volume transports of
:func:`pelagos.ocean.momentum.transports`, so the tracer content ``Σ V_t c`` changes only through the
boundaries (closed: not at all).

Superbee flux through a face between an upstream-side cell L and a downstream-side cell R, for a transport
``F`` (positive L→R) with Courant number ``C = |F| dt / V``:

    flux = F (c_L + c_R)/2 − ½ |F| Δ (1 − ψ(r) (1 − C)),   Δ = c_R − c_L,  r = Δ_upwind / Δ,
    ψ(r) = max(0, min(2r, 1), min(r, 2)),

i.e. upwind for ψ = 0 and Lax–Wendroff for ψ = 1. ``r`` is evaluated as ``Δ_up Δ / (Δ² + ε)`` (ε = 1e-20 in
the tracer's units squared), which equals the ratio wherever ``|Δ| ≫ 1e-10`` and keeps it finite (with a
bounded derivative of ``ψ(r) Δ``) where the tracer is locally uniform.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..core import solve_tridiagonal
from ..core.safe import smooth_max, smooth_min
from .grid import Grid
from .momentum import grid_cached, surface_closed

RATIO_EPS = 1e-20
SMOOTH_SHARPNESS = 20.0  # 1/(units of r) for superbee_smooth
SCHEMES = ("centered", "superbee", "superbee_smooth")


def superbee(r: torch.Tensor) -> torch.Tensor:
    """Superbee limiter ψ(r) = max(0, min(2r, 1), min(r, 2))."""
    return torch.clamp(torch.maximum(torch.clamp(2 * r, max=1.0), torch.clamp(r, max=2.0)), min=0.0)


def superbee_smooth(r: torch.Tensor, sharpness: float = SMOOTH_SHARPNESS) -> torch.Tensor:
    """Superbee with each max/min replaced by :func:`pelagos.core.safe.smooth_max`/``smooth_min`` (C∞; differs
    from :func:`superbee` by at most ``3 log 2 / sharpness``), for gradients without kinks."""
    k = sharpness
    zero = torch.zeros_like(r)
    inner = smooth_max(smooth_min(2 * r, zero + 1.0, k), smooth_min(r, zero + 2.0, k), k)
    return smooth_max(zero, inner, k)


def _limited_flux(F, cl, cr, cll, crr, vol_l, vol_r, dt, limiter=superbee):
    """Superbee flux ``(m³ s⁻¹ × tracer)`` through a face with transport ``F`` from L to R."""
    d = cr - cl
    up = torch.where(F > 0, cl - cll, crr - cr)
    r = up * d / (d * d + RATIO_EPS)
    vol_up = torch.where(F > 0, vol_l, vol_r)
    vol_up = torch.where(vol_up > 0, vol_up, torch.ones_like(vol_up))  # outside the domain F = 0
    courant = F.abs() * dt / vol_up
    return F * 0.5 * (cl + cr) - 0.5 * F.abs() * d * (1 - limiter(r) * (1 - courant))


def advection(
    g: Grid,
    c: torch.Tensor,
    transport: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    dt: float,
    scheme: str = "superbee",
) -> torch.Tensor:
    """Advective tendency ``−∇·(u c)`` (tracer units s⁻¹) at T points.

    ``transport``: ``(ut, vt, wt)`` volume transports (m³ s⁻¹) from :func:`~pelagos.ocean.momentum.transports`
    (the surface value of ``wt`` is ignored: rigid lid); ``dt``: tracer time step (s), for the Courant
    number of the superbee scheme; ``scheme``: ``"centered"`` (second order, Veros's default and acc_basic's),
    ``"superbee"`` (TVD; kinks in ψ), or ``"superbee_smooth"`` (C∞ limiter for gradients).
    """
    ut, vt, wt = transport
    wt = surface_closed(wt)
    e, w, n, s, a, b = g.east, g.west, g.north, g.south, g.above, g.below
    if scheme == "centered":
        fx = ut * (c + e(c))  # twice the flux through the east face
        fy = vt * (c + n(c))
        fz = wt * (c + a(c))  # through the top face of cell k: between k (below) and k-1 (above)
        return ((fx - w(fx)) + (fy - s(fy)) + (fz - b(fz))) * _volumes(g)[1]
    vol = _volumes(g)[0]
    if scheme in ("superbee", "superbee_smooth"):
        lim = superbee if scheme == "superbee" else superbee_smooth
        fx = _limited_flux(ut, c, e(c), w(c), e(e(c)), vol, e(vol), dt, lim)
        fy = _limited_flux(vt, c, n(c), s(c), n(n(c)), vol, n(vol), dt, lim)
        # upward transport through the top face of cell k: L = cell k (below), R = cell k-1 (above)
        fz = _limited_flux(wt, c, a(c), b(c), a(a(c)), vol, a(vol), dt, lim)
    else:
        raise ValueError(f"tracer advection scheme {scheme!r}: use one of {SCHEMES}")
    return -((fx - w(fx)) + (fy - s(fy)) + (fz - b(fz))) / vol * g.mask_t


def _volumes(g: Grid) -> tuple[torch.Tensor, torch.Tensor]:
    """T-cell volumes (m³, (nz, ny, nx)) and ``−½ mask_t / volume`` (built once per grid)."""

    def build():
        vol = g.area_t * g.dz3 * torch.ones_like(g.mask_t)
        return vol, -0.5 * g.mask_t / vol

    return grid_cached(g, "volumes", g.mask_t, build)


def horizontal_diffusion(g: Grid, c: torch.Tensor, K_h: torch.Tensor) -> torch.Tensor:
    """``∇·(K_h ∇c)`` with no flux through coasts (tracer units s⁻¹); ``K_h`` in m² s⁻¹."""
    m = g.mask_t
    fx = K_h * g.dy / g.dxt * (g.east(c) - c) * m * g.east(m)
    fy = K_h * g.dxv / g.dy * (g.north(c) - c) * m * g.north(m)
    return ((fx - g.west(fx)) + (fy - g.south(fy))) / g.area_t * m


class _Column(NamedTuple):
    link_dzw: torch.Tensor  # (nz−1, ny, nx): 1/dzw where both levels are wet, else 0, m⁻¹
    inv_dz: torch.Tensor  # (nz, 1, 1) m⁻¹
    bottom: torch.Tensor  # (nz, ny, nx): the deepest wet cell of each column
    top: torch.Tensor  # (nz, ny, nx): the surface cell where wet
    top_dz: torch.Tensor  # top / dz, m⁻¹


def _column(g: Grid, mask: torch.Tensor) -> _Column:
    """The mask- and grid-only factors of :func:`implicit_vertical` (built once per grid and mask)."""

    def build() -> _Column:
        link = mask[..., :-1, :, :] * mask[..., 1:, :, :]
        top = torch.zeros_like(mask)
        top[..., 0, :, :] = 1.0
        top = top * mask
        return _Column(
            link_dzw=link / g.dzw.reshape(-1, 1, 1),
            inv_dz=1.0 / g.dz3,
            bottom=mask * (1 - g.below(mask)),
            top=top,
            top_dz=top / g.dz3,
        )

    for name in ("mask_t", "mask_u", "mask_v"):
        if mask is getattr(g, name):
            return grid_cached(g, ("column", name), mask, build)
    return build()  # some other mask: nothing to key a cache on


def _bshape(*shapes) -> tuple[int, ...]:
    """Broadcast shape (a cheap :func:`torch.broadcast_shapes` for the few shapes of one solve)."""
    n = max(len(s) for s in shapes)
    out = [1] * n
    for s in shapes:
        for i, d in enumerate(s, n - len(s)):
            if d != 1:
                if out[i] not in (1, d):
                    raise ValueError(f"shapes {shapes} do not broadcast")
                out[i] = d
    return tuple(out)


def implicit_vertical(
    g: Grid,
    x: torch.Tensor,
    kappa: torch.Tensor,
    mask: torch.Tensor,
    dt: float,
    *,
    bottom_drag: torch.Tensor | None = None,
    surface_flux: torch.Tensor | None = None,
    surface_relax: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Backward-Euler vertical mixing of ``x`` over ``dt`` (s): ``(x⁺ − x)/dt = ∂z(κ ∂z x⁺) + sources``.

    Args:
        x: field ``(..., nz, ny, nx)`` on the points whose wet mask is ``mask``.
        kappa: diffusivity/viscosity on the interfaces between levels k and k+1, ``(..., nz−1, ny, nx)``
            or broadcastable, m² s⁻¹.
        mask: wet mask of the points (``mask_t``/``mask_u``/``mask_v``).
        bottom_drag: linear drag rate ``r`` (s⁻¹) applied implicitly in the deepest wet cell of each column.
        surface_flux: flux into the surface cell, ``(..., ny, nx)``, x-units × m s⁻¹ (e.g. τ/ρ₀ for u).
        surface_relax: ``(rate, target)``: restoring ``rate·(target − x)`` of the surface cell, rate in s⁻¹.

    Solved with :func:`pelagos.core.solve_tridiagonal` (implicit-differentiation backward); the mask- and
    grid-only factors are formed once per grid.
    """
    col = _column(g, mask)
    c = (dt * kappa) * col.link_dzw  # (…, nz−1, ny, nx)
    pad = torch.nn.functional.pad
    c_up = pad(c, (0, 0, 0, 0, 1, 0))  # coupling to k−1
    c_dn = pad(c, (0, 0, 0, 0, 0, 1))  # coupling to k+1
    lower = -c_up * col.inv_dz
    upper = -c_dn * col.inv_dz
    diag = 1 - (lower + upper)
    rhs = x * mask
    if bottom_drag is not None:
        diag = diag + dt * bottom_drag * col.bottom
    if surface_flux is not None:
        rhs = rhs + (dt * surface_flux).unsqueeze(-3) * col.top_dz
    if surface_relax is not None:
        rate, target = surface_relax
        diag = diag + dt * rate * col.top
        rhs = rhs + dt * rate * target.unsqueeze(-3) * col.top
    shape = _bshape(lower.shape, diag.shape, rhs.shape)

    def zlast(t: torch.Tensor) -> torch.Tensor:
        return t.expand(shape).movedim(-3, -1).contiguous()

    out = solve_tridiagonal(zlast(lower), zlast(diag), zlast(upper), zlast(rhs), check=False)
    return out.movedim(-1, -3) * mask

"""Vertical diffusion of cell-centred quantities, GOTM's ``diff_center`` scheme, batched and differentiable.

Solves ``dY/dt = d/dz(nu dY/dz) - (Y - Yobs)/tau + L Y + Q`` over one time step with the theta scheme
(``cnpar``): diffusion, the linear source ``L`` and the relaxation are implicit, the constant source ``Q``
explicit. GOTM layout: index 0 = bottom layer, nz-1 = surface layer; ``nuh`` lives on the nz+1 interfaces
(interface k between layers k-1 and k; the two boundary interfaces 0 and nz are not used by the scheme).
See docs/column_numerics.md for the equations.
"""

from __future__ import annotations

import torch

from ..core.errors import ConfigError
from ..core.tridiagonal import solve_tridiagonal
from ._checks import BCSpec, as_tensor, batch_shape, check_last, check_nonneg, check_pos, concrete, parse_bc

__all__ = ["diffuse_center", "diffusion_matrix"]

_BC_KINDS = ("neumann", "dirichlet")
_NO_RELAX = 1e10  # GOTM applies relaxation only where the column minimum of tau is below this (s)


def _row_bc(bc: BCSpec, name: str, like: torch.Tensor) -> tuple[str, torch.Tensor]:
    kind, value = parse_bc(name, bc, _BC_KINDS)
    v = as_tensor(value, like)
    if concrete(v) and v.is_floating_point() and not bool(torch.isfinite(v).all()):
        raise ConfigError(f"{name} value must be finite; got {v}.")
    return kind, v


def diffusion_matrix(
    h: torch.Tensor, nuh: torch.Tensor, dt: float | torch.Tensor, cnpar: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The coupling coefficients ``(a, c)`` of GOTM's diff_center, shape (..., nz) each.

    ``c_i = 2 dt nu_{i+1} / ((h_i + h_{i+1}) h_i)`` couples layer i to the layer above (0 for the top layer),
    ``a_i = 2 dt nu_i / ((h_i + h_{i-1}) h_i)`` to the layer below (0 for the bottom layer); 0-based layers,
    interface ``i`` below layer ``i``. Dimensionless. ``cnpar`` is not used here (kept for symmetry).
    """
    del cnpar
    dt_t = as_tensor(dt, h)
    if torch.is_tensor(dt) and dt_t.dim() > 0:
        dt_t = dt_t[..., None]
    g = 2.0 * dt_t * nuh[..., 1:-1] / (h[..., :-1] + h[..., 1:])  # per interior interface, (..., nz-1)
    zero = torch.zeros_like(g[..., :1])
    c = torch.cat([g, zero], -1) / h
    a = torch.cat([zero, g], -1) / h
    return a, c


def diffuse_center(
    Y: torch.Tensor,
    h: torch.Tensor,
    nuh: torch.Tensor,
    dt: float | torch.Tensor,
    *,
    cnpar: float = 1.0,
    posconc: bool | torch.Tensor = False,
    bc_up: BCSpec = ("neumann", 0.0),
    bc_down: BCSpec = ("neumann", 0.0),
    Lsour: torch.Tensor | None = None,
    Qsour: torch.Tensor | None = None,
    taur: torch.Tensor | None = None,
    Yobs: torch.Tensor | None = None,
) -> torch.Tensor:
    """One diffusion step of cell-centred quantities, exactly as GOTM's ``diff_center``.

    Args:
        Y: concentrations at layer centres, (..., nz), bottom first. Several tracers may share one matrix:
            Y as (B, V, nz) with h as (B, 1, nz) and nuh as (B, 1, nz+1).
        h: layer thickness (m), (..., nz), > 0.
        nuh: diffusivity at the interfaces (m2 s-1), (..., nz+1), >= 0 (entries 0 and nz are unused).
        dt: time step (s), > 0; float or tensor of batch shape (...,).
        cnpar: implicitness theta in [0, 1] (1 = backward Euler, positivity preserving; 0.5 = Crank-Nicolson).
        posconc: the quantity is non-negative (bool, or bool tensor broadcasting to the batch shape, e.g. one
            flag per tracer as (V,)): outgoing Neumann fluxes are then made implicit (Patankar 1980 trick).
        bc_up, bc_down: ``("neumann", flux)`` with flux (units of Y times m s-1) *into* the domain
            positive, at the surface/bottom interface; or ``("dirichlet", value)`` prescribing the value of
            the top/bottom layer.
            Values are floats or tensors of batch shape (...,).
        Lsour: linear source rate (s-1), implicit, (..., nz). Qsour: constant source (units of Y per s),
            explicit, (..., nz).
        taur: relaxation time (s), (..., nz), > 0, with target ``Yobs`` (..., nz). As in GOTM, relaxation
            is applied to a column only if its minimum taur is below 1e10 s (to every row, Dirichlet too).

    Returns:
        Y after one step, shape = broadcast of the inputs' batch dims + (nz,).
    """
    if not torch.is_tensor(Y) or not Y.is_floating_point():
        raise ConfigError(f"Y must be a floating-point tensor (..., nz); got {type(Y).__name__}.")
    nz = Y.shape[-1]
    h = as_tensor(h, Y)
    nuh = as_tensor(nuh, Y)
    check_last("h", h, nz, "layer thickness, one per layer of Y")
    check_last("nuh", nuh, nz + 1, "diffusivity at the nz+1 interfaces")
    names, shapes = ["Y", "h", "nuh"], [Y.shape[:-1], h.shape[:-1], nuh.shape[:-1]]
    for nm, x, n in (("Lsour", Lsour, nz), ("Qsour", Qsour, nz), ("taur", taur, nz), ("Yobs", Yobs, nz)):
        if x is not None:
            check_last(nm, x, n, "one value per layer")
            names.append(nm)
            shapes.append(x.shape[:-1])
    batch_shape(names, shapes)
    check_pos("h", h, "Pass layer thicknesses in metres, bottom layer first.")
    check_nonneg("nuh", nuh, "Diffusivities must be non-negative (clip negative turbulence output).")
    check_pos("dt", as_tensor(dt, Y), "The time step is in seconds.")
    if not 0.0 <= float(cnpar) <= 1.0:
        raise ConfigError(f"cnpar (implicitness) must be in [0, 1]; got {cnpar}.")
    if (taur is None) != (Yobs is None):
        raise ConfigError("taur and Yobs go together: pass both (relaxation) or neither.")
    if taur is not None:
        check_pos("taur", as_tensor(taur, Y), "Relaxation times are in seconds; use inf for no relaxation.")
    kind_up, v_up = _row_bc(bc_up, "bc_up", Y)
    kind_dw, v_dw = _row_bc(bc_down, "bc_down", Y)

    dt_t = as_tensor(dt, Y)
    dtb = dt_t[..., None] if dt_t.dim() > 0 else dt_t  # broadcast over layers
    theta = float(cnpar)
    a, c = diffusion_matrix(h, nuh, dt_t)
    l = dtb * Lsour if Lsour is not None else None
    q = dtb * Qsour if Qsour is not None else None
    pos = torch.as_tensor(posconc, device=Y.device, dtype=torch.bool)

    # interior rows (GOTM loop i = 2..N-1); boundary rows are replaced below
    au = -theta * a
    cu = -theta * c
    bu = 1.0 + theta * (a + c)
    if l is not None:
        bu = bu - l
    Ydn = torch.cat([Y[..., :1], Y[..., :-1]], -1)  # Y_{i-1} (dummy at the bottom, multiplied by a=0)
    Yup = torch.cat([Y[..., 1:], Y[..., -1:]], -1)  # Y_{i+1} (dummy at the top, multiplied by c=0)
    du = (1.0 - (1.0 - theta) * (a + c)) * Y + (1.0 - theta) * (a * Ydn + c * Yup)
    if q is not None:
        du = du + q

    Lb = [None, None] if Lsour is None else [l[..., 0], l[..., -1]]
    Qb = [None, None] if Qsour is None else [as_tensor(Qsour, Y)[..., 0], as_tensor(Qsour, Y)[..., -1]]
    dtr = dt_t  # (...,) or scalar: boundary rows are per column
    if nz >= 2:
        au_t, bu_t, du_t = _boundary_row(
            kind_up, v_up, Y[..., -1], Y[..., -2], h[..., -1], a[..., -1], Lb[1], Qb[1], dtr, theta, pos
        )
        cu_b, bu_b, du_b = _boundary_row(
            kind_dw, v_dw, Y[..., 0], Y[..., 1], h[..., 0], c[..., 0], Lb[0], Qb[0], dtr, theta, pos
        )
        au = torch.cat([torch.zeros_like(au[..., :1]), au[..., 1:-1], au_t[..., None]], -1)
        cu = torch.cat([cu_b[..., None], cu[..., 1:-1], torch.zeros_like(cu[..., :1])], -1)
        bshape = batch_shape(["bu", "top", "bottom"], [bu.shape[:-1], bu_t.shape, bu_b.shape])
        dshape = batch_shape(["du", "top", "bottom"], [du.shape[:-1], du_t.shape, du_b.shape])
        bu = torch.cat(
            [
                bu_b.expand(bshape)[..., None],
                bu.expand(*bshape, nz)[..., 1:-1],
                bu_t.expand(bshape)[..., None],
            ],
            -1,
        )
        du = torch.cat(
            [
                du_b.expand(dshape)[..., None],
                du.expand(*dshape, nz)[..., 1:-1],
                du_t.expand(dshape)[..., None],
            ],
            -1,
        )
    else:
        bu, du = _single_layer(kind_up, v_up, kind_dw, v_dw, Y[..., 0], h[..., 0], Lb[0], Qb[0], dtr, pos)
        au, cu = torch.zeros_like(bu), torch.zeros_like(bu)

    if taur is not None:
        taur = as_tensor(taur, Y)
        r = dtb / taur
        active = (taur.amin(-1, keepdim=True) < _NO_RELAX).to(Y.dtype)  # GOTM: per column, all or nothing
        bu = bu + active * r
        du = du + active * r * as_tensor(Yobs, Y)

    return solve_tridiagonal(au, bu, cu, du)


def _flux_terms(F, Yb, hb, dt, pos):
    """(diagonal increment, flux source F/h) of one Neumann flux F, with GOTM's Patankar switch.

    For ``posconc`` and an outgoing flux (F < 0) the flux becomes ``dt F/(Y_b h_b)`` on the diagonal and
    leaves the right-hand side; otherwise it stays explicit, ``F/h_b``. The unused branch is computed on safe
    values so that it never produces NaN gradients.
    """
    patankar = pos & (F < 0)
    if concrete(patankar) and not bool(patankar.any()):
        return None, F / hb  # no Patankar row anywhere: the matrix stays shared by all tracers
    F = torch.broadcast_to(F, torch.broadcast_shapes(F.shape, Yb.shape)) if F.dim() else F
    patankar = pos & (F < 0)
    Ysafe = torch.where(patankar, Yb, torch.ones_like(Yb)).clamp_min(torch.finfo(Yb.dtype).tiny)
    zero = torch.zeros_like(Ysafe)
    diag = torch.where(patankar, -(dt * F / Ysafe / hb), zero)
    src = torch.where(patankar, zero, F / hb)
    return diag, src


def _boundary_row(kind, value, Yb, Yn, hb, k, lb, Qb, dt, theta, pos):
    """GOTM's boundary row (off-diagonal, diagonal, rhs) for the top or bottom layer.

    ``k`` couples the boundary layer to its neighbour (a at the top, c at the bottom); ``lb = dt*Lsour`` and
    ``Qb = Qsour`` at that layer (or None).
    """
    if kind == "dirichlet":
        zero = torch.zeros_like(k)
        return zero, torch.ones_like(k), torch.broadcast_to(value, Yb.shape) + torch.zeros_like(Yb)
    offd = -theta * k
    bu = 1.0 - offd
    if lb is not None:
        bu = bu - lb
    dpat, src = _flux_terms(value, Yb, hb, dt, pos)
    if dpat is not None:
        bu = bu + dpat
    if Qb is not None:
        src = Qb + src
    du = Yb + dt * src + (1.0 - theta) * k * (Yn - Yb)
    return offd, bu, du


def _single_layer(kind_up, v_up, kind_dw, v_dw, Yb, hb, lb, Qb, dt, pos):
    """nz = 1 (outside GOTM, which indexes out of range there): no diffusion; both Neumann fluxes act on the
    single layer; a Dirichlet condition (bottom first, as GOTM sets the bottom row last) fixes the value."""
    for kind, v in ((kind_dw, v_dw), (kind_up, v_up)):
        if kind == "dirichlet":
            val = torch.broadcast_to(v, Yb.shape) + torch.zeros_like(Yb)
            return torch.ones_like(val)[..., None], val[..., None]
    bu = torch.ones_like(Yb) if lb is None else 1.0 - lb
    d1, s1 = _flux_terms(v_up, Yb, hb, dt, pos)
    d2, s2 = _flux_terms(v_dw, Yb, hb, dt, pos)
    src = s1 + s2 if Qb is None else Qb + s1 + s2
    for d in (d1, d2):
        if d is not None:
            bu = bu + d
    return bu[..., None], (Yb + dt * src)[..., None]

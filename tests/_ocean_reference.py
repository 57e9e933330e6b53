"""Frozen reference copies of ocean routines as they were before the speed work of 2026-12-04 (triad by
triad isoneutral slopes, per-call geometry, tanh taper; implicit vertical mixing rebuilding its factors each
call; momentum and tracer advection, Coriolis, friction without precomputed coefficients).
``tests/test_ocean_fast_path.py`` runs the model with these in place of the fast versions and compares
states and gradients: a regression oracle, not used by pelagos itself."""

# ruff: noqa

from __future__ import annotations

import torch

from pelagos.core import solve_tridiagonal as _solve_tridiagonal_core
from pelagos.core.safe import safe_div
from pelagos.core.tridiagonal import solve_tridiagonal
from pelagos.ocean.eos import GRAV, RHO_0, drho_dsalt, drho_dtemp, mask_w, vertical_grid
from pelagos.ocean.isoneutral import IsoneutralResult, IsoneutralTensor
from pelagos.ocean.tracers import SCHEMES, _limited_flux, superbee, superbee_smooth

EPSLN = 1e-20
SLOPE_DEN_EPS = 1e-12  # kg m-4: below this |∂ρ/∂z| the slope's derivatives are those at |∂ρ/∂z| = 1e-12


# -- neighbours on the (nz, ny, nx) layout: zero outside the domain, x wraps when cyclic
# ----------------------
def _east(a: torch.Tensor, cyclic: bool) -> torch.Tensor:
    return torch.roll(a, -1, -1) if cyclic else torch.nn.functional.pad(a[..., 1:], (0, 1))


def _west(a: torch.Tensor, cyclic: bool) -> torch.Tensor:
    return torch.roll(a, 1, -1) if cyclic else torch.nn.functional.pad(a[..., :-1], (1, 0))


def _north(a: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.pad(a[..., 1:, :], (0, 0, 0, 1))


def _south(a: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.pad(a[..., :-1, :], (0, 0, 1, 0))


def _above(a: torch.Tensor) -> torch.Tensor:
    """a[k−1] (zero above the surface)."""
    return torch.nn.functional.pad(a[..., :-1, :, :], (0, 0, 0, 0, 1, 0))


def _below(a: torch.Tensor) -> torch.Tensor:
    """a[k+1] (zero below the deepest level)."""
    return torch.nn.functional.pad(a[..., 1:, :, :], (0, 0, 0, 0, 0, 1))


def _above_edge(a: torch.Tensor) -> torch.Tensor:
    """a[k−1], repeating level 0 above the surface (Veros's edge padding)."""
    return torch.cat([a[..., :1, :, :], a[..., :-1, :, :]], -3)


def _below_edge(a: torch.Tensor) -> torch.Tensor:
    """a[k+1], repeating the deepest level below it."""
    return torch.cat([a[..., 1:, :, :], a[..., -1:, :, :]], -3)


def taper(
    s: torch.Tensor, iso_slopec: float | torch.Tensor, iso_dslope: float | torch.Tensor
) -> torch.Tensor:
    """Slope taper ``½(1 + tanh((s_c − |s|)/Δs))`` (dimensionless, 1 for flat, 0 for steep isoneutrals)."""
    return 0.5 * (1.0 + torch.tanh((iso_slopec - torch.abs(s)) / iso_dslope))


def _slope(drho_h: torch.Tensor, drho_z: torch.Tensor, cap: float) -> torch.Tensor:
    s = safe_div(-drho_h, torch.clamp(drho_z, max=0.0) - EPSLN, eps=SLOPE_DEN_EPS)
    return torch.clamp(s, -cap, cap)


def _as_field(K, ref: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(K, dtype=ref.dtype, device=ref.device)


def _face_avg_x(K: torch.Tensor, cyclic: bool) -> torch.Tensor:
    """K averaged to the east face of each cell over the two cells and the two W faces (Veros's diffloc)."""
    s = K + _east(K, cyclic)
    return torch.cat([0.25 * (s[..., :-1, :, :] + s[..., 1:, :, :]), 0.5 * s[..., -1:, :, :]], -3)


def _face_avg_y(K: torch.Tensor) -> torch.Tensor:
    s = K + _north(K)
    return torch.cat([0.25 * (s[..., :-1, :, :] + s[..., 1:, :, :]), 0.5 * s[..., -1:, :, :]], -3)


def _geometry(grid, ref: torch.Tensor):
    dz = torch.as_tensor(grid.dz).to(ref).reshape(-1, 1, 1)
    vg = vertical_grid(torch.as_tensor(grid.dz).to(ref))
    dzw = vg.dzw.reshape(-1, 1, 1)
    mt = torch.as_tensor(grid.mask_t).to(ref)
    return dict(
        dz=dz,
        dzw=dzw,
        depth=(-vg.zt).reshape(-1, 1, 1),
        dxt=torch.as_tensor(grid.dxt).to(ref),
        dy=torch.as_tensor(grid.dy).to(ref),
        cos_t=torch.as_tensor(grid.cos_t).to(ref),
        cos_v=torch.as_tensor(grid.cos_v).to(ref),
        mt=mt,
        mu=torch.as_tensor(grid.mask_u).to(ref),
        mv=torch.as_tensor(grid.mask_v).to(ref),
        mw=mask_w(mt),
        cyclic=bool(grid.cyclic),
    )


def isoneutral_tensor(
    temp: torch.Tensor,
    salt: torch.Tensor | None,
    grid,
    *,
    K_iso: float | torch.Tensor = 1000.0,
    K_iso_steep: float | torch.Tensor = 500.0,
    iso_slopec: float = 0.01,
    iso_dslope: float = 0.005,
    drho_dT: torch.Tensor | None = None,
    drho_dS: torch.Tensor | None = None,
) -> IsoneutralTensor:
    """Tapered isoneutral slopes and diagonal diffusivities (see module doc). ``temp`` °C, ``salt`` g/kg
    ``(..., nz, ny, nx)``; ``drho_dT``/``drho_dS`` default to :mod:`pelagos.ocean.eos` type 3 at Veros's
    T-point depths; ``salt=None``
    treats salinity as uniform (its gradients are not computed)."""
    g = _geometry(grid, temp)
    cyc, mt, mu, mv, mw = g["cyclic"], g["mt"], g["mu"], g["mv"], g["mw"]
    dz, dzw = g["dz"], g["dzw"]
    cap = float(iso_slopec) + 50.0 * float(iso_dslope)
    K = _as_field(K_iso, temp) * torch.ones_like(temp)
    drdT = mt * (drho_dtemp(temp, g["depth"]) if drho_dT is None else drho_dT)
    drdS = mt * (drho_dsalt(temp) if drho_dS is None else drho_dS)
    use_salt = salt is not None

    def grads(tr):
        dz_ = mw * (_above(tr) - tr) / dzw  # at W points (top face); row 0 is overwritten below
        dz_ = torch.cat([torch.zeros_like(dz_[..., :1, :, :]), dz_[..., 1:, :, :]], -3)
        dx_ = mu * (_east(tr, cyc) - tr) / g["dxt"]
        dy_ = mv * (_north(tr) - tr) / g["dy"]
        return dx_, dy_, dz_

    dTdx, dTdy, dTdz = grads(temp)
    if use_salt:
        dSdx, dSdy, dSdz = grads(salt)

    def rho_grad(i_drdT, i_drdS, gT, gS):
        r = i_drdT * gT
        if use_salt:
            r = r + i_drdS * gS
        return r

    # --- east faces: triads (cell ip ∈ {this, east}, W face kr ∈ {lower, upper})
    diffloc = _face_avg_x(K, cyc)
    sumz = torch.zeros_like(temp)
    ai_ez = []
    for ip in range(2):
        cT = drdT if ip == 0 else _east(drdT, cyc)
        cS = drdS if ip == 0 else _east(drdS, cyc)
        gz_T = dTdz if ip == 0 else _east(dTdz, cyc)
        gz_S = (dSdz if ip == 0 else _east(dSdz, cyc)) if use_salt else None
        row = []
        for kr in range(2):
            wz_T = gz_T if kr == 1 else _below(gz_T)
            wz_S = (gz_S if kr == 1 else _below(gz_S)) if use_salt else None
            dzw_k = dzw if kr == 1 else _below_edge(dzw)
            drx = rho_grad(cT, cS, dTdx, dSdx if use_salt else None)
            drz = rho_grad(cT, cS, wz_T, wz_S)
            s = _slope(drx, drz, cap)
            t = taper(s, iso_slopec, iso_dslope)
            valid = (
                mu if kr == 1 else mu * _below(torch.ones_like(mu))
            )  # no lower W face in the deepest level
            sumz = sumz + dzw_k * valid * torch.maximum(_as_field(K_iso_steep, temp), diffloc * t)
            row.append(t * s * valid)
        ai_ez.append(torch.stack(row, -1))
    Ai_ez = torch.stack(ai_ez, -2)
    K_11 = sumz / (4.0 * dz)

    # --- north faces
    diffloc = _face_avg_y(K)
    sumz = torch.zeros_like(temp)
    ai_nz = []
    for jp in range(2):
        cT = drdT if jp == 0 else _north(drdT)
        cS = drdS if jp == 0 else _north(drdS)
        gz_T = dTdz if jp == 0 else _north(dTdz)
        gz_S = (dSdz if jp == 0 else _north(dSdz)) if use_salt else None
        row = []
        for kr in range(2):
            wz_T = gz_T if kr == 1 else _below(gz_T)
            wz_S = (gz_S if kr == 1 else _below(gz_S)) if use_salt else None
            dzw_k = dzw if kr == 1 else _below_edge(dzw)
            dry = rho_grad(cT, cS, dTdy, dSdy if use_salt else None)
            drz = rho_grad(cT, cS, wz_T, wz_S)
            s = _slope(dry, drz, cap)
            t = taper(s, iso_slopec, iso_dslope)
            valid = mv if kr == 1 else mv * _below(torch.ones_like(mv))
            sumz = sumz + dzw_k * valid * torch.maximum(_as_field(K_iso_steep, temp), diffloc * t)
            row.append(t * s * valid)
        ai_nz.append(torch.stack(row, -1))
    Ai_nz = torch.stack(ai_nz, -2)
    K_22 = sumz / (4.0 * dz)

    # --- W points (top face of cell k, k ≥ 1): triads (face ip/jp, cell kr ∈ {below = k, above = k−1})
    wmask = mw * _above(torch.ones_like(mw))  # W points with a cell above (k ≥ 1)
    sumx = torch.zeros_like(temp)
    sumy = torch.zeros_like(temp)
    bx, by = [[None, None], [None, None]], [[None, None], [None, None]]
    for kr in range(2):
        cT = drdT if kr == 0 else _above(drdT)
        cS = drdS if kr == 0 else _above(drdS)
        drz = rho_grad(cT, cS, dTdz, dSdz if use_salt else None)
        for ip in range(2):
            gx_T = _west(dTdx, cyc) if ip == 0 else dTdx
            gx_S = (_west(dSdx, cyc) if ip == 0 else dSdx) if use_salt else None
            if kr == 1:
                gx_T = _above(gx_T)
                gx_S = _above(gx_S) if use_salt else None
            s = _slope(rho_grad(cT, cS, gx_T, gx_S), drz, cap)
            t = taper(s, iso_slopec, iso_dslope)
            sumx = sumx + K * t * s * s * wmask
            bx[ip][kr] = t * s * wmask
        for jp in range(2):
            cosv = _south(g["cos_v"].unsqueeze(0)).squeeze(0) if jp == 0 else g["cos_v"]
            gy_T = _south(dTdy) if jp == 0 else dTdy
            gy_S = (_south(dSdy) if jp == 0 else dSdy) if use_salt else None
            if kr == 1:
                gy_T = _above(gy_T)
                gy_S = _above(gy_S) if use_salt else None
            s = _slope(rho_grad(cT, cS, gy_T, gy_S), drz, cap)
            t = taper(s, iso_slopec, iso_dslope)
            sumy = sumy + cosv * g["dy"] * K * t * s * s * wmask
            by[jp][kr] = t * s * wmask
    Ai_bx = torch.stack([torch.stack(bx[0], -1), torch.stack(bx[1], -1)], -2)
    Ai_by = torch.stack([torch.stack(by[0], -1), torch.stack(by[1], -1)], -2)
    K_33 = sumx / 4.0 + sumy / (4.0 * g["dy"] * g["cos_t"])
    return IsoneutralTensor(Ai_ez, Ai_nz, Ai_bx, Ai_by, K_11, K_22, K_33)


def isoneutral_fluxes(
    tr: torch.Tensor,
    tensor: IsoneutralTensor,
    grid,
    *,
    K_iso: float | torch.Tensor,
    K_skew: float | torch.Tensor,
    diagonal: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Isoneutral + skew fluxes of ``tr`` (see module doc); ``diagonal`` adds the K_11/K_22 terms (Redi
    pass)."""
    g = _geometry(grid, tr)
    cyc, dz = g["cyclic"], g["dz"]
    ones = torch.ones_like(tr)
    K1 = (_as_field(K_iso, tr) - _as_field(K_skew, tr)) * ones
    K2 = (_as_field(K_iso, tr) + _as_field(K_skew, tr)) * ones
    # vertical differences of the tracer at the upper (kr=1) and lower (kr=0) face of each cell, edge-padded
    d_up = _above_edge(tr) - tr
    d_lo = tr - _below_edge(tr)

    diffloc = _face_avg_x(K1, cyc)
    sumz = 0.0
    for ip in range(2):
        for kr in range(2):
            d = d_up if kr == 1 else d_lo
            d = d if ip == 0 else _east(d, cyc)
            sumz = sumz + diffloc * tensor.Ai_ez[..., ip, kr] * d
    flux_east = sumz / (4.0 * dz)
    if diagonal:
        flux_east = flux_east + (_east(tr, cyc) - tr) / g["dxt"] * tensor.K_11

    diffloc = _face_avg_y(K1)
    sumz = 0.0
    for jp in range(2):
        for kr in range(2):
            d = d_up if kr == 1 else d_lo
            d = d if jp == 0 else _north(d)
            sumz = sumz + diffloc * tensor.Ai_nz[..., jp, kr] * d
    fn = sumz / (4.0 * dz)
    if diagonal:
        fn = fn + (_north(tr) - tr) / g["dy"] * tensor.K_22
    flux_north = g["cos_v"] * fn

    # vertical flux at the top face of cell k (k ≥ 1): cells kr=0 (k) and kr=1 (k−1), faces west/east
    dxe = _east(tr, cyc) - tr  # difference across the east face of each cell
    dyn = _north(tr) - tr
    sumx = 0.0
    sumy = 0.0
    for kr in range(2):
        ex = dxe if kr == 0 else _above(dxe)
        ny_ = dyn if kr == 0 else _above(dyn)
        for ip in range(2):
            d = _west(ex, cyc) if ip == 0 else ex
            sumx = sumx + K2 * tensor.Ai_bx[..., ip, kr] / g["cos_t"] * d
        for jp in range(2):
            d = _south(ny_) if jp == 0 else ny_
            cosv = _south(g["cos_v"].unsqueeze(0)).squeeze(0) if jp == 0 else g["cos_v"]
            sumy = sumy + K2 * tensor.Ai_by[..., jp, kr] * cosv * d
    flux_top = sumx / (4.0 * g["dxt"] / g["cos_t"]) + sumy / (4.0 * g["dy"] * g["cos_t"])
    flux_top = torch.cat([torch.zeros_like(flux_top[..., :1, :, :]), flux_top[..., 1:, :, :]], -3)
    return flux_east, flux_north, flux_top


def flux_divergence(flux_east, flux_north, flux_top, grid) -> torch.Tensor:
    """Convergence of the fluxes: tracer tendency (units of tr per s) on T points, masked."""
    g = _geometry(grid, flux_east)
    cyc = g["cyclic"]
    hor = (flux_east - _west(flux_east, cyc)) / g["dxt"] + (flux_north - _south(flux_north)) / (
        g["cos_t"] * g["dy"]
    )
    ver = (flux_top - _below(flux_top)) / g["dz"]
    return g["mt"] * (hor + ver)


def implicit_vertical_diffusion(
    tr: torch.Tensor, K_33: torch.Tensor, grid, dt: float | torch.Tensor
) -> torch.Tensor:
    """Backward-Euler step of ``∂τ/∂t = ∂_z(K_33 ∂_z τ)`` over ``dt`` s (no flux through surface and bottom);
    land cells keep their value."""
    g = _geometry(grid, tr)
    dz, dzw, mt, mw = g["dz"], g["dzw"], g["mt"], g["mw"]
    wmask = mw * _above(torch.ones_like(mw))
    delta = dt / dzw * K_33 * wmask  # coupling through the top face of each cell (0 at the surface)
    delta_below = _below(delta)
    lower = -delta / dz * mt
    upper = -delta_below / dz * mt
    diag = 1.0 + (delta + delta_below) / dz * mt
    mv = lambda a: a.movedim(-3, -1)  # noqa: E731
    x = solve_tridiagonal(mv(lower), mv(diag), mv(upper), mv(tr))
    return x.movedim(-1, -3)


def dissipation_on_w(diss: torch.Tensor, grid) -> torch.Tensor:
    """Veros's interpolation of a T-point energy dissipation (m² s⁻³) to the W points (top face of each cell):
    the mean of the two cells, the deepest wet cell's half-box added to its top face, the surface cell as
    is."""
    g = _geometry(grid, diss)
    mt, dzw = g["mt"], g["dzw"]
    wet_below = _below(mt)
    edge = mt * (1.0 - wet_below)  # deepest wet cell of each column
    mean = 0.5 * (diss + _above(diss))
    extra = 0.5 * diss * _below_edge(dzw) / dzw * edge
    out = (mean + extra) * mt
    surf = diss[..., :1, :, :] * mt[..., :1, :, :]
    return torch.cat([surf, out[..., 1:, :, :]], -3)


def _dissipation(int_drho, flux_east, flux_north, g) -> torch.Tensor:
    cyc = g["cyclic"]
    c = GRAV / RHO_0
    ex = (_east(int_drho, cyc) - int_drho) * flux_east
    ny_ = (_north(int_drho) - int_drho) * flux_north
    return 0.5 * c * (ex + _west(ex, cyc)) / g["dxt"] + 0.5 * c * (ny_ + _south(ny_)) / (g["dy"] * g["cos_t"])


def isoneutral_diffusion(
    tr: torch.Tensor,
    tr_new: torch.Tensor,
    tensor: IsoneutralTensor,
    grid,
    *,
    dt: float | torch.Tensor,
    K_iso: float | torch.Tensor = 1000.0,
    K_gm: float | torch.Tensor = 1000.0,
    iso: bool = True,
    skew: bool = True,
    int_drho: torch.Tensor | None = None,
) -> IsoneutralResult:
    """One tracer's isoneutral (``iso``) and GM skew (``skew``) update over ``dt`` s (see module doc)."""
    g = _geometry(grid, tr)
    mt, mw, dzw = g["mt"], g["mw"], g["dzw"]
    wmask = mw * _above(torch.ones_like(mw))
    c = GRAV / RHO_0
    tendency = torch.zeros_like(tr_new)
    p_iso = p_skew = None
    if iso:
        fe, fn, ft = isoneutral_fluxes(tr, tensor, grid, K_iso=K_iso, K_skew=0.0, diagonal=True)
        dtr = flux_divergence(fe, fn, ft, grid)
        before = tr_new + dt * dtr
        after = implicit_vertical_diffusion(before, tensor.K_33, grid, dt)
        after = torch.where(mt > 0, after, before)
        tendency = tendency + dtr + (after - before) / dt
        tr_new = after
        if int_drho is not None:
            p_iso = dissipation_on_w(_dissipation(int_drho, fe, fn, g), grid)
            fxa = (int_drho - _above(int_drho)) / dzw
            flux_impl = tensor.K_33 * (_above(tr_new) - tr_new) / dzw
            p_iso = p_iso - c * fxa * (ft + flux_impl) * wmask
    if skew:
        fe, fn, ft = isoneutral_fluxes(tr, tensor, grid, K_iso=0.0, K_skew=K_gm, diagonal=False)
        dtr = flux_divergence(fe, fn, ft, grid)
        tr_new = tr_new + dt * dtr
        tendency = tendency + dtr
        if int_drho is not None:
            p_skew = dissipation_on_w(_dissipation(int_drho, fe, fn, g), grid)
            fxa = (int_drho - _above(int_drho)) / dzw
            p_skew = p_skew - c * fxa * ft * wmask
    return IsoneutralResult(tr_new, tendency, p_iso, p_skew)


# -- tracers.implicit_vertical
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

    Solved with :func:`pelagos.core.solve_tridiagonal` (implicit-differentiation backward).
    """
    dz = g.dz3
    link = mask[..., :-1, :, :] * mask[..., 1:, :, :]
    c = dt * kappa / g.dzw.reshape(-1, 1, 1) * link  # (…, nz−1, ny, nx)
    zero = torch.zeros_like(c[..., :1, :, :])
    c_up = torch.cat([zero, c], -3)  # coupling to k−1
    c_dn = torch.cat([c, zero], -3)  # coupling to k+1
    diag = 1 + (c_up + c_dn) / dz
    lower = -c_up / dz
    upper = -c_dn / dz
    rhs = x * mask
    if bottom_drag is not None:
        bottom = mask * (1 - g.below(mask))
        diag = diag + dt * bottom_drag * bottom
    if surface_flux is not None or surface_relax is not None:
        top = torch.zeros_like(mask)
        top = torch.cat([torch.ones_like(mask[..., :1, :, :]), top[..., 1:, :, :]], -3) * mask
        if surface_flux is not None:
            rhs = rhs + dt * surface_flux.unsqueeze(-3) / dz * top
        if surface_relax is not None:
            rate, target = surface_relax
            diag = diag + dt * rate * top
            rhs = rhs + dt * rate * target.unsqueeze(-3) * top
    shape = torch.broadcast_shapes(lower.shape, diag.shape, upper.shape, rhs.shape)

    def zlast(t: torch.Tensor) -> torch.Tensor:
        return t.expand(shape).movedim(-3, -1)

    out = _solve_tridiagonal_core(zlast(lower), zlast(diag), zlast(upper), zlast(rhs), check=False)
    return out.movedim(-1, -3) * mask


# -- momentum.py
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


def momentum_advection(
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


def tracer_advection(
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
    vol = g.area_t * g.dz3 * torch.ones_like(g.mask_t)
    e, w, n, s, a, b = g.east, g.west, g.north, g.south, g.above, g.below
    if scheme == "centered":
        fx = ut * 0.5 * (c + e(c))
        fy = vt * 0.5 * (c + n(c))
        fz = wt * 0.5 * (c + a(c))  # through the top face of cell k: between k (below) and k-1 (above)
    elif scheme in ("superbee", "superbee_smooth"):
        lim = superbee if scheme == "superbee" else superbee_smooth
        fx = _limited_flux(ut, c, e(c), w(c), e(e(c)), vol, e(vol), dt, lim)
        fy = _limited_flux(vt, c, n(c), s(c), n(n(c)), vol, n(vol), dt, lim)
        # upward transport through the top face of cell k: L = cell k (below), R = cell k-1 (above)
        fz = _limited_flux(wt, c, a(c), b(c), a(a(c)), vol, a(vol), dt, lim)
    else:
        raise ValueError(f"tracer advection scheme {scheme!r}: use one of {SCHEMES}")
    return -((fx - w(fx)) + (fy - s(fy)) + (fz - b(fz))) / vol * g.mask_t


def isoneutral_diffusion_any(*args, dissipation=None, **kw):
    """:func:`isoneutral_diffusion` accepting (and ignoring) the newer ``dissipation`` keyword: the reference
    forms both dissipations always."""
    return isoneutral_diffusion(*args, **kw)

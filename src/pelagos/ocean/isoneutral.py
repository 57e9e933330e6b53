"""Isoneutral (Redi) diffusion and Gent–McWilliams skew diffusion of tracers, as Veros discretises them
(the Griffies et al. 1998 "triad" functional formulation of MOM, small-slope approximation, tanh slope taper).

Physics. For a tracer τ the eddy flux is ``F = −(K_iso R + K_gm A)·∇τ`` with R the small-slope Redi tensor
built from the isoneutral slopes ``s = −∇_h ρ / ∂_z ρ`` and A the antisymmetric GM tensor. Each slope is
evaluated on the four "triads" around a cell face (two neighbouring cells × the two W faces of that cell),
tapered by ``T(s) = ½(1 + tanh((s_c − |s|)/Δs))`` (``iso_slopec`` s_c, ``iso_dslope`` Δs). The horizontal
diagonal K_11/K_22 are the triad averages of ``max(K_iso_steep, K_iso·T)``; the vertical diagonal K_33
(treated implicitly) averages ``K_iso T s²``. In the skew (GM) pass the diagonal terms are absent and the
off-diagonal ones carry ``K_iso − K_gm`` (horizontal fluxes) and ``K_iso + K_gm`` (vertical flux).

Layout (see :mod:`pelagos.ocean.grid`): fields ``(..., nz, ny, nx)``, level 0 the surface layer; the W point
``k`` is the top face of cell ``k``; u (east face) and v (north face) points as in the C-grid. ``grid`` is any
object with these attributes (pelagos's ``ocean.grid.Grid`` has them):

- ``dz`` (nz) layer thickness, m; ``dxt`` (ny, 1) zonal width of T cells at ``yt`` (m, includes cos φ);
  ``dy`` (scalar) meridional spacing, m; ``cos_t`` (ny, 1), ``cos_v`` (ny, 1) cosine of latitude at T and v
  rows;
- ``mask_t, mask_u, mask_v`` (nz, ny, nx) 0/1; ``cyclic`` (bool) zonally re-entrant.

Safe operations: the slope ``s = −ρ_x / (min(0, ρ_z) − 1e-20)`` is unbounded where the stratification is
neutral or unstable; it is clipped at ``|s| ≤ s_c + 50 Δs`` where the taper is below 1e-43 (0 to double
precision in Veros's tanh form), so the forward values equal Veros's and no ``0·∞`` appears in the
gradients. Where the stratification is
neutral/unstable *and* ρ_x is below ~1e-13 (a zonally uniform unstable column) Veros's slope jumps from 0 to
"infinite" within rounding: the division is :func:`pelagos.core.safe.safe_div` (exact value, derivatives taken
with |min(0, ρ_z)| ≥ 1e-12 kg m⁻⁴), so the gradient there is bounded instead of ~1e20. ``|s|``, ``min`` and
``max`` keep their subgradients (no smoothing: the forward model is Veros's).

Public API (stable; used by the ``ocean`` model):

``isoneutral_tensor(temp, salt, grid, *, K_iso, K_iso_steep=500., iso_slopec=1e-2, iso_dslope=5e-3,
drho_dT=None, drho_dS=None) -> IsoneutralTensor``
    slopes and diagonal diffusivities from Θ/S at the current time level (Veros ``isoneutral_diffusion_pre``).
    ``K_iso`` m² s⁻¹ (float, 0-d tensor or field broadcastable to ``(..., nz, ny, nx)``). Fields of the
    result: ``Ai_ez, Ai_nz (..., nz, ny, nx, 2, 2)`` tapered slopes at east/north faces [neighbour cell,
    W face (0 the lower, 1 the upper)], ``Ai_bx, Ai_by (..., nz, ny, nx, 2, 2)`` at W points [west/east
    (south/north) face, cell (0 below, 1 above)], ``K_11, K_22, K_33`` m² s⁻¹ at east faces, north faces,
    W points.
``isoneutral_fluxes(tr, tensor, grid, *, K_iso, K_skew, diagonal) -> (flux_east, flux_north, flux_top)``
    tracer fluxes (tracer units · m s⁻¹; flux_north already multiplied by cos φ_v, flux_top positive upward at
    the top face of each cell, 0 at the surface).
``flux_divergence(flux_east, flux_north, flux_top, grid) -> Tensor``: tendency (tracer units s⁻¹) × mask_t.
``implicit_vertical_diffusion(tr, K_33, grid, dt) -> Tensor``: backward-Euler vertical diffusion with K_33.
``isoneutral_diffusion(tr, tr_new, tensor, grid, *, dt, K_iso, K_gm, iso=True, skew=True, int_drho=None,
dissipation=("iso", "skew")) -> IsoneutralResult``
    Veros's sequence for one tracer over one tracer step ``dt`` (s): ``tr_new += dt·div F_iso(tr)``, then the
    implicit K_33 solve, then ``tr_new += dt·div F_skew(tr)``. ``tr`` is the tracer at the current level (the
    fluxes use it), ``tr_new`` the partly updated next level. Result: ``tr_new``, ``tendency`` (what was
    added, /dt), and, when ``int_drho`` (``eos.int_drho_dtemp``-like, kg m⁻² per tracer unit) is given, the
    dissipation of dynamic enthalpy on W points ``P_diss_iso``, ``P_diss_skew`` (m² s⁻³; ``P_diss_skew``
    feeds the TKE; ``dissipation`` names the ones to form, the others are None). ``tr`` may carry a leading
    dim of several tracers (e.g. ``torch.stack([temp, salt])``) sharing one ``tensor``.
``dissipation_on_w(diss, grid) -> Tensor``: Veros's interpolation of a T-point dissipation to W points.
"""

from __future__ import annotations

import weakref
from typing import NamedTuple

import torch
from torch.autograd import forward_ad

from ..core.safe import safe_div
from ..core.tridiagonal import solve_tridiagonal
from .eos import GRAV, RHO_0, drho_dsalt, drho_dtemp, mask_w, vertical_grid

__all__ = [
    "IsoneutralResult",
    "IsoneutralTensor",
    "dissipation_on_w",
    "flux_divergence",
    "implicit_vertical_diffusion",
    "isoneutral_diffusion",
    "isoneutral_fluxes",
    "isoneutral_tensor",
    "taper",
]

EPSLN = 1e-20
SLOPE_DEN_EPS = 1e-12  # kg m-4: below this |∂ρ/∂z| the slope's derivatives are those at |∂ρ/∂z| = 1e-12


class IsoneutralTensor(NamedTuple):
    Ai_ez: torch.Tensor
    Ai_nz: torch.Tensor
    Ai_bx: torch.Tensor
    Ai_by: torch.Tensor
    K_11: torch.Tensor
    K_22: torch.Tensor
    K_33: torch.Tensor


class IsoneutralResult(NamedTuple):
    tr_new: torch.Tensor
    tendency: torch.Tensor
    P_diss_iso: torch.Tensor | None
    P_diss_skew: torch.Tensor | None


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
    """Slope taper ``½(1 + tanh((s_c − |s|)/Δs))`` (dimensionless, 1 for flat, 0 for steep isoneutrals).

    Evaluated as the identical ``σ(2 (s_c − |s|)/Δs)`` (σ the logistic function; equal to within 4e-16,
    and 4× cheaper than ``tanh`` in float64 on a CPU)."""
    return torch.sigmoid((iso_slopec - torch.abs(s)) * (2.0 / iso_dslope))


_IS_WRAPPED = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)


def _untracked(*ts: torch.Tensor) -> bool:
    """True when no autograd/forward-mode/functorch transform can see ``ts`` (plain values suffice)."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in ts):
        return False
    f = _IS_WRAPPED
    return forward_ad._current_level < 0 and f is not None and not any(f(t) for t in ts)


def _slope(drho_h: torch.Tensor, drho_z: torch.Tensor, cap: float) -> torch.Tensor:
    den = torch.clamp(drho_z, max=0.0) - EPSLN
    if _untracked(drho_h, den):  # no derivatives wanted: safe_div's value is the plain quotient
        s = drho_h / den
        return torch.clamp(s.neg_(), -cap, cap)
    s = safe_div(-drho_h, den, eps=SLOPE_DEN_EPS)
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


class _Geometry(NamedTuple):
    """State-independent arrays of one grid in one dtype/device (built once, see :func:`_geometry`)."""

    dz: torch.Tensor  # (nz, 1, 1) m
    dzw: torch.Tensor  # (nz, 1, 1) m, Veros's W spacing
    depth: torch.Tensor  # (nz, 1, 1) m, Veros's T-point depths
    dxt: torch.Tensor
    dy: torch.Tensor
    cos_t: torch.Tensor
    cos_v: torch.Tensor
    mt: torch.Tensor
    mu: torch.Tensor
    mv: torch.Tensor
    mw: torch.Tensor
    cyclic: bool
    wmask: torch.Tensor  # W points with a cell above (k ≥ 1)
    drds: torch.Tensor  # mt · ∂ρ/∂S (type 3: a constant)
    dzwv_e: torch.Tensor  # (2 kr, nz, ny, nx): W spacing × validity of the lower/upper triad, east faces
    dzwv_n: torch.Tensor  # the same, north faces
    valid_e: torch.Tensor  # (2 kr, nz, ny, nx)
    valid_n: torch.Tensor
    cosv_j: torch.Tensor  # (2 jp, 1, ny, 1): cos φ_v of the south / north face
    wx: torch.Tensor  # (nz, ny, nx): Veros's diffloc weights of a uniform K at east faces
    wy: torch.Tensor  # the same at north faces
    inv4dz: torch.Tensor  # 1 / (4 dz)
    top_x: (
        torch.Tensor
    )  # (nz, ny, 1): 1 / (cos_t · 4 dxt / cos_t), the zonal part of the W-point flux; 0 at k = 0
    top_y: torch.Tensor  # (nz, ny, 1): 1 / (4 dy cos_t); 0 at k = 0
    wmask_dzw: torch.Tensor  # wmask / dzw, m⁻¹
    mt_dz: torch.Tensor  # mt / dz, m⁻¹
    w_edge: torch.Tensor  # ½ dzw[k+1]/dzw[k] at the deepest wet cell of each column (dissipation_on_w)
    mt_deep: torch.Tensor  # mt below the surface level
    mt_top: torch.Tensor  # mt at the surface level only
    hdiv_x: torch.Tensor  # 1 / dxt
    hdiv_y: torch.Tensor  # 1 / (cos_t dy)


_GEOMETRY_CACHE: dict = {}


def _build_geometry(grid, ref: torch.Tensor) -> _Geometry:
    dz1 = torch.as_tensor(grid.dz).to(ref)
    dz = dz1.reshape(-1, 1, 1)
    vg = vertical_grid(dz1)
    dzw = vg.dzw.reshape(-1, 1, 1)
    mt = torch.as_tensor(grid.mask_t).to(ref)
    mu = torch.as_tensor(grid.mask_u).to(ref)
    mv = torch.as_tensor(grid.mask_v).to(ref)
    mw = mask_w(mt)
    cyc = bool(grid.cyclic)
    dxt = torch.as_tensor(grid.dxt).to(ref)
    dy = torch.as_tensor(grid.dy).to(ref)
    cos_t = torch.as_tensor(grid.cos_t).to(ref)
    cos_v = torch.as_tensor(grid.cos_v).to(ref)
    ones = torch.ones_like(mt)
    valid_e = torch.stack([mu * _below(ones), mu])
    valid_n = torch.stack([mv * _below(ones), mv])
    dzw_k = torch.stack([_below_edge(dzw), dzw])
    below_surface = _above(torch.ones_like(dz))  # (nz, 1, 1): 0 at the surface level
    return _Geometry(
        dz=dz,
        dzw=dzw,
        depth=(-vg.zt).reshape(-1, 1, 1),
        dxt=dxt,
        dy=dy,
        cos_t=cos_t,
        cos_v=cos_v,
        mt=mt,
        mu=mu,
        mv=mv,
        mw=mw,
        cyclic=cyc,
        wmask=mw * _above(ones),
        drds=mt * drho_dsalt(mt),
        dzwv_e=dzw_k * valid_e,
        dzwv_n=dzw_k * valid_n,
        valid_e=valid_e,
        valid_n=valid_n,
        cosv_j=torch.stack([_south(cos_v.unsqueeze(0)).squeeze(0), cos_v]).unsqueeze(1),
        wx=_face_avg_x(ones, cyc),
        wy=_face_avg_y(ones),
        inv4dz=1.0 / (4.0 * dz),
        top_x=below_surface / (cos_t * (4.0 * dxt / cos_t)),
        top_y=below_surface / (4.0 * dy * cos_t),
        wmask_dzw=mw * _above(ones) / dzw,
        mt_dz=mt / dz,
        w_edge=0.5 * _below_edge(dzw) / dzw * (mt * (1.0 - _below(mt))),
        mt_deep=mt * _above(ones),
        mt_top=mt * (1.0 - _above(ones)),
        hdiv_x=1.0 / dxt,
        hdiv_y=1.0 / (cos_t * dy),
    )


def _geometry(grid, ref: torch.Tensor) -> _Geometry:
    """The grid's state-independent arrays in ``ref``'s dtype/device, built on first use and cached (keyed
    by the grid object, the storage and version of its arrays, dtype and device)."""
    key = (id(grid), ref.dtype, ref.device)
    version = tuple(
        (a.data_ptr(), a._version) if torch.is_tensor(a) else id(a)
        for a in (grid.mask_t, grid.mask_u, grid.mask_v, grid.dz, grid.dxt, grid.dy)
    )
    hit = _GEOMETRY_CACHE.get(key)
    if hit is not None and hit[0]() is grid and hit[1] == version:
        return hit[2]
    geo = _build_geometry(grid, ref)
    try:
        ref_grid = weakref.ref(grid)
    except TypeError:  # an object without weak references: cache nothing
        return geo
    if len(_GEOMETRY_CACHE) > 64:
        _GEOMETRY_CACHE.clear()
    _GEOMETRY_CACHE[key] = (ref_grid, version, geo)
    return geo


def _lead(a: torch.Tensor, nb: int) -> torch.Tensor:
    """``a`` of shape ``(L, nz, ny, nx)`` (or ``(L, ny, 1)``...) reshaped to ``(L, 1 × nb, …)`` so that its
    leading triad dim broadcasts in front of ``nb`` batch dims."""
    return a.reshape(a.shape[0], *([1] * nb), *a.shape[1:]) if nb else a


def _lead2(a: torch.Tensor, nb_have: int, nb: int) -> torch.Tensor:
    """``(2, 2, batch…, nz, ny, nx)`` with ``nb_have`` batch dims padded with ones to ``nb``."""
    if nb_have == nb:
        return a
    return a.reshape(2, 2, *([1] * (nb - nb_have)), *a.shape[2:])


def _raw(ai: torch.Tensor) -> torch.Tensor:
    """``(…, nz, ny, nx, 2, 2)`` triad field → ``(2, 2, …, nz, ny, nx)`` (a view)."""
    return ai.movedim((-2, -1), (0, 1))


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
    treats salinity as uniform (its gradients are not computed).

    All 16 triad slopes are formed as one stacked array (one division, one taper) with the grid's
    state-independent factors cached: the same numbers as the triad-by-triad loops of Veros's code."""
    g = _geometry(grid, temp)
    cyc = g.cyclic
    cap = float(iso_slopec) + 50.0 * float(iso_dslope)
    mt = g.mt
    K = _as_field(K_iso, temp)
    steep = _as_field(K_iso_steep, temp)
    drdT = mt * (drho_dtemp(temp, g.depth) if drho_dT is None else drho_dT)
    drdS = (g.drds if drho_dS is None else mt * drho_dS) if salt is not None else None
    # one batch shape for everything (the triad dims are put in front of it)
    shapes = [t.shape for t in (temp, salt, drdT, drdS) if t is not None]
    shapes += [(*t.shape[:-3], 1, 1, 1) for t in (K, steep) if t.ndim > 3]
    shape = torch.broadcast_shapes(*shapes)
    if salt is not None:
        X = torch.stack([temp.expand(shape), salt.expand(shape)])  # (c, …): the two tracers
        C = torch.stack([drdT.expand(shape), drdS.expand(shape)])  # their density derivatives
    else:
        X, C = temp.expand(shape).unsqueeze(0), drdT.expand(shape).unsqueeze(0)
    nb = X.ndim - 4
    gx = g.mu * (_east(X, cyc) - X) / g.dxt
    gy = g.mv * (_north(X) - X) / g.dy
    gz = g.wmask * (_above(X) - X) / g.dzw  # at W points; 0 at the surface
    # east faces (ip: this/east cell, kr: lower/upper W face of that cell)
    Ce = torch.stack([C, _east(C, cyc)], 1)  # (c, ip, …)
    z2 = torch.stack([_below(gz), gz], 1)  # (c, kr, …)
    num_e = (Ce * gx.unsqueeze(1)).sum(0)  # (ip, …)
    den_e = (Ce.unsqueeze(2) * torch.stack([z2, _east(z2, cyc)], 1)).sum(0)  # (ip, kr, …)
    # north faces
    Cn = torch.stack([C, _north(C)], 1)
    num_n = (Cn * gy.unsqueeze(1)).sum(0)
    den_n = (Cn.unsqueeze(2) * torch.stack([z2, _north(z2)], 1)).sum(0)
    # W points (ip/jp: west/east or south/north face, kr: this cell / the cell above)
    Cb = torch.stack([C, _above(C)], 1)  # (c, kr, …)
    den_b = (Cb * gz.unsqueeze(1)).sum(0)  # (kr, …)
    x2 = torch.stack([_west(gx, cyc), gx], 1)  # (c, ip, …)
    y2 = torch.stack([_south(gy), gy], 1)
    num_bx = (Cb.unsqueeze(1) * torch.stack([x2, _above(x2)], 2)).sum(0)  # (ip, kr, …)
    num_by = (Cb.unsqueeze(1) * torch.stack([y2, _above(y2)], 2)).sum(0)
    num = torch.stack(
        [num_e.unsqueeze(1).expand_as(den_e), num_n.unsqueeze(1).expand_as(den_n), num_bx, num_by]
    )
    den = torch.stack(
        [den_e, den_n, den_b.unsqueeze(0).expand_as(num_bx), den_b.unsqueeze(0).expand_as(num_by)]
    )
    untracked = _untracked(num, den)
    s = _slope(num, den, cap)  # (4 groups, 2, 2, …)
    if untracked:  # the same numbers as taper(), without temporaries
        t = s.abs().sub_(iso_slopec).mul_(-2.0 / iso_dslope).sigmoid_()
    else:
        t = taper(s, iso_slopec, iso_dslope)
    ts = t * s
    if _uniform(K):
        dxl, dyl = K * g.wx, K * g.wy
    else:
        Kf = K * torch.ones(shape, dtype=temp.dtype, device=temp.device)
        dxl, dyl = _face_avg_x(Kf, cyc), _face_avg_y(Kf)
    # east: K_11
    ve = _lead(g.valid_e, nb)
    Ai_ez = ts[0] * ve
    K_11 = (_lead(g.dzwv_e, nb) * torch.maximum(steep, dxl * t[0])).sum((0, 1)) * g.inv4dz
    vn = _lead(g.valid_n, nb)
    Ai_nz = ts[1] * vn
    K_22 = (_lead(g.dzwv_n, nb) * torch.maximum(steep, dyl * t[1])).sum((0, 1)) * g.inv4dz
    wm = g.wmask
    Ai_bx = ts[2] * wm
    Ai_by = ts[3] * wm
    tss = ts * s
    sumx = K * tss[2].sum((0, 1)) * wm
    sumy = g.dy * K * (tss[3] * _lead(g.cosv_j, nb).unsqueeze(1)).sum((0, 1)) * wm
    K_33 = sumx / 4.0 + sumy / (4.0 * g.dy * g.cos_t)
    mv = lambda a: a.movedim((0, 1), (-2, -1))  # noqa: E731
    return IsoneutralTensor(mv(Ai_ez), mv(Ai_nz), mv(Ai_bx), mv(Ai_by), K_11, K_22, K_33)


def _uniform(K) -> bool:
    """True for a diffusivity without spatial structure (a number, or one value per ensemble member)."""
    return not torch.is_tensor(K) or all(d == 1 for d in K.shape[-3:])


def _triad_sums(tr: torch.Tensor, tensor: IsoneutralTensor, g: _Geometry):
    """The K-free parts of the off-diagonal fluxes of ``tr``: ``Σ_triads A·δτ`` at east faces (× Veros's
    diffloc weights / 4dz), at north faces (the same, not yet × cos φ_v) and at W points (the top face of
    each cell; 0 at the surface). A uniform K multiplies them."""
    cyc = g.cyclic
    nb = max(tr.ndim, tensor.K_11.ndim) - 3
    d2 = torch.stack([tr - _below_edge(tr), _above_edge(tr) - tr])  # (kr: lower, upper face, …)
    if tr.ndim - 3 < nb:
        d2 = d2.reshape(2, *([1] * (nb - tr.ndim + 3)), *d2.shape[1:])
    nb_t = tensor.K_11.ndim - 3
    ae = _lead2(_raw(tensor.Ai_ez), nb_t, nb)
    an = _lead2(_raw(tensor.Ai_nz), nb_t, nb)
    ax = _lead2(_raw(tensor.Ai_bx), nb_t, nb)
    ay = _lead2(_raw(tensor.Ai_by), nb_t, nb)
    se = (ae * torch.stack([d2, _east(d2, cyc)])).sum((0, 1))
    sn = (an * torch.stack([d2, _north(d2)])).sum((0, 1))
    dxe = _east(tr, cyc) - tr
    dyn = _north(tr) - tr
    x2 = torch.stack([_west(dxe, cyc), dxe])  # (ip, …)
    y2 = torch.stack([_south(dyn), dyn])
    if tr.ndim - 3 < nb:
        x2 = x2.reshape(2, *([1] * (nb - tr.ndim + 3)), *x2.shape[1:])
        y2 = y2.reshape(2, *([1] * (nb - tr.ndim + 3)), *y2.shape[1:])
    sx = (ax * torch.stack([x2, _above(x2)], 1)).sum((0, 1))
    sy = (ay * _lead(g.cosv_j, nb).unsqueeze(1) * torch.stack([y2, _above(y2)], 1)).sum((0, 1))
    top = sx * g.top_x + sy * g.top_y  # 0 at the surface
    return se, sn, top, dxe, dyn


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
    K_iso, K_skew = _as_field(K_iso, tr), _as_field(K_skew, tr)
    if _uniform(K_iso) and _uniform(K_skew):
        se, sn, top, dxe, dyn = _triad_sums(tr, tensor, g)
        return _fluxes_uniform(se, sn, top, dxe, dyn, tensor, g, K_iso - K_skew, K_iso + K_skew, diagonal)
    return _fluxes_general(tr, tensor, g, K_iso, K_skew, diagonal)


def _fluxes_uniform(se, sn, top, dxe, dyn, tensor, g: _Geometry, K1, K2, diagonal: bool):
    fe = K1 * g.wx * se * g.inv4dz
    fn = K1 * g.wy * sn * g.inv4dz
    if diagonal:
        fe = fe + dxe / g.dxt * tensor.K_11
        fn = fn + dyn / g.dy * tensor.K_22
    return fe, g.cos_v * fn, K2 * top


def _fluxes_general(tr, tensor: IsoneutralTensor, g: _Geometry, K_iso, K_skew, diagonal: bool):
    """Fluxes for diffusivities that vary in space (Veros's diffloc averages of K_iso − K_skew)."""
    cyc = g.cyclic
    ones = torch.ones_like(tr)
    K1 = (K_iso - K_skew) * ones
    K2 = (K_iso + K_skew) * ones
    d_up = _above_edge(tr) - tr
    d_lo = tr - _below_edge(tr)
    sumz = 0.0
    diffloc = _face_avg_x(K1, cyc)
    for ip in range(2):
        for kr in range(2):
            d = d_up if kr == 1 else d_lo
            d = d if ip == 0 else _east(d, cyc)
            sumz = sumz + diffloc * tensor.Ai_ez[..., ip, kr] * d
    flux_east = sumz / (4.0 * g.dz)
    if diagonal:
        flux_east = flux_east + (_east(tr, cyc) - tr) / g.dxt * tensor.K_11
    diffloc = _face_avg_y(K1)
    sumz = 0.0
    for jp in range(2):
        for kr in range(2):
            d = d_up if kr == 1 else d_lo
            d = d if jp == 0 else _north(d)
            sumz = sumz + diffloc * tensor.Ai_nz[..., jp, kr] * d
    fn = sumz / (4.0 * g.dz)
    if diagonal:
        fn = fn + (_north(tr) - tr) / g.dy * tensor.K_22
    flux_north = g.cos_v * fn
    dxe = _east(tr, cyc) - tr
    dyn = _north(tr) - tr
    sumx = 0.0
    sumy = 0.0
    for kr in range(2):
        ex = dxe if kr == 0 else _above(dxe)
        ny_ = dyn if kr == 0 else _above(dyn)
        for ip in range(2):
            d = _west(ex, cyc) if ip == 0 else ex
            sumx = sumx + K2 * tensor.Ai_bx[..., ip, kr] / g.cos_t * d
        for jp in range(2):
            d = _south(ny_) if jp == 0 else ny_
            sumy = sumy + K2 * tensor.Ai_by[..., jp, kr] * g.cosv_j[jp] * d
    flux_top = sumx / (4.0 * g.dxt / g.cos_t) + sumy / (4.0 * g.dy * g.cos_t)
    flux_top = torch.cat([torch.zeros_like(flux_top[..., :1, :, :]), flux_top[..., 1:, :, :]], -3)
    return flux_east, flux_north, flux_top


def flux_divergence(flux_east, flux_north, flux_top, grid) -> torch.Tensor:
    """Convergence of the fluxes: tracer tendency (units of tr per s) on T points, masked."""
    g = _geometry(grid, flux_east)
    return _divergence(flux_east, flux_north, flux_top, g)


def _divergence(flux_east, flux_north, flux_top, g: _Geometry) -> torch.Tensor:
    hor = (flux_east - _west(flux_east, g.cyclic)) * g.hdiv_x + (flux_north - _south(flux_north)) * g.hdiv_y
    ver = (flux_top - _below(flux_top)) / g.dz
    return g.mt * (hor + ver)


def implicit_vertical_diffusion(
    tr: torch.Tensor, K_33: torch.Tensor, grid, dt: float | torch.Tensor
) -> torch.Tensor:
    """Backward-Euler step of ``∂τ/∂t = ∂_z(K_33 ∂_z τ)`` over ``dt`` s (no flux through surface and bottom);
    land cells keep their value."""
    g = _geometry(grid, tr)
    delta = (dt * K_33) * g.wmask_dzw  # coupling through the top face of each cell (0 at the surface)
    lower = -delta * g.mt_dz
    upper = -_below(delta) * g.mt_dz
    diag = 1.0 - (lower + upper)
    shape = torch.broadcast_shapes(lower.shape, tr.shape)

    def zlast(a: torch.Tensor) -> torch.Tensor:  # contiguous columns: the solver's direct path
        return a.expand(shape).movedim(-3, -1).contiguous()

    x = solve_tridiagonal(zlast(lower), zlast(diag), zlast(upper), zlast(tr))
    return x.movedim(-1, -3)


def dissipation_on_w(diss: torch.Tensor, grid) -> torch.Tensor:
    """Veros's interpolation of a T-point energy dissipation (m² s⁻³) to the W points (top face of each cell):
    the mean of the two cells, the deepest wet cell's half-box added to its top face, the surface cell as
    is."""
    g = _geometry(grid, diss)
    return (0.5 * (diss + _above(diss)) + diss * g.w_edge) * g.mt_deep + diss * g.mt_top


def _dissipation(int_drho, flux_east, flux_north, g: _Geometry) -> torch.Tensor:
    cyc = g.cyclic
    c = GRAV / RHO_0
    ex = (_east(int_drho, cyc) - int_drho) * flux_east
    ny_ = (_north(int_drho) - int_drho) * flux_north
    return 0.5 * c * (ex + _west(ex, cyc)) / g.dxt + 0.5 * c * (ny_ + _south(ny_)) / (g.dy * g.cos_t)


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
    dissipation: tuple[str, ...] = ("iso", "skew"),
) -> IsoneutralResult:
    """One tracer's isoneutral (``iso``) and GM skew (``skew``) update over ``dt`` s (see module doc).

    Both passes take their fluxes from the same ``tr``; for diffusivities uniform in space (one value per
    ensemble member, as in the model) the triad sums are formed once and scaled by ``K_iso`` and ``K_gm``."""
    g = _geometry(grid, tr)
    mt, dzw, wmask = g.mt, g.dzw, g.wmask
    K_iso, K_gm = _as_field(K_iso, tr), _as_field(K_gm, tr)
    zero = torch.zeros((), dtype=tr.dtype, device=tr.device)
    c = GRAV / RHO_0
    tendency = None
    p_iso = p_skew = None
    sums = _triad_sums(tr, tensor, g) if _uniform(K_iso) and _uniform(K_gm) else None
    fxa = (int_drho - _above(int_drho)) / dzw if int_drho is not None else None

    def fluxes(k_iso, k_skew, diagonal):
        if sums is not None:
            return _fluxes_uniform(*sums, tensor, g, k_iso - k_skew, k_iso + k_skew, diagonal)
        return _fluxes_general(tr, tensor, g, k_iso, k_skew, diagonal)

    if iso:
        fe, fn, ft = fluxes(K_iso, zero, True)
        dtr = _divergence(fe, fn, ft, g)
        before = tr_new + dt * dtr
        after = implicit_vertical_diffusion(before, tensor.K_33, grid, dt)
        after = torch.where(mt > 0, after, before)
        tendency = dtr + (after - before) / dt
        tr_new = after
        if int_drho is not None and "iso" in dissipation:
            p_iso = dissipation_on_w(_dissipation(int_drho, fe, fn, g), grid)
            flux_impl = tensor.K_33 * (_above(tr_new) - tr_new) / dzw
            p_iso = p_iso - c * fxa * (ft + flux_impl) * wmask
    if skew:
        fe, fn, ft = fluxes(zero, K_gm, False)
        dtr = _divergence(fe, fn, ft, g)
        tr_new = tr_new + dt * dtr
        tendency = dtr if tendency is None else tendency + dtr
        if int_drho is not None and "skew" in dissipation:
            p_skew = dissipation_on_w(_dissipation(int_drho, fe, fn, g), grid)
            p_skew = p_skew - c * fxa * ft * wmask
    if tendency is None:
        tendency = torch.zeros_like(tr_new)
    return IsoneutralResult(tr_new, tendency, p_iso, p_skew)

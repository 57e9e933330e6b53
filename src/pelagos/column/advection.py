"""Vertical advection and sinking of cell-centred quantities, GOTM's ``adv_center`` scheme, batched.

Explicit finite-volume update with upstream-biased (Lax-Wendroff/TVD) face values, the limiters of GOTM
(Pietrzak 1998; reconstruction by K. Klingbeil), automatic sub-stepping when the Courant number exceeds 1, and
GOTM's four boundary types. GOTM layout: index 0 = bottom layer, nz-1 = surface; velocities ``ww`` on the nz+1
interfaces, positive upward. See docs/column_numerics.md for equations and gradient behaviour.
"""

from __future__ import annotations

import warnings

import torch

from ..core.errors import ConfigError
from ._checks import BCSpec, as_tensor, batch_shape, check_last, check_pos, concrete, parse_bc

__all__ = ["LIMITERS", "advect_center", "courant_substeps", "face_reconstruct", "face_velocities"]

# GOTM util.F90 codes of the advection methods
LIMITERS: dict[str, int] = {
    "CENTRAL": -1,
    "UPSTREAM": 1,
    "P2": 3,
    "SUPERBEE": 4,
    "MUSCL": 5,
    "P2_PDM": 6,
    "SPLMAX13": 13,
}
_CODES = {v: k for k, v in LIMITERS.items()}
_BC_KINDS = ("flux", "value", "onesided", "zerodivergence")
ITMAX = 100  # GOTM's cap on the number of sub-steps


def _method_name(method: str | int) -> str:
    if isinstance(method, int) and not isinstance(method, bool):
        if method == 2:
            raise ConfigError("advection method P1 (code 2) is not implemented in GOTM; choose another one.")
        if method not in _CODES:
            raise ConfigError(
                f"unknown advection method code {method}; valid: {sorted(_CODES)} ({LIMITERS})."
            )
        return _CODES[method]
    name = str(method).strip().upper().replace("-", "_")
    if name not in LIMITERS:
        raise ConfigError(f"unknown advection method {method!r}; valid: {', '.join(LIMITERS)}.")
    return name


def _limiter_coeffs(c: torch.Tensor) -> dict[str, torch.Tensor]:
    """The parts of the limiters that depend on the Courant number only (computed once per call)."""
    x = (1.0 - 2.0 * c) / 6.0
    return {
        "1-c": 1.0 - c,
        "x+": 0.5 + x,
        "x-": 0.5 - x,
        "2/(1-c)": 2.0 / (1.0 - c),
        "c+eps": c + 1e-10,
        "1/(1-c)": 1.0 / (1.0 - c),
        "one": torch.ones_like(c),
        "two": torch.full_like(c, 2.0),
    }


def _realized(coeffs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The limiter coefficients stacked into one tensor and unbound again (the same values). Under
    ``torch.compile`` a CPU ``cat``/``stack`` is a buffer of its own, so these Courant-only terms (several
    divisions) are computed once per velocity row instead of being inlined into every column's face loop."""
    keys = list(coeffs)
    shape = torch.broadcast_shapes(*(v.shape for v in coeffs.values()))
    stacked = torch.stack([coeffs[k].expand(shape) for k in keys])
    return dict(zip(keys, stacked.unbind(0)))


def face_reconstruct(
    method: str | int,
    c: torch.Tensor,
    Yu: torch.Tensor,
    Yc: torch.Tensor,
    Yd: torch.Tensor,
    coeffs: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Face value from upstream ``Yu``, central ``Yc``, downstream ``Yd`` values and Courant number ``c``.

    ``Df = Yd - Yc``, ``Dfu = Yc - Yu``. Where ``Df*Dfu > 0`` (monotone): ``Yc + 1/2 Phi(r, c) (1 - c) Df``
    with ``r = Dfu/Df``; elsewhere first-order upstream ``Yc`` (P2 and CENTRAL keep their unlimited formulas).
    ``coeffs`` (from ``_limiter_coeffs(c)``) may be passed to reuse the Courant-only parts across sub-steps.
    """
    name = _method_name(method)
    if name == "UPSTREAM":
        return Yc
    k = coeffs if coeffs is not None else _limiter_coeffs(c)
    df = Yd - Yc
    dfu = Yc - Yu
    mono = df * dfu > 0
    r = dfu / torch.where(mono, df, k["one"])  # safe in the unused branch (no NaN gradients)
    if name == "CENTRAL":
        return torch.where(mono, Yc + 0.5 * k["1/(1-c)"] * k["1-c"] * df, 0.5 * (Yc + Yd))
    phi = k["x+"] + k["x-"] * r
    if name == "P2":
        return torch.where(mono, Yc + 0.5 * phi * k["1-c"] * df,
                           Yc + 0.5 * k["1-c"] * (k["x+"] * df + k["x-"] * dfu))  # fmt: skip
    two = k["two"]
    if name == "SUPERBEE":
        lim = torch.maximum(torch.minimum(2.0 * r, k["one"]), torch.minimum(r, two))
    elif name == "MUSCL":
        lim = torch.minimum(2.0 * r, torch.minimum(0.5 * (1.0 + r), two))
    elif name == "SPLMAX13":
        lim = torch.minimum(2.0 * r, torch.minimum(torch.maximum(1.0 + 2.0 * r, 2.0 + r) / 3.0, two))
    else:  # P2_PDM ("ULTIMATE QUICKEST")
        lim = torch.minimum(2.0 * r / k["c+eps"], torch.minimum(phi, k["2/(1-c)"]))
    return torch.where(mono, Yc + 0.5 * lim * k["1-c"] * df, Yc)


def face_velocities(w_center: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Interface velocities for sinking/rising as GOTM-FABM builds them, shape (..., nz+1).

    ``w_k = om_k w_{k-1} + (1 - om_k) w_k`` at interior interface k (between layers k-1 and k, 0-based) with
    ``om_k = h_k / (h_{k-1} + h_k)``, and zero at the bed and at the surface (nothing sinks out of the column;
    deposition is a bottom flux of the biogeochemical model). Units of ``w_center`` (m s-1, positive up).
    """
    h = as_tensor(h, w_center)
    check_last("h", h, w_center.shape[-1], "layer thickness, one per layer of w_center")
    om = h[..., 1:] / (h[..., :-1] + h[..., 1:])
    wi = om * w_center[..., :-1] + (1.0 - om) * w_center[..., 1:]
    zero = torch.zeros_like(wi[..., :1])
    return torch.cat([zero, wi, zero], -1)


def courant_substeps(ww: torch.Tensor, h: torch.Tensor, dt: float | torch.Tensor, max_substeps: int = ITMAX):
    """GOTM's sub-step count per column, ``it = min(max_substeps, int(cmax) + 1)``, as an int64 tensor.

    ``cmax = max_k |w_k| dt / ((h_k + h_{k+1})/2)`` over the interior interfaces; computed without gradient
    and in float64.
    """
    with torch.no_grad():
        # in float64 (as GOTM) so that float32 inputs give the same count wherever their values do
        wide = torch.float64 if ww.device.type != "mps" else ww.dtype
        ww = ww.detach().to(wide)
        h, dt_t = as_tensor(h, ww).detach(), as_tensor(dt, ww).detach()
        dtb = dt_t[..., None] if dt_t.dim() > 0 else dt_t
        if ww.shape[-1] <= 2:
            shape = torch.broadcast_shapes(ww.shape[:-1], h.shape[:-1], dt_t.shape)
            return torch.ones(shape, dtype=torch.int64, device=ww.device)
        cour = ww[..., 1:-1].abs() * dtb / (0.5 * (h[..., :-1] + h[..., 1:]))
        cmax = cour.amax(-1)
        return torch.clamp(cmax.floor().to(torch.int64) + 1, max=max_substeps)


def warn_substeps_clipped(max_substeps: int = ITMAX, stacklevel: int = 3) -> None:
    """GOTM's warning when a column needs more sinking sub-steps than ``max_substeps`` (shared by the plain,
    compiled and fused steps)."""
    warnings.warn(
        f"advect_center: sub-steps clipped to max_substeps={max_substeps} (Courant number per sub-step "
        "exceeds 1; results are not stable). Reduce dt or raise max_substeps.",
        RuntimeWarning,
        stacklevel=stacklevel,
    )


def _boundary_fluxes(kind_up, v_up, kind_dw, v_dw, F_int, ww, Y):
    """GOTM's boundary fluxes at the surface (F_N) and bed (F_0); flux values are into-domain positive."""
    w_top, w_bot = ww[..., -1], ww[..., 0]
    zero = torch.zeros_like(Y[..., 0])
    if kind_up == "flux":
        top = -v_up + zero
    elif kind_up == "value":
        top = w_top * v_up + zero
    elif kind_up == "onesided":
        top = torch.where(w_top >= 0, w_top * Y[..., -1], zero)
    else:  # zero divergence (for a single layer GOTM uses the bottom flux of the previous sub-step: 0 here)
        top = F_int[..., -1] if F_int.shape[-1] > 0 else zero
    if kind_dw == "flux":
        bot = v_dw + zero
    elif kind_dw == "value":
        bot = w_bot * v_dw + zero
    elif kind_dw == "onesided":
        bot = torch.where(w_bot <= 0, w_bot * Y[..., 0], zero)
    else:
        bot = F_int[..., 0] if F_int.shape[-1] > 0 else top
    return top, bot


def advect_center(
    Y: torch.Tensor,
    h: torch.Tensor,
    ww: torch.Tensor,
    dt: float | torch.Tensor,
    *,
    method: str | int = "P2_PDM",
    mode: str = "conservative",
    bc_up: BCSpec = ("flux", 0.0),
    bc_down: BCSpec = ("flux", 0.0),
    max_substeps: int = ITMAX,
    substeps: int | None = None,
    loop: int | None = None,
) -> torch.Tensor:
    """One advection step of cell-centred quantities, exactly as GOTM's ``adv_center``.

    Args:
        Y: values at layer centres, (..., nz), bottom first.
        h: layer thickness (m), (..., nz), > 0.
        ww: velocity at the nz+1 interfaces (m s-1, positive up), (..., nz+1); may differ per tracer, e.g.
            (B, V, nz+1). For sinking use :func:`face_velocities` (zero at bed and surface).
        dt: time step (s), > 0, float or tensor of batch shape (...,).
        method: face-value limiter: ``UPSTREAM, P2, SUPERBEE, MUSCL, P2_PDM, SPLMAX13, CENTRAL`` (or the
            GOTM integer codes).
        mode: ``"conservative"`` (``-dF/dz``, sinking) or ``"non-conservative"`` (``-w dY/dz``, water
            velocity).
        bc_up, bc_down: ``("flux", F)`` prescribed flux into the domain (positive in); ``("value", Yb)`` the
            boundary value advected with the boundary velocity; ``("oneSided", _)`` first-order outflow only;
            ``("zeroDivergence", _)`` flux equal to the neighbouring interior one. Values float or (...,).
        max_substeps: cap of the sub-step count (GOTM: 100; a warning is issued when reached).
        substeps: fixed number of sub-steps for every column. ``None`` (default) computes GOTM's
            ``it = min(max_substeps, int(cmax)+1)`` per column (from detached values) and runs each column
            with its own ``it`` (columns needing fewer sub-steps are frozen once done), as GOTM would.
            That count is data-dependent, so under ``torch.func.vmap`` pass an int here (the same for all).
        loop: with ``substeps=None``, run exactly ``loop`` sub-step iterations, each column advancing only
            during its first ``it`` of them (GOTM's count, computed on tensors without reading it back): the
            same result as the default whenever ``loop >= max(it)``, with no value-dependent Python branch
            (what a compiled step needs). The caller checks ``courant_substeps(...).max() <= loop``.

    Returns:
        Y after one step, shape = broadcast batch dims + (nz,).
    """
    if not torch.is_tensor(Y) or not Y.is_floating_point():
        raise ConfigError(f"Y must be a floating-point tensor (..., nz); got {type(Y).__name__}.")
    nz = Y.shape[-1]
    h = as_tensor(h, Y)
    ww = as_tensor(ww, Y)
    check_last("h", h, nz, "layer thickness, one per layer of Y")
    check_last("ww", ww, nz + 1, "velocity at the nz+1 interfaces")
    batch = batch_shape(["Y", "h", "ww"], [Y.shape[:-1], h.shape[:-1], ww.shape[:-1]])
    check_pos("h", h, "Pass layer thicknesses in metres, bottom layer first.")
    dt_t = as_tensor(dt, Y)
    check_pos("dt", dt_t, "The time step is in seconds.")
    name = _method_name(method)
    mode_key = str(mode).strip().lower().replace("_", "-")
    if mode_key in ("1", "conservative"):
        conservative = True
    elif mode_key in ("0", "non-conservative", "nonconservative"):
        conservative = False
    else:
        raise ConfigError(f"unknown advection mode {mode!r}; valid: 'conservative', 'non-conservative'.")
    kind_up, v_up = parse_bc("bc_up", _norm_bc(bc_up), _BC_KINDS)
    kind_dw, v_dw = parse_bc("bc_down", _norm_bc(bc_down), _BC_KINDS)
    v_up, v_dw = as_tensor(v_up, Y), as_tensor(v_dw, Y)
    if not isinstance(max_substeps, int) or max_substeps < 1:
        raise ConfigError(f"max_substeps must be a positive int; got {max_substeps!r}.")

    if substeps is not None:
        if not isinstance(substeps, int) or substeps < 1:
            raise ConfigError(f"substeps must be a positive int or None; got {substeps!r}.")
        it_col = None
        n_loop = substeps
    elif loop is not None:
        it_col = courant_substeps(ww, h, dt_t, max_substeps)
        n_loop = int(loop)
    else:
        it_col = courant_substeps(ww, h, dt_t, max_substeps)
        try:
            n_loop = int(it_col.max())
            uniform = n_loop == int(it_col.min())
        except RuntimeError as err:  # vmap: the count is data-dependent
            raise ConfigError(
                "advect_center cannot pick the sub-step count inside torch.func.vmap (it depends on data); "
                "pass substeps=<int> (e.g. the value of courant_substeps(ww, h, dt).max() outside vmap)."
            ) from err
        if n_loop >= max_substeps and concrete(it_col):
            warn_substeps_clipped(max_substeps, stacklevel=3)
        if uniform:
            it_col = None
    its = float(n_loop) if it_col is None else it_col.to(Y.dtype)  # per-column count as float
    dtb = dt_t[..., None] if dt_t.dim() > 0 else dt_t
    itb = its if it_col is None else its[..., None]

    # per-interface geometry and Courant number of one sub-step (GOTM: |w|/it * dt / (h_k+h_{k+1})/2)
    w_int = ww[..., 1:-1]
    pos = w_int > 0
    cour = w_int.abs() / itb * dtb / (0.5 * (h[..., :-1] + h[..., 1:]))
    dw = ww[..., 1:] - ww[..., :-1]  # only for the non-conservative form
    coeffs = _limiter_coeffs(cour) if name != "UPSTREAM" else None
    fac = 1.0 / itb * dtb  # GOTM: Y - 1/it*dt*(...)
    compiling = torch.compiler.is_compiling()
    if compiling and coeffs is not None:
        coeffs = _realized(coeffs)
    # one direction everywhere (e.g. sinking) needs no per-face selection
    direction = None
    if concrete(pos):
        direction = "down" if not bool(pos.any()) else ("up" if bool(pos.all()) else None)
    for step in range(n_loop):
        if nz >= 2:
            Ylo, Yhi = Y[..., :-1], Y[..., 1:]
            if compiling:
                # the profile with its end layers repeated, one buffer (a CPU cat is realised by Inductor):
                # the upstream values below are then shifted vector loads, not per-element clamped gathers
                Ye = torch.cat([Y[..., :1], Y, Y[..., -1:]], -1)
                Yu_pos, Yu_neg = Ye[..., :-3], Ye[..., 3:]
            if direction != "down" and not compiling:
                Yu_pos = torch.cat([Y[..., :1], Y[..., :-2]], -1)  # below lower layer (itself at bed face)
            if direction != "up" and not compiling:
                Yu_neg = torch.cat([Y[..., 2:], Y[..., -1:]], -1)  # above upper layer (itself at top face)
            if direction == "down":
                Yc, Yd, Yu = Yhi, Ylo, Yu_neg
            elif direction == "up":
                Yc, Yd, Yu = Ylo, Yhi, Yu_pos
            else:
                Yc = torch.where(pos, Ylo, Yhi)
                Yd = torch.where(pos, Yhi, Ylo)
                Yu = torch.where(pos, Yu_pos, Yu_neg)
            F_int = w_int * face_reconstruct(name, cour, Yu, Yc, Yd, coeffs)
        else:
            F_int = Y[..., :0]
        top, bot = _boundary_fluxes(kind_up, v_up, kind_dw, v_dw, F_int, ww, Y)
        fb = torch.broadcast_shapes(F_int.shape[:-1], top.shape, bot.shape)
        if compiling and nz >= 2:
            # fluxes through the upper and lower face of each layer as zero-padded sums (x + 0 = x): pointwise
            # for Inductor, where the cat below would be a separate copy loop; the same values
            pad = torch.nn.functional.pad
            Fi = F_int.expand(*fb, nz - 1)
            upper = pad(Fi, (0, 1)) + pad(top.expand(fb)[..., None], (nz - 1, 0))
            lower = pad(Fi, (1, 0)) + pad(bot.expand(fb)[..., None], (0, nz - 1))
            div = (upper - lower) / h
        else:
            F = torch.cat(
                [bot.expand(fb)[..., None], F_int.expand(*fb, nz - 1), top.expand(fb)[..., None]], -1
            )
            div = (F[..., 1:] - F[..., :-1]) / h
        if not conservative:
            div = div - Y * dw / h
        Y_new = Y - fac * div
        if it_col is None:
            Y = Y_new
        else:
            active = (it_col > step)[..., None]
            Y = torch.where(active, Y_new, Y)
    return Y.expand(*batch, nz) if Y.shape[:-1] != batch else Y


def _norm_bc(bc: BCSpec) -> BCSpec:
    if isinstance(bc, tuple | list) and len(bc) == 2 and isinstance(bc[0], str):
        return (bc[0].replace("_", "").replace("-", ""), bc[1])
    return bc

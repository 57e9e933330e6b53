"""Batched tridiagonal solve (Thomas algorithm) with an implicit-differentiation backward.

``solve_tridiagonal(lower, diag, upper, rhs)`` solves ``A x = rhs`` where, for each system,
``A[i, i-1] = lower[i]``, ``A[i, i] = diag[i]``, ``A[i, i+1] = upper[i]``. All four arguments
broadcast over their leading dimensions; the last dimension is the system size N (in a water
column: the N layers). ``lower[..., 0]`` and ``upper[..., N-1]`` lie outside the matrix and are
ignored (their gradients are zero).

Several right-hand sides sharing one matrix (one matrix per column, many tracers): give ``rhs`` the
shape ``(..., K, N)`` and the matrix diagonals the shape ``(..., 1, N)`` (or ``(..., N)`` with the
column dims in front). Every dimension along which the matrix is broadcast but ``rhs`` is not is
treated as "many right-hand sides": the matrix is factorised once and reused for all of them.

No pivoting: the matrix must be diagonally dominant or an M-matrix (as for implicit vertical
diffusion, ``A = I + dt * D`` with ``dt > 0``, diffusivity >= 0 and layer thickness > 0).

Backward (implicit differentiation, memory O(batch * N), nothing of the sweep is stored):
``lam = A^-T gx``; ``g_rhs = lam``; ``g_diag = -lam * x``; ``g_lower[i] = -lam[i] x[i-1]``;
``g_upper[i] = -lam[i] x[i+1]``, each summed back to its input's shape. Forward mode:
``dx = A^-1 (d_rhs - dA x)``. ``torch.func.vmap``, ``jvp``, ``grad`` and double backward work.
See docs/tridiagonal.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache, reduce
from math import prod
from types import ModuleType

import torch
from torch.autograd import forward_ad

from . import _thomas_c, _thomas_torch
from .errors import ConfigError, ShapeError, SolverError

__all__ = ["solve_tridiagonal", "tridiagonal_backend"]

_NAMES = ("lower", "diag", "upper", "rhs")
_C_DTYPES = (torch.float32, torch.float64)


# --------------------------------------------------------------------------------------------------
# Canonical layout: matrices (P, N), right-hand sides (P, K, N)
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Layout:
    full: tuple[int, ...]  # broadcast shape of all four arguments (..., N)
    matrix: tuple[int, ...]  # broadcast shape of lower/diag/upper, left-padded to len(full)
    perm: tuple[int, ...]  # full -> (matrix dims, rhs-only dims, N)
    inv_perm: tuple[int, ...]
    P: int  # number of distinct matrices
    K: int  # right-hand sides per matrix
    N: int

    identity: bool  # perm is the identity (the rhs-only dims already sit just before N)

    def matrix_in(self, t: torch.Tensor) -> torch.Tensor:
        if t.numel() == self.P * self.N and t.is_contiguous():
            return t.view(self.P, self.N)  # no copy in the common, unbroadcast case
        return t.expand(self.matrix).reshape(self.P, self.N).contiguous()

    def rhs_in(self, t: torch.Tensor) -> torch.Tensor:
        if self.identity and t.numel() == self.P * self.K * self.N and t.is_contiguous():
            return t.view(self.P, self.K, self.N)
        t = t.expand(self.full).permute(self.perm)
        return t.reshape(self.P, self.K, self.N).contiguous()

    def rhs_out(self, x: torch.Tensor) -> torch.Tensor:
        if self.identity:
            return x.view(self.full)
        return x.reshape([self.full[j] for j in self.perm]).permute(self.inv_perm)

    def matrix_out(self, g: torch.Tensor) -> torch.Tensor:
        return g.reshape(self.matrix)


@lru_cache(maxsize=256)
def _layout(sa: torch.Size, sb: torch.Size, sc: torch.Size, sd: torch.Size) -> _Layout:
    matrix = torch.broadcast_shapes(sa, sb, sc)
    full = tuple(torch.broadcast_shapes(matrix, sd))
    matrix = (1,) * (len(full) - len(matrix)) + tuple(matrix)
    lead = range(len(full) - 1)
    mdims = [j for j in lead if matrix[j] == full[j]]
    rdims = [j for j in lead if matrix[j] != full[j]]
    perm = (*mdims, *rdims, len(full) - 1)
    inv_perm = tuple(sorted(range(len(perm)), key=perm.__getitem__))
    P = prod(full[j] for j in mdims)
    K = prod(full[j] for j in rdims)
    identity = perm == tuple(range(len(perm)))
    return _Layout(full, matrix, perm, inv_perm, P, K, full[-1], identity)


# --------------------------------------------------------------------------------------------------
# Backend choice
# --------------------------------------------------------------------------------------------------
def _triton() -> ModuleType | None:
    try:
        from . import _thomas_triton
    except Exception:  # triton missing or broken: never break CPU/CI
        return None
    return _thomas_triton if _thomas_triton.available() else None


def _backend(t: torch.Tensor) -> ModuleType:
    if os.environ.get("PELAGOS_TRIDIAGONAL_BACKEND", "auto").lower() in ("torch", "python"):
        return _thomas_torch
    if t.device.type == "cpu":
        return _thomas_c if t.dtype in _C_DTYPES and _thomas_c.kernels() is not None else _thomas_torch
    if t.device.type == "cuda":
        tri = _triton()
        if tri is not None and tri.supports(t):
            return tri
    return _thomas_torch


def tridiagonal_backend(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float64) -> str:
    """Name of the kernel ``solve_tridiagonal`` uses for tensors on ``device`` with ``dtype``.

    One of ``"c"`` (compiled CPU kernel), ``"triton"`` (CUDA kernel), ``"torch"`` (pure-torch sweep).
    """
    mod = _backend(torch.empty(0, device=device, dtype=dtype))
    return {_thomas_c: "c", _thomas_torch: "torch"}.get(mod, "triton")


_IS_WRAPPED = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)


def _is_wrapped(*ts: torch.Tensor | None) -> bool:
    """True if any tensor is a functorch wrapper (vmap/grad level): raw-pointer kernels must not see it."""
    f = _IS_WRAPPED
    return f is None or any(t is not None and f(t) for t in ts)


# --------------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------------
def _first_bad(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(torch.nonzero(~torch.isfinite(t))[0].tolist())


def _check_result(x: torch.Tensor, finite: bool | None, lower, diag, upper, rhs) -> None:
    """``finite`` comes free from the C kernel; otherwise one reduction on the solution. Only if it is
    non-finite do we look for the cause."""
    if finite or (finite is None and bool(torch.isfinite(x).all())):
        return
    parts = (("lower", lower, 1), ("diag", diag, 0), ("upper", upper, 0), ("rhs", rhs, 0))
    for name, full, shift in parts:
        # the ignored entries lower[..., 0] and upper[..., N-1] may hold anything
        t = full[..., 1:] if name == "lower" else full[..., :-1] if name == "upper" else full
        if t.numel() and not bool(torch.isfinite(t).all()):
            idx = list(_first_bad(t))
            idx[-1] += shift
            raise SolverError(
                f"solve_tridiagonal: {name} contains NaN/Inf (first at index {tuple(idx)}, shape "
                f"{tuple(full.shape)}). Fix the input that produced it."
            )
    idx = _first_bad(x)
    raise SolverError(
        "solve_tridiagonal: zero or near-zero pivot (solution is NaN/Inf) in the system at batch index "
        f"{idx[:-1]}, row {idx[-1]} (solution shape {tuple(x.shape)}). The Thomas algorithm does not "
        "pivot: each matrix must be diagonally dominant (|diag| >= |lower| + |upper|, strictly in one row) "
        "or an M-matrix, as implicit diffusion I + dt*D is for dt > 0, diffusivity >= 0 and layer "
        "thickness > 0. Check for zero/negative thicknesses or diffusivities, or pass check=False to skip."
    )


# --------------------------------------------------------------------------------------------------
# autograd.Function
# --------------------------------------------------------------------------------------------------
def _solve_plain(lower, diag, upper, rhs, check: bool, lay: _Layout | None = None) -> torch.Tensor:
    if lay is None:
        lay = _layout(lower.shape, diag.shape, upper.shape, rhs.shape)
    backend = _backend(rhs)
    if backend is _thomas_c and lay.identity and _dense_layout(lay, lower, diag, upper, rhs):
        # common case (no broadcasting to materialise): hand the memory straight to the kernel
        x = torch.empty(lay.full, dtype=rhs.dtype, device="cpu")
        finite = _thomas_c.solve_into(lay.P, lay.K, lay.N, lower, diag, upper, rhs, x)
    else:
        a, b, c = (lay.matrix_in(t) for t in (lower, diag, upper))
        d = lay.rhs_in(rhs)
        x, finite = backend.solve(a, b, c, d)
        x = lay.rhs_out(x)
    if check:
        _check_result(x, finite, lower, diag, upper, rhs)
    return x


def _dense_layout(lay: _Layout, lower, diag, upper, rhs) -> bool:
    pn = lay.P * lay.N
    return (
        lower.numel() == pn
        and diag.numel() == pn
        and upper.numel() == pn
        and rhs.numel() == pn * lay.K
        and lower.is_contiguous()
        and diag.is_contiguous()
        and upper.is_contiguous()
        and rhs.is_contiguous()
    )


def _adjoint_composable(lower, diag, upper, x, gx, needs):
    """Backward written with differentiable ops and the solve itself: used for double backward/functorch."""
    at, ct = _thomas_torch.transpose_diagonals(lower, upper)
    lam = _SolveTridiagonal.apply(at, diag, ct, gx, False)
    xm, xp = _thomas_torch.shifted(x)
    grads = [
        -(lam * xm) if needs[0] else None,
        -(lam * x) if needs[1] else None,
        -(lam * xp) if needs[2] else None,
        lam if needs[3] else None,
    ]
    return grads


def _adjoint_fast(lower, diag, upper, x, gx, needs):
    """Fused kernel: one adjoint sweep that also forms the matrix cotangents (no graph, no copies)."""
    lay = _layout(lower.shape, diag.shape, upper.shape, x.shape)
    a, b, c = (lay.matrix_in(t) for t in (lower, diag, upper))
    g = lay.rhs_in(gx)
    lam, ga, gb, gc = _backend(g).adjoint(a, b, c, lay.rhs_in(x), g, tuple(needs[:3]))
    out = [lay.matrix_out(t) if t is not None and n else None for t, n in zip((ga, gb, gc), needs)]
    return [*out, lay.rhs_out(lam) if needs[3] else None]


class _SolveTridiagonal(torch.autograd.Function):
    @staticmethod
    def forward(lower, diag, upper, rhs, check):  # type: ignore[override]
        return _solve_plain(lower, diag, upper, rhs, check)

    @staticmethod
    def setup_context(ctx, inputs, output):
        lower, diag, upper, rhs, _ = inputs
        # Only the matrix and the solution are kept: O(batch * N), nothing from inside the sweep.
        ctx.save_for_backward(lower, diag, upper, output)
        ctx.save_for_forward(lower, diag, upper, output)
        ctx.rhs_shape = rhs.shape

    @staticmethod
    def backward(ctx, gx):  # type: ignore[override]
        lower, diag, upper, x = ctx.saved_tensors
        needs = ctx.needs_input_grad[:4]
        if torch.is_grad_enabled() or _is_wrapped(lower, diag, upper, x, gx):
            grads = _adjoint_composable(lower, diag, upper, x, gx, needs)
        else:
            grads = _adjoint_fast(lower, diag, upper, x, gx, needs)
        shapes = (lower.shape, diag.shape, upper.shape, ctx.rhs_shape)
        out = [g.sum_to_size(s) if g is not None and g.shape != s else g for g, s in zip(grads, shapes)]
        return (*out, None)

    @staticmethod
    def jvp(ctx, d_lower, d_diag, d_upper, d_rhs, _):  # type: ignore[override]
        lower, diag, upper, x = ctx.saved_tensors
        xm, xp = _thomas_torch.shifted(x)
        r = d_rhs if d_rhs is not None else torch.zeros_like(x)
        for dt, xs in ((d_lower, xm), (d_diag, x), (d_upper, xp)):
            if dt is not None:
                r = r - dt * xs
        return _SolveTridiagonal.apply(lower, diag, upper, r, False)

    @staticmethod
    def vmap(info, in_dims, lower, diag, upper, rhs, check):
        args = (lower, diag, upper, rhs)
        nd = max(t.dim() - (bd is not None) for t, bd in zip(args, in_dims[:4]))

        def batch_first(t: torch.Tensor, bd: int | None) -> torch.Tensor:
            if bd is None:
                return t  # broadcasts against the leading batch dim of the others
            t = t.movedim(bd, 0)
            return t.reshape(t.shape[0], *([1] * (nd + 1 - t.dim())), *t.shape[1:])

        moved = [batch_first(t, bd) for t, bd in zip(args, in_dims[:4])]
        return _SolveTridiagonal.apply(*moved, check), 0


# --------------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------------
def _validate(args: tuple) -> tuple[tuple[torch.Tensor, ...], _Layout]:
    """Check shapes/dtypes/devices (cached per metadata) and return the promoted tensors and layout."""
    try:
        a, b, c, d = args
        key = (a.shape, b.shape, c.shape, d.shape, a.dtype, b.dtype, c.dtype, d.dtype)
        key += (a.device, b.device, c.device, d.device)
    except (AttributeError, ValueError):
        key = None
    hit = _validated.get(key) if key is not None else None
    if hit is None:
        dtype = _validate_meta(args)
        hit = (dtype, _layout(*(t.shape for t in args)))
        if key is not None and len(_validated) < 512:
            _validated[key] = hit
    dtype = hit[0]
    return tuple(t if t.dtype == dtype else t.to(dtype) for t in args), hit[1]


_validated: dict[tuple, tuple] = {}  # metadata already checked -> (promoted dtype, layout)


def _validate_meta(args: tuple) -> torch.dtype:
    for name, t in zip(_NAMES, args):
        if not isinstance(t, torch.Tensor):
            raise ShapeError(
                f"solve_tridiagonal: {name} must be a torch.Tensor of shape (..., N); got {type(t)}."
            )
        if t.dim() == 0:
            raise ShapeError(f"solve_tridiagonal: {name} is a scalar; it needs a last dimension of size N.")
    shapes = ", ".join(f"{n}={tuple(t.shape)}" for n, t in zip(_NAMES, args))
    n = args[1].shape[-1]
    if any(t.shape[-1] != n for t in args) or n == 0:
        raise ShapeError(
            f"solve_tridiagonal: the last dimension (system size N) must be the same and > 0 for all "
            f"arguments; got {shapes}. lower and upper have length N too: pad lower at index 0 and upper "
            f"at index N-1 (those entries are ignored)."
        )
    try:
        torch.broadcast_shapes(*(t.shape for t in args))
    except RuntimeError:
        raise ShapeError(
            f"solve_tridiagonal: leading (batch) dimensions do not broadcast: {shapes}. For K right-hand "
            f"sides sharing one matrix use rhs (..., K, N) with the diagonals (..., 1, N)."
        ) from None
    devices = {t.device for t in args}
    if len(devices) > 1:
        raise ConfigError(
            f"solve_tridiagonal: arguments are on different devices {sorted(map(str, devices))}."
        )
    dtype = reduce(torch.promote_types, (t.dtype for t in args))
    if not dtype.is_floating_point:
        raise ConfigError(
            "solve_tridiagonal: needs real floating-point tensors; got dtypes "
            f"{[str(t.dtype) for t in args]}."
        )
    return dtype


def solve_tridiagonal(
    lower: torch.Tensor, diag: torch.Tensor, upper: torch.Tensor, rhs: torch.Tensor, *, check: bool = True
) -> torch.Tensor:
    """Solve the batched tridiagonal systems ``A x = rhs`` (Thomas algorithm, no pivoting).

    Args:
        lower: sub-diagonal, ``(..., N)``; ``lower[..., i]`` multiplies ``x[..., i-1]``; ``lower[..., 0]``
            is ignored.
        diag: main diagonal, ``(..., N)``.
        upper: super-diagonal, ``(..., N)``; ``upper[..., i]`` multiplies ``x[..., i+1]``;
            ``upper[..., N-1]`` is ignored.
        rhs: right-hand side(s), ``(..., N)``. Dimensions along which the matrix is broadcast (size 1 or
            absent in all three diagonals) are extra right-hand sides sharing one factorisation, e.g.
            ``rhs (B, K, N)`` with diagonals ``(B, 1, N)``.
        check: if True (default) one ``isfinite`` reduction on the solution; a non-finite solution raises
            :class:`~pelagos.core.errors.SolverError` naming the non-finite input or the failing system.
            ``check=False`` skips it (no host sync on GPU).

    Returns:
        ``x`` with the broadcast shape of all four arguments, in their promoted floating dtype.
        Units: those of ``rhs`` divided by those of the matrix.

    The matrix must be diagonally dominant or an M-matrix (no pivoting). Gradients with respect to all
    four arguments come from one adjoint solve ``A^T lam = grad_x`` (implicit differentiation).
    """
    args, lay = _validate((lower, diag, upper, rhs))
    if _plain_call(args):  # nothing to differentiate: skip the autograd.Function machinery (~20 us)
        return _solve_plain(*args, bool(check), lay)
    return _SolveTridiagonal.apply(*args, bool(check))


def _plain_call(args: tuple[torch.Tensor, ...]) -> bool:
    """True when no autograd/functorch transform can see this call (so the Function can be skipped)."""
    a, b, c, d = args
    if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad or c.requires_grad or d.requires_grad):
        return False
    f = _IS_WRAPPED
    return forward_ad._current_level < 0 and f is not None and not (f(a) or f(b) or f(c) or f(d))

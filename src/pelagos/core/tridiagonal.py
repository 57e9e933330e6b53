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

Doors to the same kernels: eager calls on CPU (with or without grad) go straight to the custom operator
``torch.ops.pelagos.solve_tridiagonal``, registered in C++ (``_thomas_op.cpp``: CPU kernels, a C++
autograd node whose backward is the fused adjoint operator) when a C++ compiler is available; anything a
functorch transform or a forward-mode level can see goes through the composable ``_SolveTridiagonal``;
under ``torch.compile`` the call is the operator (fake-tensor rule and backward registered). Without the
C++ operator, the operator is registered from Python and eager reverse mode goes through a lean
old-style ``autograd.Function`` (``_FastSolve``: little Python, one fused adjoint kernel). See
docs/tridiagonal.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from math import prod
from types import ModuleType

import torch
from torch.autograd import forward_ad

from . import _thomas_c, _thomas_op, _thomas_torch
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
    # identity, no broadcasting to materialise (each diagonal has P*N elements, rhs P*K*N): contiguous
    # arguments can go to the kernel as they are
    direct: bool

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
    pn = P * full[-1]
    direct = identity and prod(sa) == prod(sb) == prod(sc) == pn and prod(sd) == pn * K
    return _Layout(full, matrix, perm, inv_perm, P, K, full[-1], identity, direct)


# --------------------------------------------------------------------------------------------------
# Backend choice
# --------------------------------------------------------------------------------------------------
def _triton() -> ModuleType | None:
    try:
        from . import _thomas_triton
    except Exception:  # triton missing or broken: never break CPU/CI
        return None
    return _thomas_triton if _thomas_triton.available() else None


_ENV = "PELAGOS_TRIDIAGONAL_BACKEND"
# os.environ.get costs several Python frames per call; its underlying dict (kept in sync by os.environ,
# monkeypatch.setenv included) answers the common "unset" case in one lookup
_ENV_DATA = getattr(os.environ, "_data", None)
_ENV_KEY = os.environ.encodekey(_ENV) if _ENV_DATA is not None else None


def _torch_forced() -> bool:
    if _ENV_DATA is not None and _ENV_KEY not in _ENV_DATA:
        return False
    return os.environ.get(_ENV, "auto").lower() in ("torch", "python")


def _backend(t: torch.Tensor) -> ModuleType:
    if _torch_forced():
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
_PLAIN = (torch.Tensor, torch.nn.Parameter)  # tensor types with no __torch_function__ of their own
_functorch_active = getattr(torch._C, "_are_functorch_transforms_active", lambda: True)


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
# Kernel calls in the canonical layout
# --------------------------------------------------------------------------------------------------
def _contiguous(*ts: torch.Tensor) -> bool:
    return all(t.is_contiguous() for t in ts)


def _forward(lay: _Layout, backend: ModuleType, lower, diag, upper, rhs, check: bool, want_piv: bool = False):
    """x = A^-1 rhs in the full broadcast shape, and (compiled kernel only, if ``want_piv``) the
    reciprocal pivots (P, N) of the factorisation for the adjoint."""
    piv = None
    if backend is _thomas_c:
        if want_piv:
            piv = torch.empty((lay.P, lay.N), dtype=rhs.dtype, device="cpu")
        if lay.direct and _contiguous(lower, diag, upper, rhs):
            # common case (no broadcasting to materialise): hand the memory straight to the kernel
            x = torch.empty_like(rhs) if rhs.shape == lay.full else torch.empty(lay.full, dtype=rhs.dtype)
            finite = _thomas_c.solve_into(lay.P, lay.K, lay.N, lower, diag, upper, rhs, x, piv)
        else:
            a, b, c = (lay.matrix_in(t) for t in (lower, diag, upper))
            d = lay.rhs_in(rhs)
            x = torch.empty_like(d)
            finite = _thomas_c.solve_into(lay.P, lay.K, lay.N, a, b, c, d, x, piv)
            x = lay.rhs_out(x)
    else:
        a, b, c = (lay.matrix_in(t) for t in (lower, diag, upper))
        x, finite = backend.solve(a, b, c, lay.rhs_in(rhs))
        x = lay.rhs_out(x)
    if check:
        _check_result(x, finite, lower, diag, upper, rhs)
    return x, piv


def _solve_plain(lower, diag, upper, rhs, check: bool, lay: _Layout | None = None) -> torch.Tensor:
    if lay is None:
        lay = _layout(lower.shape, diag.shape, upper.shape, rhs.shape)
    return _forward(lay, _backend(rhs), lower, diag, upper, rhs, check)[0]


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


def _adjoint_fast(lower, diag, upper, x, gx, needs, lay: _Layout | None = None, piv=None):
    """Fused kernel: one adjoint sweep that also forms the matrix cotangents (no graph). With the
    compiled kernel and ``piv`` (reciprocal pivots saved by the forward) nothing is refactorised.
    Returns the four cotangents in the broadcast shapes (matrix shape / full shape), not yet summed."""
    if lay is None:
        lay = _layout(lower.shape, diag.shape, upper.shape, x.shape)
    backend = _backend(gx)
    P, K, N = lay.P, lay.K, lay.N
    if backend is _thomas_c:
        if lay.direct and _contiguous(lower, diag, upper, x, gx):
            a, b, c, xs, g = lower, diag, upper, x, gx
        else:
            a, b, c = (lay.matrix_in(t) for t in (lower, diag, upper))
            xs, g = lay.rhs_in(x), lay.rhs_in(gx)
        lam = torch.empty_like(g)
        ga, gb, gc = (torch.empty_like(b) if n else None for n in needs[:3])  # (P, N) elements
        _thomas_c.adjoint_into(P, K, N, a, None if piv is not None else b, c, piv, xs, g, lam, ga, gb, gc)
    else:
        a, b, c = (lay.matrix_in(t) for t in (lower, diag, upper))
        lam, ga, gb, gc = backend.adjoint(a, b, c, lay.rhs_in(x), lay.rhs_in(gx), tuple(needs[:3]))
    out = [t.view(lay.matrix) if t is not None and n else None for t, n in zip((ga, gb, gc), needs)]
    return [*out, lay.rhs_out(lam.view(P, K, N)) if needs[3] else None]


def _sum_to(grads, shapes):
    return [g.sum_to_size(s) if g is not None and g.shape != s else g for g, s in zip(grads, shapes)]


# --------------------------------------------------------------------------------------------------
# autograd.Functions
# --------------------------------------------------------------------------------------------------
# Keep the reciprocal pivots of the forward for the backward (no refactorisation there)? Measured
# (benchmarks/tridiagonal.py, N = 64, batch 1 to 1e4): the saved divisions pay just for the extra array
# the forward writes, no clear gain either way; so off: the graph keeps only inputs and solution. The
# kernels support both (thomas_solve stores pivots when given a pointer, thomas_adjoint uses them).
_SAVE_PIVOTS = False


class _FastSolve(torch.autograd.Function):
    """Eager reverse mode with little Python: the solve keeps its reciprocal pivots for the backward,
    which is then one fused adjoint sweep (transposed solve and matrix cotangents, no refactorisation).
    Used whenever no functorch transform or forward-mode level can see the call; double backward
    (``create_graph=True``) goes through the composable backward."""

    @staticmethod
    def forward(ctx, lower, diag, upper, rhs, check, lay, backend):  # type: ignore[override]
        if backend is _thomas_c and lay.direct and _contiguous(lower, diag, upper, rhs):
            # the common case, inlined: the arguments go to the kernel as they are
            x = torch.empty_like(rhs) if rhs.shape == lay.full else torch.empty(lay.full, dtype=rhs.dtype)
            piv = torch.empty_like(diag) if _SAVE_PIVOTS else None  # reciprocal pivots (P*N elements)
            finite = _thomas_c.solve_into(lay.P, lay.K, lay.N, lower, diag, upper, rhs, x, piv)
            if check and not finite:
                _check_result(x, finite, lower, diag, upper, rhs)
            ctx.direct = True
        else:
            x, piv = _forward(
                lay, backend, lower, diag, upper, rhs, check, _SAVE_PIVOTS and backend is _thomas_c
            )
            ctx.direct = False
        ctx.save_for_backward(lower, diag, upper, x, piv)
        ctx.lay, ctx.rhs_shape = lay, rhs.shape
        return x

    @staticmethod
    def backward(ctx, gx):  # type: ignore[override]
        lower, diag, upper, x, piv = ctx.saved_tensors
        needs = ctx.needs_input_grad
        if torch.is_grad_enabled():  # create_graph: differentiable backward
            grads = _adjoint_composable(lower, diag, upper, x, gx, needs)
        elif ctx.direct and gx.is_contiguous():
            # fused sweep on the saved memory; each cotangent is allocated in its argument's shape
            lay = ctx.lay
            lam = torch.empty_like(gx)
            ga = torch.empty_like(lower) if needs[0] else None
            gb = torch.empty_like(diag) if needs[1] else None
            gc = torch.empty_like(upper) if needs[2] else None
            b = diag if piv is None else None
            _thomas_c.adjoint_into(lay.P, lay.K, lay.N, lower, b, upper, piv, x, gx, lam, ga, gb, gc)
            if not needs[3]:
                return ga, gb, gc, None, None, None, None
            rs = ctx.rhs_shape
            return ga, gb, gc, (lam if lam.shape == rs else lam.view(rs)), None, None, None
        else:
            grads = _adjoint_fast(lower, diag, upper, x, gx, needs, ctx.lay, piv)
        shapes = (lower.shape, diag.shape, upper.shape, ctx.rhs_shape)
        return (*_sum_to(grads, shapes), None, None, None)


# ``Function.apply`` without its Python wrapper (which only unwraps dead functorch wrappers: calls that
# could involve functorch never come here). Saves a few microseconds per call at small batch.
try:
    _fast_apply = super(torch.autograd.Function, _FastSolve).apply
except AttributeError:  # pragma: no cover - other torch versions
    _fast_apply = _FastSolve.apply


class _SolveTridiagonal(torch.autograd.Function):
    """The composable form (setup_context style): torch.func transforms (vmap, grad, jvp, jacrev),
    forward-mode dual numbers and double backward."""

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
        return (*_sum_to(grads, (lower.shape, diag.shape, upper.shape, ctx.rhs_shape)), None)

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
# The custom operator torch.ops.pelagos.solve_tridiagonal: what torch.compile sees (fake-tensor rule and
# autograd formula registered). Registered in C++ (_thomas_op.cpp: CPU kernels and the autograd kernel,
# built and loaded by _thomas_op.load) when a C++ compiler is available, else from Python (below). The
# Python kernels serve in both cases for what the C kernels do not cover (CUDA, other dtypes, the forced
# torch sweep), and _py_report raises pelagos' errors for the C++ kernels.
# --------------------------------------------------------------------------------------------------
def _py_solve(
    lower: torch.Tensor, diag: torch.Tensor, upper: torch.Tensor, rhs: torch.Tensor, check: bool
) -> torch.Tensor:
    """``solve_tridiagonal`` as an opaque operator (same kernels); the output is contiguous."""
    (lower, diag, upper, rhs), lay = _validate((lower, diag, upper, rhs))
    return _forward(lay, _backend(rhs), lower, diag, upper, rhs, check)[0].contiguous()


def _py_adjoint(
    lower: torch.Tensor,
    diag: torch.Tensor,
    upper: torch.Tensor,
    x: torch.Tensor,
    gx: torch.Tensor,
    need_lower: bool,
    need_diag: bool,
    need_upper: bool,
    need_rhs: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cotangents of (lower, diag, upper) in the broadcast matrix shape and of rhs in the full shape
    (contiguous; an empty tensor where not needed), from one fused adjoint sweep."""
    needs = (need_lower, need_diag, need_upper, need_rhs)
    if not (lower.dtype == diag.dtype == upper.dtype == x.dtype == gx.dtype):
        dtype = _promoted(lower, diag, upper, x, gx)
        lower, diag, upper, x, gx = (t.to(dtype) for t in (lower, diag, upper, x, gx))
    grads = _adjoint_fast(lower, diag, upper, x, gx, needs)
    a, b, c, d = (g.contiguous() if g is not None else x.new_empty(0) for g in grads)
    return a, b, c, d


def _py_report(lower, diag, upper, rhs, x) -> None:
    """Raise the error the Python path raises (ShapeError/ConfigError for bad arguments, SolverError
    naming the non-finite input or the failing system) for a failure found by the C++ kernel."""
    _validate_meta((lower, diag, upper, rhs))
    if x is not None:
        _check_result(x, False, lower, diag, upper, rhs)
    raise SolverError(
        "solve_tridiagonal: the C++ operator reported a failure that the Python checks do not reproduce "
        f"(shapes {_shapes((lower, diag, upper, rhs))}); set PELAGOS_TRIDIAGONAL_OP=python and retry."
    )


def _py_backward_legacy(
    lower: torch.Tensor,
    diag: torch.Tensor,
    upper: torch.Tensor,
    x: torch.Tensor,
    gx: torch.Tensor,
    needs: list[bool],
) -> list[torch.Tensor]:
    """The backward operator of earlier versions (``pelagos::solve_tridiagonal_backward``, a list of
    flags in, a list of tensors out): kept so that compiled backward graphs in torch's on-disk caches
    (which do not notice a change of an operator's autograd formula) still run. New graphs call
    ``pelagos::solve_tridiagonal_adjoint`` (tensors in and out only: Inductor's C++ wrapper calls it
    through the dispatcher without Python)."""
    return list(torch.ops.pelagos.solve_tridiagonal_adjoint(lower, diag, upper, x, gx, *needs))


def _op_solve_fake(lower, diag, upper, rhs, check):
    shape = torch.broadcast_shapes(lower.shape, diag.shape, upper.shape, rhs.shape)
    return rhs.new_empty(shape, dtype=_promoted(lower, diag, upper, rhs))


def _op_adjoint_fake(lower, diag, upper, x, gx, need_lower, need_diag, need_upper, need_rhs):
    m = torch.broadcast_shapes(lower.shape, diag.shape, upper.shape)
    m = (1,) * (x.dim() - len(m)) + tuple(m)
    needs = (need_lower, need_diag, need_upper, need_rhs)
    a, b, c, d = (x.new_empty(s if n else (0,)) for s, n in zip((m, m, m, x.shape), needs))
    return a, b, c, d


def _op_backward_legacy_fake(lower, diag, upper, x, gx, needs):
    return list(_op_adjoint_fake(lower, diag, upper, x, gx, *needs))


_OP_LIBRARY = _thomas_op.load()
if _OP_LIBRARY is not None:
    _lib = torch.library.Library("pelagos", "FRAGMENT")  # kept alive: the registrations live with it
    for _name, _fn in (
        ("solve_tridiagonal", _py_solve),  # devices other than CPU (the C++ kernel takes the CPU)
        ("solve_tridiagonal_adjoint", _py_adjoint),
        ("solve_tridiagonal_backward", _py_backward_legacy),
        ("_solve_tridiagonal_python", _py_solve),  # called by the C++ kernels for dtypes they lack
        ("_solve_tridiagonal_adjoint_python", _py_adjoint),
        ("_solve_tridiagonal_error", _py_report),
    ):
        _lib.impl(_name, _fn, "CompositeExplicitAutograd")
    torch.library.register_fake("pelagos::solve_tridiagonal", _op_solve_fake, lib=_lib)
    torch.library.register_fake("pelagos::solve_tridiagonal_adjoint", _op_adjoint_fake, lib=_lib)
    torch.library.register_fake("pelagos::solve_tridiagonal_backward", _op_backward_legacy_fake, lib=_lib)
else:
    _op_solve = torch.library.custom_op("pelagos::solve_tridiagonal", _py_solve, mutates_args=())
    _op_solve.register_fake(_op_solve_fake)
    _op_adjoint = torch.library.custom_op("pelagos::solve_tridiagonal_adjoint", _py_adjoint, mutates_args=())
    _op_adjoint.register_fake(_op_adjoint_fake)
    _op_legacy = torch.library.custom_op(
        "pelagos::solve_tridiagonal_backward", _py_backward_legacy, mutates_args=()
    )
    _op_legacy.register_fake(_op_backward_legacy_fake)

    def _op_setup(ctx, inputs, output):
        lower, diag, upper, rhs, _ = inputs
        ctx.save_for_backward(lower, diag, upper, output)
        ctx.shapes = (lower.shape, diag.shape, upper.shape, rhs.shape)

    def _op_backward(ctx, gx):
        lower, diag, upper, x = ctx.saved_tensors
        needs = [bool(n) for n in ctx.needs_input_grad[:4]]
        grads = torch.ops.pelagos.solve_tridiagonal_adjoint(lower, diag, upper, x, gx, *needs)
        grads = [g if n else None for g, n in zip(grads, needs)]
        return (*_sum_to(grads, ctx.shapes), None)

    _op_solve.register_autograd(_op_backward, setup_context=_op_setup)

# The C++ entry of the operator's default overload (what OpOverload.__call__ calls, minus its frame)
_OP_CALL = torch.ops.pelagos.solve_tridiagonal.default._op


def op_registration() -> str:
    """How ``torch.ops.pelagos.solve_tridiagonal`` is registered in this process: ``"c++"`` (the
    compiled operator library) or ``"python"`` (``torch.library`` in Python; see
    :func:`pelagos.core._thomas_op.load` for why)."""
    return "c++" if _OP_LIBRARY is not None else "python"


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
    if a.dtype is dtype and b.dtype is dtype and c.dtype is dtype and d.dtype is dtype:
        return args, hit[1]
    return tuple(t if t.dtype == dtype else t.to(dtype) for t in args), hit[1]


_validated: dict[tuple, tuple] = {}  # metadata already checked -> (promoted dtype, layout)


def _promoted(*args: torch.Tensor) -> torch.dtype:
    dtype = args[0].dtype
    for t in args[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _validate_meta(args: tuple) -> torch.dtype:
    for name, t in zip(_NAMES, args):
        if not isinstance(t, torch.Tensor):
            raise ShapeError(
                f"solve_tridiagonal: {name} must be a torch.Tensor of shape (..., N); got {type(t)}."
            )
        if t.dim() == 0:
            raise ShapeError(f"solve_tridiagonal: {name} is a scalar; it needs a last dimension of size N.")
    n = args[1].shape[-1]
    if any(t.shape[-1] != n for t in args) or n == 0:
        raise ShapeError(
            f"solve_tridiagonal: the last dimension (system size N) must be the same and > 0 for all "
            f"arguments; got {_shapes(args)}. lower and upper have length N too: pad lower at index 0 "
            f"and upper at index N-1 (those entries are ignored)."
        )
    try:
        torch.broadcast_shapes(*(t.shape for t in args))
    except RuntimeError:
        raise ShapeError(
            f"solve_tridiagonal: leading (batch) dimensions do not broadcast: {_shapes(args)}. For K "
            f"right-hand sides sharing one matrix use rhs (..., K, N) with the diagonals (..., 1, N)."
        ) from None
    dev = args[0].device
    if any(t.device != dev for t in args):
        devices = {str(t.device) for t in args}
        raise ConfigError(f"solve_tridiagonal: arguments are on different devices {sorted(devices)}.")
    dtype = _promoted(*args)
    if not dtype.is_floating_point:
        raise ConfigError(
            "solve_tridiagonal: needs real floating-point tensors; got dtypes "
            f"{[str(t.dtype) for t in args]}."
        )
    return dtype


def _shapes(args: tuple) -> str:
    return ", ".join(f"{n}={tuple(t.shape)}" for n, t in zip(_NAMES, args))


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
        check: if True (default) a non-finite solution raises
            :class:`~pelagos.core.errors.SolverError` naming the non-finite input or the failing system
            (free with the compiled CPU kernel; one ``isfinite`` reduction otherwise).
            ``check=False`` skips it (no host sync on GPU).

    Returns:
        ``x`` with the broadcast shape of all four arguments, in their promoted floating dtype.
        Units: those of ``rhs`` divided by those of the matrix.

    The matrix must be diagonally dominant or an M-matrix (no pivoting). Gradients with respect to all
    four arguments come from one adjoint solve ``A^T lam = grad_x`` (implicit differentiation). Under
    ``torch.compile`` the call becomes the custom operator ``torch.ops.pelagos.solve_tridiagonal``
    (fake-tensor rule and backward registered), so it compiles with ``fullgraph=True``.
    """
    if torch.compiler.is_compiling():
        dtype = _validate_meta((lower, diag, upper, rhs))
        args = [t if t.dtype == dtype else t.to(dtype) for t in (lower, diag, upper, rhs)]
        return torch.ops.pelagos.solve_tridiagonal(*args, bool(check))
    if (
        _OP_LIBRARY is not None
        and type(rhs) in _PLAIN
        and type(lower) in _PLAIN
        and type(diag) in _PLAIN
        and type(upper) in _PLAIN
        and rhs.is_cpu
        and forward_ad._current_level < 0
        and not _functorch_active()
    ):
        # the C++ operator (it validates, promotes and reports errors as below): its CPU kernel and, when
        # something requires grad, its C++ autograd node; no Python between here and the kernel
        return _OP_CALL(lower, diag, upper, rhs, bool(check))
    (a, b, c, d), lay = _validate((lower, diag, upper, rhs))
    grad = torch.is_grad_enabled() and (
        a.requires_grad or b.requires_grad or c.requires_grad or d.requires_grad
    )
    f = _IS_WRAPPED
    if forward_ad._current_level >= 0 or f is None or f(a) or f(b) or f(c) or f(d):
        # a functorch transform or a forward-mode level may see this call: the composable Function
        return _SolveTridiagonal.apply(a, b, c, d, bool(check))
    backend = _backend(d)
    if grad:  # plain reverse mode: the lean Function (one fused adjoint sweep in its backward)
        return _fast_apply(a, b, c, d, bool(check), lay, backend)
    return _forward(lay, backend, a, b, c, d, bool(check))[0]  # nothing to differentiate

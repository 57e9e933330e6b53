"""Conjugate-gradient solve of ``A x = b`` for a symmetric positive definite operator; implicit gradients.

The ocean model's elliptic problems (barotropic streamfunction, pressure, QG inversion on irregular domains)
give a sparse SPD operator that is only ever *applied*: ``A(x)`` is a Python function (a stencil, a
``torch.sparse`` matmul, a closure over a learnable diffusivity field...). :func:`solve_cg` solves it by
(preconditioned) conjugate gradients, and differentiates the *solution* rather than the iterations:

- forward: ``x* ≈ A⁻¹ b`` by CG, run without autograd/forward-mode tracking (no graph of the iterations);
- reverse mode: for a cotangent ``ḡ_x``, one more CG solve gives ``λ = A⁻¹ ḡ_x`` (``A`` symmetric so
  ``A⁻ᵀ = A⁻¹``); then ``ḡ_b = λ`` and every tensor ``θ`` that ``A`` depends on receives
  ``ḡ_θ = −λᵀ (∂A/∂θ) x*``;
- forward mode (``torch.func.jvp``): ``ẋ = A⁻¹ (ḃ − (∂A/∂θ · θ̇) x*)``, again one CG solve.

How: the output is written ``x = x* + S(b − A(x*))`` where ``x*`` is detached and ``S`` is a linear autograd
Function whose *value* is 0 (the residual of a converged solve, so the value of ``x`` is exactly the CG
iterate ``x*``) and whose derivative is ``A⁻¹`` (backward and jvp are CG solves). Autograd differentiates
``b − A(x*)`` by itself, so **gradients reach whatever ``A`` closes over** — no need to list the operator's
parameters. The gradients are those of the exact solution ``A⁻¹ b``, accurate to about the solver
tolerance ``rtol``.

Second derivatives: by default the adjoint solution is a constant in the graph, so Hessians are
incomplete. ``second_order=True`` adds one more residual correction ``x ← x + S₂(b − A(x))`` whose ``S₂``
has *differentiable* backward/jvp solves; then ``d²x = −2A⁻¹ dA dx`` exactly (a backward costs two CG
solves). Tested with autograd ``create_graph=True``, ``torch.func.grad∘grad`` and ``jacrev∘jacrev``.
Forward-over-reverse compositions of ``torch.func`` (``jvp∘grad``, ``jacfwd∘jacrev``, ``torch.func.hessian``)
fail inside PyTorch with a functorch level assertion, because the operator closes over tensors of the
inner transform: use ``jacrev∘jacrev`` or autograd instead. The forward solve applies ``A`` once more than
the iterations (the residual at ``x0``) plus once for the differentiable residual at ``x*``.

Batches: ``batch_dims`` leading dims index independent systems (each has its own CG scalars and its own
convergence test); ``A`` maps a tensor of the shape of ``b`` to the same shape. Under ``torch.func.vmap``
the solver cannot stop early on data (no data-dependent Python control flow there): it runs ``max_iter``
iterations with converged systems frozen, and cannot raise on non-convergence — prefer ``batch_dims`` for
batching, and set ``max_iter`` to what you need.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator

import torch
import torch.autograd.forward_ad as fwAD

from .errors import ConfigError, ShapeError, SolverError

Operator = Callable[[torch.Tensor], torch.Tensor]

__all__ = ["CGInfo", "solve_cg"]


@dataclasses.dataclass
class CGInfo:
    """Diagnostics of the forward CG solve.

    Attributes:
        iterations: CG iterations done (the maximum over the batch).
        residual: final ``‖b − A x‖₂`` per system (shape = the batch shape).
        converged: per-system flag ``residual ≤ max(rtol‖b‖, atol)``; ``None`` under ``vmap``.
    """

    iterations: int
    residual: torch.Tensor
    converged: torch.Tensor | None


@dataclasses.dataclass(frozen=True)
class _Options:
    rtol: float
    atol: float
    max_iter: int | None
    batch_dims: int
    check: bool
    M: Operator | None


@contextlib.contextmanager
def _untracked() -> Iterator[None]:
    """No autograd graph and no forward-mode tangents (``no_grad`` alone keeps jvp tangents)."""
    prev = torch._C._is_fwd_grad_enabled()
    torch._C._set_fwd_grad_enabled(False)
    try:
        with torch.no_grad():
            yield
    finally:
        torch._C._set_fwd_grad_enabled(prev)


def _data_bool(t: torch.Tensor) -> bool | None:
    """``bool(t)``, or ``None`` under vmap where a batched tensor has no single truth value."""
    try:
        return bool(t)
    except RuntimeError:
        return None


def _cg(A: Operator, b: torch.Tensor, x0: torch.Tensor | None, opt: _Options) -> tuple[torch.Tensor, CGInfo]:
    """Preconditioned CG, batched over the leading ``opt.batch_dims`` dims; untracked."""
    sys_dims = tuple(range(opt.batch_dims, b.ndim))
    n = math.prod(b.shape[opt.batch_dims :]) if b.ndim > opt.batch_dims else 1
    max_iter = opt.max_iter if opt.max_iter is not None else max(2 * n, 20)

    def dot(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return (u * v).sum(dim=sys_dims, keepdim=True) if sys_dims else u * v

    def precond(r: torch.Tensor) -> torch.Tensor:
        return opt.M(r) if opt.M is not None else r

    x = torch.zeros_like(b) if x0 is None else x0.detach().clone()
    Ax = A(x)
    if Ax.shape != b.shape:
        raise ShapeError(
            f"solve_cg: A(x) returned shape {tuple(Ax.shape)} for x of shape {tuple(b.shape)}; "
            "the operator must map a tensor of the shape of b to the same shape"
        )
    r = b - Ax
    tol = torch.clamp(opt.rtol * torch.sqrt(dot(b, b)), min=opt.atol)
    z = precond(r)
    p = z
    rz = dot(r, z)
    rr = dot(r, r)
    active = torch.sqrt(rr) > tol
    it = 0
    while it < max_iter:
        done = _data_bool(~active.any())
        if done:
            break
        Ap = A(p)
        pAp = dot(p, Ap)
        bad = active & ~(pAp > 0)
        if _data_bool(bad.any()):
            raise SolverError(
                f"solve_cg: the operator is not positive definite (pᵀAp = {float(pAp[bad].min()):.3g} ≤ 0 at "
                f"iteration {it}); CG needs a symmetric positive definite A — check its sign convention "
                "(e.g. solve with −∇² rather than ∇²) and its boundary conditions"
            )
        alpha = torch.where(
            active, rz / torch.where(pAp > 0, pAp, torch.ones_like(pAp)), torch.zeros_like(pAp)
        )
        x = x + alpha * p
        r = r - alpha * Ap
        rr = dot(r, r)
        active = active & (torch.sqrt(rr) > tol)
        z = precond(r)
        rz_new = dot(r, z)
        beta = torch.where(
            active, rz_new / torch.where(rz != 0, rz, torch.ones_like(rz)), torch.zeros_like(rz)
        )
        p = torch.where(active, z + beta * p, torch.zeros_like(p))
        rz = rz_new
        it += 1
    res = torch.sqrt(rr)
    conv = res <= tol
    conv_all = _data_bool(conv.all())
    squeeze = (lambda t: t.reshape(b.shape[: opt.batch_dims])) if sys_dims else (lambda t: t)
    info = CGInfo(iterations=it, residual=squeeze(res), converged=None if conv_all is None else squeeze(conv))
    if opt.check and conv_all is False:
        worst = float((res / tol).max())
        raise SolverError(
            f"solve_cg: no convergence in {it} iterations (worst residual {worst:.3g} × the tolerance "
            f"max(rtol‖b‖, atol) with rtol={opt.rtol:g}, atol={opt.atol:g}); increase max_iter, loosen rtol, "
            "or pass a preconditioner M"
        )
    return x, info


class _InverseOfResidual(torch.autograd.Function):
    """Linear map ``r ↦ A⁻¹ r`` whose *value* is taken as 0 (``r`` is the residual of a converged solve)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(r: torch.Tensor, A: Operator, opt: _Options) -> torch.Tensor:
        return torch.zeros_like(r)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        _, ctx.A, ctx.opt = inputs

    @staticmethod
    def backward(ctx, grad_x: torch.Tensor):
        # First derivatives only: λ is computed without a graph even under create_graph=True.
        with _untracked():
            lam, _ = _cg(ctx.A, grad_x, None, ctx.opt)  # A symmetric: A⁻ᵀ ḡ = A⁻¹ ḡ
        return lam, None, None

    @staticmethod
    def jvp(ctx, r_dot: torch.Tensor, _A_dot, _opt_dot) -> torch.Tensor:
        with _untracked():
            x_dot, _ = _cg(ctx.A, r_dot, None, ctx.opt)
        return x_dot


class _DifferentiableInverseOfResidual(torch.autograd.Function):
    """As :class:`_InverseOfResidual`, but backward and jvp are differentiable solves (second order)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(r: torch.Tensor, A: Operator, opt: _Options) -> torch.Tensor:
        return torch.zeros_like(r)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        _, ctx.A, ctx.opt = inputs

    @staticmethod
    def backward(ctx, grad_x: torch.Tensor):
        return _solve_first_order(ctx.A, grad_x, ctx.opt), None, None

    @staticmethod
    def jvp(ctx, r_dot: torch.Tensor, _A_dot, _opt_dot) -> torch.Tensor:
        return _solve_first_order(ctx.A, r_dot, ctx.opt)


def _solve_first_order(A: Operator, b: torch.Tensor, opt: _Options) -> torch.Tensor:
    """A⁻¹ b with exact first derivatives (w.r.t. b and what A closes over)."""
    with _untracked():
        x_star, _ = _cg(A, b.detach(), None, opt)
    x_star = x_star.detach()
    if not _tracking_active():
        return x_star
    return x_star + _InverseOfResidual.apply(b - A(x_star), A, opt)


def _tracking_active() -> bool:
    return (
        torch.is_grad_enabled()
        or torch._C._are_functorch_transforms_active()
        or getattr(fwAD, "_current_level", -1) >= 0
    )


def solve_cg(
    A: Operator,
    b: torch.Tensor,
    *,
    M: Operator | None = None,
    x0: torch.Tensor | None = None,
    rtol: float = 1e-10,
    atol: float = 0.0,
    max_iter: int | None = None,
    batch_dims: int = 0,
    check: bool = True,
    return_info: bool = False,
    second_order: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, CGInfo]:
    """Solve ``A(x) = b`` for a symmetric positive definite linear operator ``A`` by conjugate gradients.

    Args:
        A: linear SPD operator, ``A(x)`` with ``x`` of the shape of ``b``; may close over tensors that need
            gradients (they receive ``−λᵀ(∂A/∂θ)x``, see the module docstring). Must be linear in ``x``
            and symmetric positive definite (not checked beyond ``pᵀAp > 0`` along the CG directions).
        b: right-hand side, shape ``(*batch, *system)`` with ``len(batch) == batch_dims``.
        M: preconditioner, an SPD approximation of ``A⁻¹`` (e.g. Jacobi ``lambda r: r / diag``); used in the
            forward and the adjoint solves.
        x0: initial guess for the forward solve (not differentiated; the solution does not depend on it).
        rtol, atol: stop when ``‖b − A x‖₂ ≤ max(rtol·‖b‖₂, atol)`` per system.
        max_iter: iteration cap (default ``max(2n, 20)``, ``n`` = unknowns per system).
        batch_dims: number of leading dims that index independent systems.
        check: raise :class:`SolverError` if a system has not converged after ``max_iter`` iterations
            (not possible under ``torch.func.vmap``).
        return_info: also return a :class:`CGInfo`.
        second_order: make second derivatives exact too (Hessians, ``create_graph=True``, forward-over-
            reverse): one more differentiable residual correction, so a backward costs two CG solves.

    Returns:
        ``x`` (shape of ``b``), or ``(x, info)``.

    Raises:
        SolverError: no convergence (with ``check``), or ``A`` found not positive definite.
        ShapeError: ``A(x)`` does not have the shape of ``x``.
    """
    if not torch.is_tensor(b) or not b.is_floating_point():
        raise ShapeError(f"solve_cg: b must be a floating-point tensor; got {type(b).__name__}")
    if isinstance(batch_dims, bool) or not isinstance(batch_dims, int) or not 0 <= batch_dims <= b.ndim:
        raise ConfigError(f"solve_cg: batch_dims must be an int in [0, b.ndim={b.ndim}]; got {batch_dims!r}")
    if not (rtol >= 0 and atol >= 0) or (rtol == 0 and atol == 0):
        raise ConfigError(f"solve_cg: need rtol ≥ 0, atol ≥ 0, not both 0; got rtol={rtol!r}, atol={atol!r}")
    if x0 is not None and x0.shape != b.shape:
        raise ShapeError(
            f"solve_cg: x0 has shape {tuple(x0.shape)}, b has shape {tuple(b.shape)}; they must match"
        )
    opt = _Options(float(rtol), float(atol), max_iter, batch_dims, check, M)
    with _untracked():
        x_star, info = _cg(A, b.detach(), x0, opt)
    x_star = x_star.detach()
    if _tracking_active():
        # value: exactly x*; derivative: A⁻¹ (db − dA x*), to b and to everything A closes over
        x = x_star + _InverseOfResidual.apply(b - A(x_star), A, opt)
        if second_order:
            # x1 = x has exact first derivatives; one more correction x1 + A⁻¹(b − A x1) whose A⁻¹ is itself
            # differentiable gives d²x = −2 A⁻¹ dA dx (the d²x1 terms cancel), i.e. exact second derivatives
            x = x + _DifferentiableInverseOfResidual.apply(b - A(x), A, opt)
    else:
        x = x_star
    return (x, info) if return_info else x

"""Laplace approximation at the optimum: posterior ≈ N(z*, H⁻¹), H = ∇²J(z*) in the control space.

The control space is the unconstrained (log/logit) space of the parameters plus the whitened state increment,
so the Gaussian lives where the priors are Gaussian. Three ways to get H⁻¹ (or the block of it we need):

- ``"hessian"``: full Hessian by double autograd (small controls);
- ``"gauss-newton"``: JᵀJ from the Jacobian of the whitened residuals (drops second-derivative model terms;
  always positive semi-definite);
- ``"cg"``: Hessian-vector products (reverse-over-reverse) and conjugate gradients
  (:func:`pelagos.core.solve_cg`), one solve per wanted entry — for large controls (e.g. initial state +
  parameters) when only the parameter block is needed. A solve that does not converge (or meets negative
  curvature) raises :class:`~pelagos.core.errors.SolverError`, as the other two methods do when H is not
  positive definite: a covariance from an unconverged solve would be silently wrong.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..core._torch_quirks import load_jvp_decompositions
from ..core.errors import ConfigError, SolverError, check_choice
from ..core.linsolve import solve_cg


def hessian(cost: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor) -> torch.Tensor:
    """Full Hessian ∇²J(z), symmetrised."""
    H = torch.autograd.functional.hessian(cost, z.detach())
    return 0.5 * (H + H.T)


def hvp(cost: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Hessian-vector product ∇²J(z) v by differentiating the gradient."""
    zz = z.detach().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(cost(zz), zz, create_graph=True)
        (Hv,) = torch.autograd.grad(g, zz, grad_outputs=v)
    return Hv.detach()


def conjugate_gradient(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    *,
    tol: float = 1e-10,
    max_iter: int = 500,
) -> torch.Tensor:
    """Solve A x = b for SPD A given by ``matvec``: :func:`pelagos.core.solve_cg` (kept for this name).

    Raises:
        SolverError: negative curvature (A not positive definite), or no convergence to ``‖b − A x‖ ≤ tol‖b‖``
            within ``max_iter`` iterations.
    """
    # the matvec may differentiate inside (Hessian-vector products); no graph of the solve
    with torch.no_grad():
        return solve_cg(matvec, b.detach(), rtol=tol, max_iter=max_iter)


def laplace_covariance(
    cost: Callable[[torch.Tensor], torch.Tensor],
    z: torch.Tensor,
    *,
    method: str = "hessian",
    indices: Sequence[int] | None = None,
    residuals: Callable[[torch.Tensor], torch.Tensor] | None = None,
    jacobian: Callable[[torch.Tensor], torch.Tensor] | None = None,
    cg_tol: float = 1e-10,
    cg_max_iter: int | None = None,
) -> torch.Tensor:
    """Posterior covariance block ``(H⁻¹)[indices, indices]`` of the control at ``z`` (default: all).

    ``cg_tol``/``cg_max_iter`` (default ``10 n + 50``) control the ``"cg"`` solves; one that does not reach
    ``‖e − H x‖ ≤ cg_tol`` raises :class:`SolverError` naming the column.
    """
    check_choice("laplace method", method, ["hessian", "gauss-newton", "cg"])
    n = z.numel()
    idx = list(range(n)) if indices is None else list(indices)
    if not idx:
        return torch.zeros(0, 0, dtype=z.dtype)
    if method == "cg":
        max_iter = 10 * n + 50 if cg_max_iter is None else int(cg_max_iter)
        cols = []
        for i in idx:
            e = torch.zeros_like(z)
            e[i] = 1.0
            try:
                cols.append(conjugate_gradient(lambda v: hvp(cost, z, v), e, tol=cg_tol, max_iter=max_iter))
            except SolverError as err:
                raise SolverError(
                    f"laplace_covariance(method='cg'): the solve H x = e_{i} failed ({err}); the posterior "
                    "covariance is not available this way — try method='hessian' or 'gauss-newton' for small "
                    "controls, a looser cg_tol, or add priors"
                ) from err
        C = torch.stack(cols, dim=1)[idx]
        return 0.5 * (C + C.T)
    if method == "gauss-newton":
        if residuals is None:
            raise ConfigError("laplace method 'gauss-newton' needs the residual function")
        load_jvp_decompositions()
        Jm = jacobian(z.detach()) if jacobian is not None else torch.func.jacfwd(residuals)(z.detach())
        H = Jm.T @ Jm
    else:
        H = hessian(cost, z)
    L, info = torch.linalg.cholesky_ex(H)
    if int(info) != 0:
        raise SolverError(
            "the Hessian is not positive definite at the optimum; the parameters may not be "
            "identifiable from "
            "these observations — add priors (model.set_prior) or more observations"
        )
    C = torch.cholesky_inverse(L)
    return C[idx][:, idx]


def correlation_from_covariance(C: torch.Tensor) -> torch.Tensor:
    s = C.diagonal().clamp(min=0).sqrt()
    return C / (s[:, None] * s[None, :])

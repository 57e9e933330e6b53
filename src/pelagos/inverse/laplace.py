"""Laplace approximation at the optimum: posterior ≈ N(z*, H⁻¹), H = ∇²J(z*) in the control space.

The control space is the unconstrained (log/logit) space of the parameters plus the whitened state increment,
so the Gaussian lives where the priors are Gaussian. Three ways to get H⁻¹ (or the block of it we need):

- ``"hessian"``: full Hessian by double autograd (small controls);
- ``"gauss-newton"``: JᵀJ from the Jacobian of the whitened residuals (drops second-derivative model terms;
  always positive semi-definite);
- ``"cg"``: Hessian-vector products (reverse-over-reverse) and conjugate gradients, one solve per wanted
entry —
  for large controls (e.g. initial state + parameters) when only the parameter block is needed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..core.errors import ConfigError, SolverError, check_choice


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
    """Solve A x = b for SPD A given by ``matvec``; raises ``SolverError`` on negative curvature."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rr = r @ r
    bn = float(b.norm())
    for _ in range(max_iter):
        Ap = matvec(p)
        pAp = p @ Ap
        if float(pAp) <= 0:
            raise SolverError(
                "the Hessian is not positive definite at this point (negative curvature found by CG); "
                "the optimum may not be reached, or the parameters are not identifiable — add priors"
            )
        a = rr / pAp
        x = x + a * p
        r = r - a * Ap
        rr_new = r @ r
        if float(rr_new.sqrt()) <= tol * max(bn, 1e-300):
            break
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


def laplace_covariance(
    cost: Callable[[torch.Tensor], torch.Tensor],
    z: torch.Tensor,
    *,
    method: str = "hessian",
    indices: Sequence[int] | None = None,
    residuals: Callable[[torch.Tensor], torch.Tensor] | None = None,
    jacobian: Callable[[torch.Tensor], torch.Tensor] | None = None,
    cg_tol: float = 1e-10,
) -> torch.Tensor:
    """Posterior covariance block ``(H⁻¹)[indices, indices]`` of the control at ``z`` (default: all)."""
    check_choice("laplace method", method, ["hessian", "gauss-newton", "cg"])
    n = z.numel()
    idx = list(range(n)) if indices is None else list(indices)
    if not idx:
        return torch.zeros(0, 0, dtype=z.dtype)
    if method == "cg":
        cols = []
        for i in idx:
            e = torch.zeros_like(z)
            e[i] = 1.0
            cols.append(conjugate_gradient(lambda v: hvp(cost, z, v), e, tol=cg_tol, max_iter=10 * n + 50))
        C = torch.stack(cols, dim=1)[idx]
        return 0.5 * (C + C.T)
    if method == "gauss-newton":
        if residuals is None:
            raise ConfigError("laplace method 'gauss-newton' needs the residual function")
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

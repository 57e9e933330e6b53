"""laplace_covariance: the three methods against the exact inverse of a known quadratic, and the CG path
(core.solve_cg) saying when it cannot deliver (no convergence, negative curvature) instead of returning a
wrong covariance."""

from __future__ import annotations

import pytest
import torch

from pelagos.core.errors import SolverError
from pelagos.inverse import conjugate_gradient
from pelagos.inverse.laplace import laplace_covariance

D = torch.float64


def _quadratic(n: int, cond: float, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=D))
    H = Q @ torch.diag(torch.logspace(0, torch.log10(torch.tensor(cond)).item(), n, dtype=D)) @ Q.T
    H = 0.5 * (H + H.T)
    m = torch.randn(n, generator=g, dtype=D)

    def cost(z):
        d = z - m
        return 0.5 * d @ H @ d

    def residuals(z):
        return torch.linalg.cholesky(H).T @ (z - m)

    return H, m, cost, residuals


@pytest.mark.parametrize("method", ["hessian", "gauss-newton", "cg"])
def test_laplace_covariance_is_the_inverse_hessian(method):
    H, m, cost, residuals = _quadratic(6, 1e3)
    C = laplace_covariance(cost, m.clone(), method=method, residuals=residuals)
    torch.testing.assert_close(C, torch.linalg.inv(H), rtol=1e-8, atol=1e-10)
    Cb = laplace_covariance(cost, m.clone(), method=method, residuals=residuals, indices=[1, 4])
    torch.testing.assert_close(Cb, torch.linalg.inv(H)[[1, 4]][:, [1, 4]], rtol=1e-8, atol=1e-10)


def test_laplace_cg_that_does_not_converge_raises():
    # Badly conditioned H, two CG iterations: the old home-made CG returned its unconverged iterate silently.
    _, m, cost, _ = _quadratic(8, 1e6)
    with pytest.raises(SolverError, match="no convergence"):
        laplace_covariance(cost, m.clone(), method="cg", cg_max_iter=2)


def test_laplace_cg_with_negative_curvature_raises():
    def cost(z):
        return 0.5 * (z[0] ** 2 - z[1] ** 2)

    with pytest.raises(SolverError, match="not positive definite"):
        laplace_covariance(cost, torch.zeros(2, dtype=D), method="cg")


def test_conjugate_gradient_name_still_solves_and_reports():
    H, _, _, _ = _quadratic(5, 1e2, seed=3)
    b = torch.arange(1.0, 6.0, dtype=D)
    x = conjugate_gradient(lambda v: H @ v, b)
    torch.testing.assert_close(x, torch.linalg.solve(H, b), rtol=1e-9, atol=1e-12)
    with pytest.raises(SolverError, match="no convergence"):
        conjugate_gradient(lambda v: H @ v, b, max_iter=1)

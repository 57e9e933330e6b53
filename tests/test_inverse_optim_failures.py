"""L-BFGS with unusable trial points: non-finite costs and numerical model errors make it backtrack."""

from __future__ import annotations

import pytest
import torch

from pelagos.core.errors import ConfigError, SolverError, StabilityError
from pelagos.inverse.optim import minimize


def _rosenbrock(z: torch.Tensor) -> torch.Tensor:
    return (1 - z[0]) ** 2 + 100 * (z[1] - z[0] ** 2) ** 2


def test_lbfgs_backtracks_over_a_solver_error_to_the_rosenbrock_minimum():
    # From (-1.2, 1) the first L-BFGS trial lands at y ~ 1.29: the "model" fails for y > 1.25.
    failed = []

    def cost(z):
        if float(z[1].detach()) > 1.25:
            failed.append(z.detach().clone())
            raise SolverError("zero pivot in the implicit solve")
        return _rosenbrock(z)

    r = minimize(cost, torch.tensor([-1.2, 1.0], dtype=torch.float64), max_iter=200, gtol=1e-10)
    assert len(failed) >= 1  # the first trial step did cross into the failing region
    assert r.converged, r.message
    assert torch.allclose(r.z, torch.ones(2, dtype=torch.float64), atol=1e-6)
    assert all(bool(torch.isfinite(torch.tensor(h))) for h in r.history)


def test_lbfgs_keeps_its_curvature_memory_over_a_later_failure():
    # A failing region above the Rosenbrock valley: hit by the first trial and again mid-run (with memory).
    failed = []

    def cost(z):
        x, y = float(z[0].detach()), float(z[1].detach())
        if x < 0.99 and y > 0.0 and y > x * x + 0.05:
            failed.append((x, y))
            raise SolverError("negative concentration")
        return _rosenbrock(z)

    r = minimize(cost, torch.tensor([-1.2, 1.0], dtype=torch.float64), max_iter=300, gtol=1e-10)
    assert len(failed) >= 2
    assert r.converged, r.message
    assert torch.allclose(r.z, torch.ones(2, dtype=torch.float64), atol=1e-6)


def test_lbfgs_backtracks_over_a_nan_cost_on_a_quadratic():
    failed = []

    def cost(z):
        J = (z[0] - 0.9) ** 2 + 10 * (z[1] - 0.2) ** 2
        if float(z[1].detach()) > 0.5:  # first trial from 0: z ~ (0.31, 0.69)
            failed.append(1)
            return J * float("nan")
        return J

    r = minimize(cost, torch.zeros(2, dtype=torch.float64), max_iter=100)
    assert failed
    assert r.converged, r.message
    assert torch.allclose(r.z, torch.tensor([0.9, 0.2], dtype=torch.float64), atol=1e-7)


def test_lbfgs_stops_with_a_clear_message_when_every_trial_fails():
    z0 = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)

    def cost(z):
        if not torch.equal(z.detach(), z0):
            raise StabilityError("A_h too large: lateral viscosity Courant number 0.9 > 0.25")
        return ((z - 2.0) ** 2 * torch.tensor([1.0, 4.0, 0.01], dtype=z.dtype)).sum()

    J0 = float(cost(z0))
    r = minimize(cost, z0, max_iter=20, names=["A_h", "r_bot"])
    assert not r.converged
    assert torch.equal(r.z, z0) and r.cost == J0
    assert "every trial step from the last good point failed" in r.message
    assert "A_h" in r.message and "r_bot" in r.message  # the parameters the failing step moved
    assert "z[2]" in r.message  # an unnamed control entry
    assert f"Last finite cost J = {J0:.6g}" in r.message
    assert "StabilityError" in r.message


def test_configuration_errors_are_not_swallowed():
    def cost(z):
        if float(z[0].detach()) > 0.0:
            raise ConfigError("parameter 'x' is above its upper bound")
        return ((z - 1.0) ** 2).sum()

    with pytest.raises(ConfigError, match="upper bound"):
        minimize(cost, torch.tensor([-0.5], dtype=torch.float64), max_iter=10)  # 1st trial: 0.5


def test_lbfgs_path_is_unchanged_without_failures():
    # No failing trial: the iterates are torch's L-BFGS with strong-Wolfe line search, step for step.
    z0 = torch.tensor([-1.2, 1.0], dtype=torch.float64)
    r = minimize(_rosenbrock, z0, max_iter=60, gtol=1e-10)
    zp = z0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS(
        [zp], lr=1.0, max_iter=1, max_eval=40, history_size=20, line_search_fn="strong_wolfe",
        tolerance_grad=0.0, tolerance_change=0.0,
    )  # fmt: skip

    def closure():
        opt.zero_grad()
        J = _rosenbrock(zp)
        J.backward()
        return J

    for zr in r.z_history[1:21]:  # (near the minimum minimize restarts its memory on a stalled step)
        opt.step(closure)
        assert torch.equal(zp.detach(), zr)

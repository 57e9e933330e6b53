"""The prior term of calibration and 4D-Var, checked against the exact linear-Gaussian posterior.

Model x_{k+1} = A x_k + G θ (linear in the initial state and in two unbounded parameters θ), observations
y_k = H x_k + ε, ε ~ N(0, R), Gaussian priors θ ~ N(μ, diag s²) (and x₀ ~ N(x_b, B) for 4D-Var). Then
y = M_x x₀ + M_θ θ + ε with M_x = [H Aᵏ]_k, M_θ = [H Σ_{i<k} Aⁱ G]_k, and the posterior is Gaussian with

    P = (Mᵀ R⁻¹ M + P_b⁻¹)⁻¹,  mean = P (Mᵀ R⁻¹ y + P_b⁻¹ m_b)

over the control (θ for calibration; (x₀, θ) for 4D-Var, whose θ-block is the marginal posterior of θ).
The priors are chosen as informative as the data, so that a prior term that is missing, doubled, centred
wrongly or scaled by s instead of s² moves the estimate or its standard deviation far beyond the tolerances
(each test also asserts that the prior-free answer is far from the exact one).
"""

from __future__ import annotations

import pytest
import torch

from _inverse_models import ForcedLinearModel
from pelagos.core.covariance import CorrelatedCovariance
from pelagos.core.observations import ObservationSet
from pelagos.core.operators import LinearOperator
from pelagos.inverse.calibrate import calibrate
from pelagos.inverse.fourdvar import fourdvar

pytestmark = pytest.mark.usefixtures("float64_default")

MU = torch.tensor([0.4, -0.3])  # prior means of theta1, theta2
S = torch.tensor([0.15, 0.25])  # prior standard deviations
NAMES = ["theta1", "theta2"]


def _case(seed=0, n=4, m=2):
    g = torch.Generator().manual_seed(seed)
    A = 0.9 * torch.eye(n) + 0.05 * torch.randn(n, n, generator=g)
    G = torch.randn(n, 2, generator=g)
    H = torch.randn(m, n, generator=g)
    model = ForcedLinearModel(A, G, dt=0.5)
    model.select_free(NAMES)
    for i, name in enumerate(NAMES):
        model.set_prior(name, mean=float(MU[i]), std=float(S[i]))
    x0 = torch.randn(n, generator=g)
    times = torch.tensor([0.5, 1.0, 1.5, 2.5, 3.0])
    k = (times / model.dt).round().long().tolist()
    Mx = torch.cat([H @ torch.linalg.matrix_power(A, ki) for ki in k])
    Mt = torch.cat(
        [H @ sum((torch.linalg.matrix_power(A, i) for i in range(ki)), torch.zeros(n, n)) @ G for ki in k]
    )
    theta_true = torch.tensor([0.9, -0.8])  # away from the prior: the posterior is a real compromise
    sigma = 0.5 + 0.3 * torch.rand(len(k), m, generator=g)
    y = (Mx @ x0 + Mt @ theta_true).reshape(len(k), m) + sigma * torch.randn(len(k), m, generator=g)
    obs = ObservationSet(times, y, sigma, operator=LinearOperator(H))
    return model, x0, obs, Mx, Mt


def _gaussian_posterior(M, y, Rinv, mb, Pb):
    P = torch.linalg.inv(M.T @ Rinv @ M + torch.linalg.inv(Pb))
    return P @ (M.T @ Rinv @ y + torch.linalg.solve(Pb, mb)), P


def test_calibrate_equals_exact_linear_gaussian_posterior_with_prior():
    model, x0, obs, Mx, Mt = _case()
    y = obs.values.reshape(-1) - Mx @ x0  # x0 known: only θ is estimated
    Rinv = torch.diag(obs.sigma.reshape(-1) ** -2)
    mean, P = _gaussian_posterior(Mt, y, Rinv, MU, torch.diag(S**2))
    no_prior = torch.linalg.solve(Mt.T @ Rinv @ Mt, Mt.T @ Rinv @ y)
    assert float((no_prior - mean).abs().min()) > 0.05  # the prior matters here

    res = calibrate(model, obs, x0, max_iter=200, uncertainty="hessian", write_back=False)
    est = torch.tensor([res.estimates[n] for n in NAMES])
    std = torch.tensor([res.std[n] for n in NAMES])
    torch.testing.assert_close(est, mean, rtol=0, atol=1e-7)
    torch.testing.assert_close(std, P.diagonal().sqrt(), rtol=1e-7, atol=0)
    corr = P / torch.outer(P.diagonal().sqrt(), P.diagonal().sqrt())
    torch.testing.assert_close(torch.tensor(res.correlation), corr, rtol=0, atol=1e-7)
    # the reported prior is the one declared, and the prior term of the cost is ½‖(θ − μ)/s‖²
    for i, n in enumerate(NAMES):
        assert res.prior[n]["mean"] == pytest.approx(float(MU[i])) and res.prior[n]["raw_std"] == float(S[i])
    prior_term = 0.5 * float((((mean - MU) / S) ** 2).sum())
    total = 0.5 * float(((Mt @ mean - y) ** 2 * Rinv.diagonal()).sum()) + prior_term
    assert res.cost == pytest.approx(total, rel=1e-9)


def test_4dvar_with_parameters_equals_exact_joint_posterior_with_prior():
    model, x0, obs, Mx, Mt = _case(seed=1)
    n = x0.numel()
    B = CorrelatedCovariance(
        torch.arange(n, dtype=torch.float64), std=torch.full((n,), 0.4), length_scale=1.0
    )
    xb = x0 + 0.3  # a wrong background
    M = torch.cat([Mx, Mt], dim=1)
    Pb = torch.block_diag(B.matrix(), torch.diag(S**2))
    Rinv = torch.diag(obs.sigma.reshape(-1) ** -2)
    mean, P = _gaussian_posterior(M, obs.values.reshape(-1), Rinv, torch.cat([xb, MU]), Pb)
    Pb_flat = torch.block_diag(B.matrix(), torch.diag(torch.full((2,), 1e6)))  # ≈ no parameter prior
    mean_flat, _ = _gaussian_posterior(M, obs.values.reshape(-1), Rinv, torch.cat([xb, MU]), Pb_flat)
    assert float((mean_flat[n:] - mean[n:]).abs().min()) > 0.05  # the parameter prior matters here

    for name, v in zip(NAMES, MU.tolist()):
        model.set_parameter_value(name, v)  # first guess = prior mean
    res = fourdvar(
        model, obs, xb, B, params=True, method="gauss-newton", max_iter=50, gtol=1e-12, uncertainty="hessian"
    )
    torch.testing.assert_close(res.analysis, mean[:n], rtol=0, atol=1e-7)
    est = torch.tensor([res.params.estimates[k] for k in NAMES])
    torch.testing.assert_close(est, mean[n:], rtol=0, atol=1e-7)
    std = torch.tensor([res.params.std[k] for k in NAMES])
    torch.testing.assert_close(
        std, P[n:, n:].diagonal().sqrt(), rtol=1e-7, atol=0
    )  # θ marginal, x₀ integrated out

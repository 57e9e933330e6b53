"""Levenberg–Marquardt with the exact Jacobian (``minimize(method="levenberg-marquardt")``): known
solutions, the Jacobian it is given is the one it uses, failed trial runs are rejected steps, and the
calibration driver."""

from __future__ import annotations

import pytest
import torch

from _inverse_models import DecayModel
from pelagos.core.errors import ConfigError, SolverError
from pelagos.core.obsio import synthetic_observations
from pelagos.inverse.calibrate import calibrate
from pelagos.inverse.optim import minimize

pytestmark = pytest.mark.usefixtures("float64_default")


def _ill_conditioned_linear(seed: int = 0):
    """r(z) = A z − b with cond(A) = 1e3 (cond(AᵀA) = 1e6) and its least-squares solution."""
    g = torch.Generator().manual_seed(seed)
    Q1, _ = torch.linalg.qr(torch.randn(12, 12, generator=g))
    Q2, _ = torch.linalg.qr(torch.randn(5, 5, generator=g))
    A = Q1[:, :5] @ torch.diag(torch.logspace(0, -3, 5)) @ Q2.T
    b = torch.randn(12, generator=g)
    return A, b, torch.linalg.lstsq(A, b[:, None]).solution[:, 0]


def _lm(residuals, z0, **kw):
    return minimize(lambda z: 0.5 * residuals(z).pow(2).sum(), z0, method="levenberg-marquardt",
                    residuals=residuals, **kw)  # fmt: skip


def test_linear_least_squares_first_step_is_the_exact_gauss_newton_step():
    # With vanishing damping the first step of a linear problem lands on the least-squares solution: true only
    # when the Jacobian is exact (the default is forward mode of the residuals).
    A, b, z_star = _ill_conditioned_linear()
    res = _lm(lambda z: A @ z - b, torch.zeros(5), lm_lambda0=1e-14, max_iter=5)
    assert torch.allclose(res.z_history[1], z_star, rtol=1e-6, atol=1e-6), (res.z_history[1], z_star)
    assert res.converged and res.n_iter <= 3, res.message
    assert res.grad_norm < 1e-8


def test_rosenbrock_residuals_converge_from_the_classic_start():
    r = lambda z: torch.stack([10 * (z[1] - z[0] ** 2), 1 - z[0]])  # noqa: E731
    res = _lm(r, torch.tensor([-1.2, 1.0]), max_iter=200, gtol=1e-12)
    assert res.converged, res.message
    assert torch.allclose(res.z, torch.ones(2), atol=1e-8)
    assert all(b <= a for a, b in zip(res.history, res.history[1:]))  # only accepted steps move the cost
    assert res.n_evals > res.n_iter  # trial runs plus a Jacobian per accepted step


def test_uses_the_jacobian_it_is_given():
    A, b, z_star = _ill_conditioned_linear(1)
    calls = []

    def exact(z):
        calls.append(z.clone())
        return A

    res = _lm(lambda z: A @ z - b, torch.zeros(5), jacobian=exact, lm_lambda0=1e-14, max_iter=5)
    assert len(calls) >= 2 and torch.allclose(res.z_history[1], z_star, rtol=1e-6, atol=1e-6)
    # a wrong Jacobian (one column scaled) does not give the solution in one step
    wrong = A.clone()
    wrong[:, 4] *= 1.5
    res = _lm(lambda z: A @ z - b, torch.zeros(5), jacobian=lambda z: wrong, lm_lambda0=1e-14, max_iter=1)
    assert not torch.allclose(res.z, z_star, rtol=1e-3, atol=1e-3)


def test_failed_trial_runs_are_rejected_steps():
    # the "model" fails whenever y < -3: the nearly undamped first step from (-1.2, 1) lands at (1, -3.84)
    failed = []

    def r(z):
        if float(z[1]) < -3.0:
            failed.append(z.clone())
            raise SolverError("zero pivot in the implicit solve")
        return torch.stack([10 * (z[1] - z[0] ** 2), 1 - z[0]])

    res = _lm(r, torch.tensor([-1.2, 1.0]), lm_lambda0=1e-8, max_iter=300, gtol=1e-12)
    assert failed and res.converged, res.message
    assert torch.allclose(res.z, torch.tensor([1.0, 1.0]), atol=1e-6)


def test_needs_residuals_and_a_positive_damping():
    with pytest.raises(ConfigError, match="residual"):
        minimize(lambda z: z.pow(2).sum(), torch.ones(2), method="levenberg-marquardt")
    with pytest.raises(ConfigError, match="lm_lambda0"):
        _lm(lambda z: z, torch.ones(2), lm_lambda0=0.0)


def test_calibrate_with_levenberg_marquardt_reaches_the_lbfgs_minimum():
    # through the calibration driver: VariationalProblem.jacobian (forward mode, batched) is the Jacobian
    truth = DecayModel()
    x0 = torch.tensor([1.0, 0.2])
    times = torch.arange(1, 13) * truth.dt
    obs = synthetic_observations(truth, x0, times, sigma=0.02, generator=torch.Generator().manual_seed(2))
    model = DecayModel()
    for n in ["k", "s"]:
        model.set_parameter_value(n, 0.5)
    model.select_free(["k", "s"])
    for n in ["k", "s"]:
        model.set_prior(n, mean=0.5, std=1.0)
    a = calibrate(model, obs, x0, max_iter=100, uncertainty=None, write_back=False)
    c = calibrate(model, obs, x0, optimizer="levenberg-marquardt", max_iter=50, uncertainty=None,
                  write_back=False)  # fmt: skip
    assert abs(a.cost - c.cost) < 1e-6 * a.cost
    for n in ["k", "s"]:
        assert abs(a.estimates[n] - c.estimates[n]) < 1e-4 * abs(a.estimates[n])


def _ecosmo_dict_problem(compile_mode: str = "off"):
    """A 6-layer ECOSMO column (dict state: sediment pools, nested running-mean buffers, a leading column dim
    of 1) with 3 free parameters against surface and 20 m nitrate; the problem and a control off its first
    guess."""
    from pelagos.bgc.fabm_yaml import load_system
    from pelagos.column.forcing import ColumnForcing
    from pelagos.column.model import ColumnModel
    from pelagos.core import obsio
    from pelagos.core.paths import DATA_DIR
    from pelagos.inverse.problem import VariationalProblem

    nz = 6
    system = load_system(DATA_DIR / "fabm" / "fabm-nersc-ecosmo.yaml", drop=("CO2",))
    f = torch.full
    forcing = ColumnForcing.constant(f((nz,), 5.0), f((nz,), 12.0), f((nz,), 34.0), f((nz + 1,), 1e-4), 150.0,
                                     bottom_stress=0.05)  # fmt: skip
    model = ColumnModel(system, forcing, dt=3600.0)
    model.compile_mode = compile_mode
    x0 = model.initial_state(1)
    assert isinstance(x0, dict) and any(isinstance(v, dict) for v in x0.values())  # the running means
    times = torch.arange(1, 5) * 6 * 3600.0
    obs = obsio.synthetic_observations(
        model, x0, None, [obsio.Sampling("ECO_no3", {"depth": ["surface", 20.0]}, times)], start=0.0,
        noise="none", sigma=0.1,
    )  # fmt: skip
    model.select_free(["ECO.muPl", "ECO.mPl", "ECO.GrZlP"])
    P = VariationalProblem(model, obs, x0)
    return model, P, P.z0 * torch.tensor([1.1, 0.8, 1.05])


def test_batched_jacobian_of_a_dict_state_with_nested_running_means(monkeypatch):
    """ECOSMO's column state is a dict (sediment pools, nested running-mean buffers, a leading column dim of
    1): the batched forward-mode Jacobian (all tangents in one run, the controls as columns) must handle it
    instead of falling back to a vmapped ``jacfwd``, and give the same Jacobian."""
    _, P, z = _ecosmo_dict_problem()
    jacfwd = torch.func.jacfwd

    def no_fallback(*a, **k):
        raise AssertionError("fell back to torch.func.jacfwd (one vmapped pass of the plain step)")

    monkeypatch.setattr(torch.func, "jacfwd", no_fallback)
    J = P.jacobian(z)  # the one-run batched path, checked against a finite difference
    monkeypatch.setattr(torch.func, "jacfwd", jacfwd)
    assert P._batched_jac and P.jacobian_info["path"] == "batched"
    torch.testing.assert_close(J, jacfwd(P.residuals)(z), rtol=1e-10, atol=1e-12)
    assert float(J.abs().max()) > 0
    # the controls are columns (the state's own leading dim), as ES-MDA batches members: the compiled column
    # step takes (B, nz) tracers and cannot trace an extra dim in front of them
    xs = P.initial_state(z.expand(3, 3))
    for a, b in zip(torch.utils._pytree.tree_leaves(xs), torch.utils._pytree.tree_leaves(P.xb), strict=True):
        assert a.shape == (3, *b.shape[1:])


@pytest.mark.slow
def test_batched_jacobian_of_ecosmo_runs_the_compiled_jvp_program():
    """The same ECOSMO problem on the compiled step: the batched Jacobian runs the compiled jvp program,
    traced without a graph break (its running mean of the surface light comes out as a broadcast view, which
    joining primal and tangent must handle; before, the program was given up for the plain step after its
    first call), and equals the plain step's forward mode."""
    import warnings

    from pelagos.column.compiled import cxx_available

    if not cxx_available():
        pytest.skip("needs a C++ compiler for torch.compile")
    from torch._dynamo.utils import counters

    model, P, z = _ecosmo_dict_problem("on")
    counters.clear()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*forward mode on the compiled step failed")
        J = P.jacobian(z)
    assert model.__dict__["_compiled_jvp_obj"]._works is True and P.jacobian_info["path"] == "batched"
    # traced whole: a graph break (a state with an extra leading dim broke it) runs the program eagerly,
    # ≈ 40× slower
    assert not counters["graph_break"], dict(counters["graph_break"])
    _, P_plain, _ = _ecosmo_dict_problem("off")
    torch.testing.assert_close(J, torch.func.jacfwd(P_plain.residuals)(z), rtol=1e-10, atol=1e-12)

"""Calibration twins: Lorenz-63 parameters and a decay model; Laplace vs ES-MDA; results I/O; bad configs."""

from __future__ import annotations

import json

import pytest
import torch

from _inverse_models import DecayModel
from pelagos.core.errors import ConfigError
from pelagos.core.obsio import synthetic_observations
from pelagos.inverse.calibrate import calibrate
from pelagos.inverse.ensemble import esmda, sample_prior
from pelagos.inverse.problem import VariationalProblem
from pelagos.models import Lorenz63

pytestmark = pytest.mark.usefixtures("float64_default")


TRUE63 = {"sigma": 10.0, "rho": 28.0, "beta": 8.0 / 3.0}


def _l63_twin(sigma_obs: float, seed: int = 0):
    truth = Lorenz63()
    x0 = truth.initial_state()
    times = torch.arange(1, 11) * 5 * truth.dt  # every 5 steps over half a time unit
    g = torch.Generator().manual_seed(seed)
    noise = "gaussian" if sigma_obs > 0 else "none"
    obs = synthetic_observations(truth, x0, times, sigma=max(sigma_obs, 0.1), noise=noise, generator=g)
    model = Lorenz63(sigma=8.0, rho=25.0, beta=2.0)  # wrong first guess
    model.select_free(["sigma", "rho", "beta"])
    for n, v in {"sigma": 8.0, "rho": 25.0, "beta": 2.0}.items():
        model.set_prior(n, mean=v, std=1.0)  # broad: one e-fold in log space
    return model, x0, obs


def test_l63_twin_noise_free_recovers_truth():
    model, x0, obs = _l63_twin(0.0)
    res = calibrate(model, obs, x0, max_iter=200, uncertainty="hessian")
    for n, v in TRUE63.items():  # only the weak prior pulls the estimate away from the truth
        assert abs(res.estimates[n] - v) < 0.02 * v, (n, res.estimates[n])
        assert abs(res.estimates[n] - v) < res.std[n]
    assert res.history[-1] < 1e-2 * res.history[0]
    assert res.n_evals >= res.n_iter > 0 and res.wall_time > 0
    # the model now holds the estimates
    assert abs(float(model.get_parameter_value("rho").detach()) - res.estimates["rho"]) < 1e-9


def test_l63_twin_noisy_within_posterior_std():
    model, x0, obs = _l63_twin(1.0, seed=1)
    res = calibrate(model, obs, x0, max_iter=200, uncertainty="hessian")
    for n, v in TRUE63.items():
        # 3σ: with 3 parameters a 1σ check would fail for ~2/3 of noise draws even if all is right
        assert (
            abs(res.raw[n] - float(model.parameter_spec(n).transform.inverse(torch.tensor(v))))
            < 3 * res.raw_std[n]
        )
        assert res.interval95[n][0] < res.estimates[n] < res.interval95[n][1]
    C = torch.tensor(res.correlation)
    assert torch.allclose(C.diagonal(), torch.ones(3)) and bool((C.abs() <= 1 + 1e-12).all())


def test_adam_and_lbfgs_reach_the_same_minimum():
    model, x0, obs = _decay_twin(seed=2)
    a = calibrate(model, obs, x0, max_iter=100, uncertainty=None, write_back=False)
    b = calibrate(model, obs, x0, optimizer="adam", lr=0.05, max_iter=400, uncertainty=None, write_back=False)
    c = calibrate(model, obs, x0, optimizer="gauss-newton", max_iter=20, uncertainty=None, write_back=False)
    for r in (b, c):
        assert abs(a.cost - r.cost) < 1e-4 * a.cost
        for n in ["k", "s"]:
            assert abs(a.estimates[n] - r.estimates[n]) < 1e-3 * abs(a.estimates[n])


def test_calibration_cost_gradient_fd():
    model, x0, obs = _l63_twin(1.0, seed=3)
    p = VariationalProblem(model, obs, x0, control_state=True, B=0.5)
    z = p.z0 + 0.01 * torch.randn(p.size, generator=torch.Generator().manual_seed(0))
    d = torch.randn(p.size, generator=torch.Generator().manual_seed(1))
    zz = z.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(p.cost(zz), zz)
    h = 1e-6
    fd = (p.cost(z + h * d) - p.cost(z - h * d)) / (2 * h)
    assert abs(float(g @ d - fd)) <= 1e-6 * abs(float(fd))
    # the fast batched forward-mode Jacobian equals torch.func.jacfwd
    assert torch.allclose(p.jacobian(z), torch.func.jacfwd(p.residuals)(z), atol=1e-9, rtol=1e-9)


def _decay_twin(seed=0, n_stations=1):
    truth = DecayModel()
    x0 = torch.tensor([[1.0, 0.2], [0.1, 0.9], [0.5, 0.5]])[:n_stations]
    x0 = x0[0] if n_stations == 1 else x0
    times = torch.arange(1, 13) * truth.dt
    obs = synthetic_observations(truth, x0, times, sigma=0.02, generator=torch.Generator().manual_seed(seed))
    model = DecayModel()
    model.set_parameter_value("k", 0.5)
    model.set_parameter_value("s", 0.5)
    model.select_free(["k", "s"])
    model.set_prior("k", mean=0.5, std=1.0)
    model.set_prior("s", mean=0.5, std=1.0)
    return model, x0, obs


def test_several_stations_at_once_and_initial_state_control():
    model, x0, obs = _decay_twin(n_stations=3)  # state (3, 2), values (12, 3, 2)
    res = calibrate(model, obs, x0, uncertainty="gauss-newton")
    for n, v in {"k": 0.3, "s": 0.2}.items():
        assert abs(res.estimates[n] - v) < 3 * res.std[n]
    # with the initial state in the control (starting from a wrong background) the fit stays close
    res2 = calibrate(model, obs, x0 + 0.05, control_state=True, B=0.1, uncertainty=None)
    err = (res2.initial_state - x0).abs()
    assert float(err.max()) < 0.05 and float(err.mean()) < 0.025  # background error was 0.05 everywhere


def test_esmda_agrees_with_gradient_and_laplace():
    model, x0, obs = _decay_twin(seed=4)
    grad = calibrate(model, obs, x0, uncertainty="hessian", write_back=False)
    g = torch.Generator().manual_seed(5)
    U0 = sample_prior(model, 400, generator=g)
    ens = esmda(model, obs, x0.expand(400, 2), U0, alphas=8, generator=g)
    for n in ["k", "s"]:
        # posterior means agree within a fraction of the posterior std; the spreads agree within 30 %
        assert abs(ens.raw_mean[n] - grad.raw[n]) < 0.3 * grad.raw_std[n]
        assert 0.7 < ens.raw_std[n] / grad.raw_std[n] < 1.3
    assert ens.history[-1] < ens.history[0]


def test_esmda_member_misfits_are_those_of_single_runs():
    # each final member's data misfit (ranks the members for a multi-start) equals the observation part of
    # the variational cost of that member run on its own
    model, x0, obs = _decay_twin(seed=4)
    g = torch.Generator().manual_seed(5)
    ens = esmda(model, obs, x0.expand(6, 2), sample_prior(model, 6, generator=g), alphas=2, generator=g)
    P = VariationalProblem(model, obs, x0, include_prior=False)
    single = torch.stack([P.cost(u).detach() for u in ens.params])
    assert ens.member_misfit.shape == (6,) and float(single.std()) > 0
    torch.testing.assert_close(ens.member_misfit, single, rtol=1e-10, atol=1e-12)


def test_result_serialisation_and_plots(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    model, x0, obs = _decay_twin()
    res = calibrate(model, obs, x0)
    d = json.loads(res.save(tmp_path / "r.json").read_text())
    assert set(d["estimates"]) == {"k", "s"} and d["n_evals"] == res.n_evals and len(d["history"]) >= 2
    assert "prior" in d and d["prior"]["k"]["mean"] == pytest.approx(0.5)
    res.save(tmp_path / "r.yaml")
    res.plot_cost()
    res.plot_parameters(truth={"k": 0.3, "s": 0.2})
    assert "k" in res.summary()
    with pytest.raises(ConfigError, match=r"json or \.yaml"):
        res.save(tmp_path / "r.txt")


def test_impossible_calibrations_raise():
    model, x0, obs = _decay_twin()
    model.select_free([])
    with pytest.raises(ConfigError, match="nothing to calibrate"):
        calibrate(model, obs, x0)
    with pytest.raises(ConfigError, match="unknown parameter"):
        calibrate(model, obs, x0, free=["kk"])
    with pytest.raises(ConfigError, match="optimizer"):
        calibrate(model, obs, x0, free=["k"], optimizer="sgd")
    model.select_free(["k"])
    model.parameter_spec("k").prior = None
    with pytest.raises(ConfigError, match="no prior"):
        sample_prior(model, 10)

"""Calibration of QG parameters from sparse streamfunction observations through pelagos.inverse."""

import pytest
import torch

from pelagos.core.errors import ObservationError
from pelagos.core.observations import ObservationSet
from pelagos.core.rollout import rollout
from pelagos.inverse.calibrate import calibrate
from pelagos.inverse.laplace import hessian
from pelagos.inverse.problem import VariationalProblem
from pelagos.qg import QGModel
from pelagos.qg.observe import grid_points, random_points


def test_calibrate_rek_and_rd_from_sparse_psi():
    truth = QGModel(nx=16, dt=7200.0, rek=1e-6, rd=15000.0)
    q0 = 1e-5 * torch.randn(1, 2, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    at = random_points(truth, 24, seed=1)
    H = truth.observation_operator("psi", at)
    with torch.no_grad():
        traj = rollout(truth, truth.state_from_q(q0), 24, save_every=6, include_initial=False, observe=H)
    y = traj.states  # (4, 1, 24)
    m = QGModel(nx=16, dt=7200.0, rek=3e-7, rd=20000.0)
    obs = ObservationSet(
        times=traj.times, values=y, sigma=0.01 * float(y.std()), operator=m.observation_operator("psi", at)
    )
    res = calibrate(
        m, obs, m.state_from_q(q0), free=["rek", "rd"], optimizer="lbfgs", max_iter=30, uncertainty=None
    )
    assert abs(res.estimates["rek"] / 1e-6 - 1) < 1e-4
    assert abs(res.estimates["rd"] / 15000.0 - 1) < 1e-4
    assert abs(float(m.param("rek").detach()) / 1e-6 - 1) < 1e-4  # written back


def test_qg_laplace_hessian_matches_finite_differences_of_the_gradient():
    """calibrate's default Laplace covariance (uncertainty="hessian": double autograd through the fused QG
    step) at the optimum of a noisy fit: the Hessian equals central differences of the gradient (float64)
    and the truth lies within a few posterior stds. The fused step used to drop its second-order terms
    silently (∂²J/∂u² of log rek came back as ∂J/∂u): examples/qg_calibrate.py stopped with "the Hessian is
    not positive definite at the optimum"."""
    truth = QGModel(nx=16, dt=7200.0, rek=1e-6, rd=15000.0)
    q0 = 1e-5 * torch.randn(1, 2, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    at = random_points(truth, 24, seed=1)
    with torch.no_grad():
        traj = rollout(
            truth,
            truth.state_from_q(q0),
            48,
            save_every=6,
            include_initial=False,
            observe=truth.observation_operator("psi", at),
        )
    sigma = 0.05 * float(traj.states.std())
    y = traj.states + sigma * torch.randn(
        traj.states.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2)
    )
    m = QGModel(nx=16, dt=7200.0, rek=2e-6, rd=19500.0)
    obs = ObservationSet(times=traj.times, values=y, sigma=sigma, operator=m.observation_operator("psi", at))
    res = calibrate(m, obs, m.state_from_q(q0), free=["rek", "rd"], max_iter=40)
    assert res.converged
    problem = VariationalProblem(m, obs, m.state_from_q(q0))
    z = torch.tensor([res.raw["rek"], res.raw["rd"]], dtype=torch.float64)

    def grad(zz):
        zz = zz.clone().requires_grad_(True)
        return torch.autograd.grad(problem.cost(zz), zz)[0]

    h = 1e-4
    fd = torch.stack([(grad(z + h * e) - grad(z - h * e)) / (2 * h) for e in torch.eye(2, dtype=z.dtype)], 1)
    torch.testing.assert_close(hessian(problem.cost, z), fd, rtol=1e-6, atol=1e-6 * float(fd.abs().max()))
    for n, v in {"rek": 1e-6, "rd": 15000.0}.items():
        assert 0 < res.std[n] < 0.1 * v
        assert abs(res.estimates[n] - v) < 4 * res.std[n]


def test_point_observer_psi_is_inverse_of_q():
    m = QGModel(nx=16)
    st = m.initial_state(seed=3)
    H = m.observation_operator("psi", grid_points(m, torch.arange(2 * 16 * 16)))
    psi = H(st).reshape(1, 2, 16, 16)
    # q = ∇²ψ + F-coupling, evaluated spectrally, returns the state's q
    F1 = float(m.param("rd").detach()) ** -2 / (1 + float(m.param("delta").detach()))
    F2 = float(m.param("delta").detach()) * F1
    ph = m.fft(psi)
    lap = -m.coefficients()["wv2"] * ph
    q1 = m.ifft(lap[:, 0] + F1 * (ph[:, 1] - ph[:, 0]))
    q2 = m.ifft(lap[:, 1] + F2 * (ph[:, 0] - ph[:, 1]))
    q = torch.stack([q1, q2], 1)
    qmean = st["q"] - st["q"].mean(dim=(-2, -1), keepdim=True)  # the κ = 0 mode is not inverted
    assert torch.allclose(q, qmean, rtol=0, atol=1e-12 * float(qmean.abs().max()))


def test_interval_model_tensor_state_and_observer():
    from pelagos.qg.interval import QGInterval

    m = QGModel(nx=16, dt=3600.0)
    q = m.random_q(2, seed=4)
    T = QGInterval(m, 3)
    assert T.dt == 3 * 3600.0
    st = m.state_from_q(q)
    for _ in range(3):
        st = m.step(st)
    assert torch.equal(T.step(q), st["q"])
    H = m.observation_operator("psi", random_points(m, 10, seed=0))
    assert torch.allclose(H(q), H(m.state_from_q(q)), rtol=0, atol=0)
    shift = torch.nn.Conv2d(2, 2, 1, bias=False).double()
    torch.nn.init.zeros_(shift.weight)
    # zero correction (the correction sees q in the model's dtype)
    assert torch.equal(QGInterval(m, 3, correction=shift).step(q), st["q"])


def test_point_operator_interpolates_periodically_and_checks_points():
    """Between cell centres: bilinear, periodic across the edges; exact at the centres; gradients agree."""
    m = QGModel(nx=16)
    q = m.random_q(1, seed=5)
    dx = m.grid.dx
    centre = m.observation_operator("q", {"lev": 1, "y": 0.5 * dx, "x": [0.5 * dx, 15.5 * dx]})
    assert torch.equal(centre(q), q[:, 1, 0, [0, 15]])
    edge = m.observation_operator("q", {"lev": 1, "y": 0.5 * dx, "x": 0.0})  # between x-centres 15 and 0
    assert torch.allclose(edge(q), 0.5 * (q[:, 1, 0, 0] + q[:, 1, 0, 15]).unsqueeze(-1), rtol=1e-14)
    mid = m.observation_operator("psi", {"lev": [0, 1], "y": 3.25 * dx, "x": 7.0 * dx})
    every = m.observation_operator("psi", grid_points(m, torch.arange(2 * 16 * 16)))
    psi_all = every(q).reshape(1, 2, 16, 16)
    assert torch.equal(every(q), m.output(q)["psi"].flatten(1))  # the cell centres exactly
    ref = 0.25 * (psi_all[:, :, 2, 6] + psi_all[:, :, 2, 7]) + 0.75 * (
        psi_all[:, :, 3, 6] + psi_all[:, :, 3, 7]
    )
    assert torch.allclose(mid(q), 0.5 * ref, rtol=1e-12)
    d = torch.randn_like(q)
    qq = q.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(mid(qq).sum(), qq)
    _, jv = torch.func.jvp(lambda x: mid(x).sum(), (q,), (d,))
    assert torch.allclose(jv, (g * d).sum(), rtol=1e-10)
    with pytest.raises(ObservationError, match=r"lev must lie in \[0, 1\]"):
        m.observation_operator("psi", {"lev": 2, "y": 0.0, "x": 0.0})
    with pytest.raises(ObservationError, match="give 'lev'"):
        m.observation_operator("psi", {"y": 0.0, "x": 0.0})
    with pytest.raises(ObservationError, match="cannot locate it along"):
        m.observation_operator("psi", {"lev": 1, "z": 0.0, "x": 0.0})


def test_qg_observation_file(tmp_path):
    """The one reader on QG: coordinate columns lev, y, x; times in model seconds (no epoch)."""
    from pelagos.core.obsio import read_observations, write_observations

    m = QGModel(nx=16, dt=3600.0)
    dx = m.grid.dx
    p = tmp_path / "qg.csv"
    p.write_text(
        "time,variable,value,sigma,lev,y,x\n"
        f"3600,psi,1.5,0.1,0,{0.5 * dx},{0.5 * dx}\n"
        f"3600,q,2e-6,1e-7,1,{2.5 * dx},{4.0 * dx}\n"
        f"7200,psi,1.7,0.1,0,{0.5 * dx},{0.5 * dx}\n"
    )
    obs = read_observations(p, m, start=0.0)
    assert obs.columns == [
        ("psi", {"lev": 0.0, "x": 0.5 * dx, "y": 0.5 * dx}),
        ("q", {"lev": 1.0, "x": 4.0 * dx, "y": 2.5 * dx}),
    ]
    st = m.initial_state()
    assert torch.allclose(obs.operator(st)[:, 0], m.output(st)["psi"][:, 0, 0, 0])
    back = read_observations(write_observations(obs, tmp_path / "qg.nc"), m)
    assert back.columns == obs.columns and torch.allclose(back.values, obs.values, equal_nan=True)
    p.write_text("time,variable,value,sigma,lev,y\n3600,psi,1.5,0.1,0,1000\n")
    with pytest.raises(ObservationError, match=r"qg.csv:2: .*give the points' 'x'"):
        read_observations(p, m)
    p.write_text("time,variable,value,sigma,lev,y,xx\n")
    with pytest.raises(ObservationError, match=r"qg.csv:1: unknown column 'xx'; did you mean 'x'\?"):
        read_observations(p, m)

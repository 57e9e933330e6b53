"""Ensemble analyses against the Kalman formulas; LETKF; short Lorenz-96 filters incl. parameter
estimation."""

from __future__ import annotations

import pytest
import torch

from pelagos.core.errors import ConfigError
from pelagos.core.observations import ObservationSet
from pelagos.inverse.ensemble import (
    enkf_analysis,
    ensemble_filter,
    gaspari_cohn,
    letkf_analysis,
    localization_taper,
    random_rotation,
)
from pelagos.models import Lorenz96

pytestmark = pytest.mark.usefixtures("float64_default")


def _kalman(E, H, y, sig):
    mu = E.mean(0)
    A = E - mu
    P = A.T @ A / (E.shape[0] - 1)
    R = torch.diag(sig**2)
    K = P @ H.T @ torch.linalg.inv(H @ P @ H.T + R)
    return mu + K @ (y - H @ mu), P - K @ H @ P


def _case(N=12, n=6, m=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    E = torch.randn(N, n, generator=g) @ torch.randn(n, n, generator=g) + 1.0
    H = torch.randn(m, n, generator=g)
    y = torch.randn(m, generator=g)
    sig = 0.5 + torch.rand(m, generator=g)
    return E, H, y, sig


def test_etkf_equals_kalman_with_ensemble_covariance():
    E, H, y, sig = _case()
    Ea = enkf_analysis(E, (E @ H.T) / sig, y / sig, method="sqrt")
    mu, Pa = _kalman(E, H, y, sig)
    Aa = Ea - Ea.mean(0)
    assert torch.allclose(Ea.mean(0), mu, atol=1e-10)
    assert torch.allclose(Aa.T @ Aa / (E.shape[0] - 1), Pa, atol=1e-10)


def test_pertobs_mean_equals_kalman_mean():
    # centred perturbations: the mean update is exactly the Kalman update of the mean
    E, H, y, sig = _case(seed=1)
    Ea = enkf_analysis(
        E, (E @ H.T) / sig, y / sig, method="pertobs", generator=torch.Generator().manual_seed(3)
    )
    mu, _ = _kalman(E, H, y, sig)
    assert torch.allclose(Ea.mean(0), mu, atol=1e-10)


def test_letkf_without_localisation_equals_etkf():
    E, H, y, sig = _case(seed=2)
    a = enkf_analysis(E, (E @ H.T) / sig, y / sig, method="sqrt")
    b = letkf_analysis(E, (E @ H.T) / sig, y / sig, torch.ones(E.shape[1], H.shape[0]))
    assert torch.allclose(a, b, atol=1e-10)


def test_rotation_and_taper():
    T = random_rotation(7, torch.Generator().manual_seed(0))
    assert torch.allclose(T @ T.T, torch.eye(7), atol=1e-12)
    assert torch.allclose(T @ torch.ones(7), torch.ones(7), atol=1e-12)
    r = torch.tensor([0.0, 1.0 - 1e-9, 1.0 + 1e-9, 2.0, 3.0])
    gc = gaspari_cohn(r)
    assert gc[0] == 1 and abs(float(gc[1] - gc[2])) < 1e-6 and gc[3].abs() < 1e-12 and gc[4] == 0
    tap = localization_taper(torch.arange(40.0), torch.arange(40.0), 4.0, period=40.0)
    assert 0.58 < float(tap[0, 4]) < 0.66  # ≈ exp(−½) = 0.61 at the radius (DAPPER convention)
    assert tap[0, 39] == tap[0, 1] and tap[0, 20] == 0


def _l96_twin(n=200, nx=40, seed=0):
    m = Lorenz96(nx=nx)
    g = torch.Generator().manual_seed(seed)
    x = m.initial_state() + torch.randn(nx, generator=g)
    with torch.no_grad():
        for _ in range(300):  # onto the attractor
            x = m.step(x)
        xs = []
        for _ in range(n):
            x = m.step(x)
            xs.append(x)
    xs = torch.stack(xs)
    obs = ObservationSet(torch.arange(1, n + 1) * m.dt, xs + torch.randn(xs.shape, generator=g), 1.0)
    return m, xs, obs, g


@pytest.mark.parametrize(
    ("method", "N", "infl"), [("sqrt", 28, 1.02), ("pertobs", 40, 1.06), ("letkf", 8, 1.04)]
)
def test_l96_filters_beat_observations_and_free_run(method, N, infl):
    m, xs, obs, g = _l96_twin(seed=0)
    x0 = xs[0] + 0.5 * torch.randn(40, generator=g)
    E0 = x0 + 0.5 * torch.randn(N, 40, generator=g)  # spread matches the first-guess error
    c = torch.arange(40.0)
    loc = {"state_coords": c, "obs_coords": c, "radius": 4.0, "period": 40.0}
    r = ensemble_filter(
        m,
        obs,
        E0,
        method=method,
        infl=infl,
        rot=method != "pertobs",
        localization=loc if method == "letkf" else None,
        generator=g,
    )
    rmse = (r.mean - xs).pow(2).mean(-1).sqrt()[80:].mean()
    # long-run values are 0.18-0.22 (benchmarks/dapper_l96.py); R = I so an unfiltered obs has RMSE 1
    assert float(rmse) < 0.35, float(rmse)
    assert float(r.spread[80:].mean()) < 0.5


def test_l96_augmented_state_estimates_forcing():
    m, xs, obs, g = _l96_twin(n=150, nx=40, seed=1)
    m.select_free(["F"])
    N = 30
    E0 = xs[0] + torch.randn(N, 40, generator=g)
    U0 = 6.0 + 0.5 * torch.randn(N, 1, generator=g)  # F is unbounded: raw = physical; first guess 6 ± 0.5
    r = ensemble_filter(m, obs, E0, method="sqrt", infl=1.03, params=U0, generator=g)
    F = r.params[-1, :, 0]
    assert abs(float(F.mean()) - 8.0) < 0.1 and float(F.std()) < 0.1


def test_ensemble_configuration_errors():
    m, _, obs, _ = _l96_twin(n=5)
    with pytest.raises(ConfigError, match="localization"):
        ensemble_filter(m, obs, torch.zeros(4, 40), method="letkf")
    with pytest.raises(ConfigError, match="ensemble method"):
        ensemble_filter(m, obs, torch.zeros(4, 40), method="enks")
    with pytest.raises(ConfigError, match="at least 2"):
        enkf_analysis(torch.zeros(1, 3), torch.zeros(1, 2), torch.zeros(2))

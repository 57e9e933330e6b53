"""ObservationSet: misfit, masking, operators, long-format CSV/NetCDF files and their validation, twins."""

from __future__ import annotations

from datetime import datetime

import pytest
import torch

from _inverse_models import DecayModel
from pelagos.core.errors import ObservationError, ShapeError
from pelagos.core.observations import ObservationSet
from pelagos.core.operators import IndexOperator, ProfileOperator, interpolate_profile
from pelagos.inverse.obsio import read_observations, synthetic_observations, write_csv, write_netcdf

pytestmark = pytest.mark.usefixtures("float64_default")


START = datetime(2002, 3, 1)


def test_nll_formula_and_nan_masking():
    y = torch.tensor([[1.0, float("nan")], [2.0, 3.0]])
    obs = ObservationSet(torch.tensor([0.0, 1.0]), y, torch.tensor([0.5, 2.0]))
    pred = torch.tensor([[1.5, 100.0], [1.0, 5.0]], requires_grad=True)
    J = obs.nll(pred)
    assert torch.allclose(J, torch.tensor(0.5 * ((0.5 / 0.5) ** 2 + (1.0 / 0.5) ** 2 + (2.0 / 2.0) ** 2)))
    (g,) = torch.autograd.grad(J, pred)
    assert torch.isfinite(g).all() and g[0, 1] == 0  # the missing value neither counts nor leaks NaN
    assert obs.n_obs == 3


def test_full_covariance_equals_whitened_formula():
    g = torch.Generator().manual_seed(0)
    L = torch.tril(torch.randn(3, 3, generator=g)) + 3 * torch.eye(3)
    R = L @ L.T
    y = torch.randn(4, 3, generator=g)
    pred = torch.randn(4, 3, generator=g)
    obs = ObservationSet(torch.arange(4.0), y, cov=R)
    d = pred - y
    ref = 0.5 * torch.einsum("ti,ij,tj->", d, torch.linalg.inv(R), d)
    assert torch.allclose(obs.nll(pred), ref)
    with pytest.raises(ObservationError, match="covariance"):
        ObservationSet(torch.arange(2.0), torch.tensor([[1.0, float("nan"), 0.0]] * 2), cov=R)


def test_log_transform_misfit():
    obs = ObservationSet(torch.tensor([0.0]), torch.tensor([[2.0]]), 0.1, log=True, log_floor=0.0)
    assert torch.allclose(obs.nll(torch.tensor([[2.0 * torch.e]])), torch.tensor(0.5 * (1 / 0.1) ** 2))


def test_ensemble_predictions_broadcast_against_shared_values():
    obs = ObservationSet(torch.arange(3.0), torch.ones(3, 2), 1.0)
    pred = torch.zeros(3, 5, 2)  # 5 members
    assert torch.allclose(obs.nll(pred, batch_dims=1), torch.full((5,), 3.0))


def test_validation_errors():
    with pytest.raises(ObservationError, match="sigma"):
        ObservationSet(torch.arange(2.0), torch.ones(2, 1), torch.tensor([[1.0], [-1.0]]))
    with pytest.raises(ObservationError, match="increasing"):
        ObservationSet(torch.tensor([1.0, 0.0]), torch.ones(2, 1), 1.0)
    with pytest.raises(ShapeError, match="n_t"):
        ObservationSet(torch.arange(3.0), torch.ones(2, 1), 1.0)
    obs = ObservationSet(torch.tensor([0.5, 1.25]), torch.ones(2, 1), 1.0)
    with pytest.raises(ObservationError, match=r"1\.25 \(row 1\).*multiple"):
        obs.step_indices(dt=0.5)
    with pytest.raises(ObservationError, match="outside the run"):
        obs.step_indices(dt=0.25, t0=1.0)


def test_profile_operator_interpolates_and_differentiates():
    z = torch.tensor([0.5, 1.5, 2.5, 3.5])  # centre depths, m
    prof = torch.tensor([[10.0, 20.0, 30.0, 40.0], [1.0, 2.0, 3.0, 4.0]], requires_grad=True)
    assert torch.allclose(
        interpolate_profile(prof, z, torch.tensor([1.0, 0.0, 5.0])).detach(),
        torch.tensor([[15.0, 10.0, 40.0], [1.5, 1.0, 4.0]]),
    )
    op = ProfileOperator([("phy", 2.0), ("nut", 0.5), ("phy", 3.0)], lambda s, v: s[v], z)
    out = op({"phy": prof, "nut": 2 * prof})
    assert torch.allclose(out.detach(), torch.tensor([[25.0, 20.0, 35.0], [2.5, 2.0, 3.5]]))
    # gradient = interpolation weights (forward == reverse mode)
    d = torch.randn(2, 4, generator=torch.Generator().manual_seed(1))
    _, jv = torch.func.jvp(
        lambda p: interpolate_profile(p, z, torch.tensor([2.2])).sum(), (prof.detach(),), (d,)
    )
    (g,) = torch.autograd.grad(interpolate_profile(prof, z, torch.tensor([2.2])).sum(), prof)
    assert torch.allclose(jv, (g * d).sum())
    assert torch.allclose(g[0], torch.tensor([0.0, 0.3, 0.7, 0.0]))


def _write(tmp_path, text):
    p = tmp_path / "obs.csv"
    p.write_text(text)
    return p


def test_csv_roundtrip_and_dense_table(tmp_path):
    p = _write(
        tmp_path,
        "time,depth,variable,value,sigma\n"
        "2002-03-01T06:00:00,5,npzd_phy,0.5,0.05\n"
        "2002-03-01T06:00:00,10,npzd_phy,0.4,0.05\n"
        "2002-03-02T00:00:00,5,npzd_phy,0.7,0.07\n"
        "2002-03-02T00:00:00,,npzd_sfc,1.0,0.1\n",
    )
    obs = read_observations(p, start="2002-03-01", variables=["npzd_phy", "npzd_sfc"])
    assert obs.times.tolist() == [6 * 3600.0, 24 * 3600.0]
    assert obs.columns[:2] == [("npzd_phy", 5.0), ("npzd_phy", 10.0)] and obs.columns[2][0] == "npzd_sfc"
    assert obs.n_obs == 4 and torch.isnan(obs.values[0, 2]) and torch.isnan(obs.values[1, 1])
    for writer, name in [(write_csv, "back.csv"), (write_netcdf, "back.nc")]:
        path = writer(obs, tmp_path / name)
        back = read_observations(path, start=START)
        assert torch.equal(back.times, obs.times) and back.columns[:2] == obs.columns[:2]
        assert torch.allclose(back.values, obs.values, equal_nan=True)
        assert torch.allclose(back.sigma[obs.mask], obs.sigma[obs.mask])
    with pytest.raises(ObservationError, match="no observation operator"):
        obs.operator(torch.zeros(3))


@pytest.mark.parametrize(
    ("row", "match"),
    [
        ("2002-03-01T06:00:00,5,npzd_zoo,0.5,0.05", r"obs.csv:2: unknown variable 'npzd_zoo'"),
        ("2001-12-31T00:00:00,5,npzd_phy,0.5,0.05", r"obs.csv:2: time .* outside the run"),
        ("2002-03-01T06:00:00,5,npzd_phy,0.5,-0.05", r"obs.csv:2: sigma must be .* > 0"),
        ("2002-03-01T06:00:00,5,npzd_phy,nan,0.05", r"obs.csv:2: value is nan"),
        ("2002-03-01T06:00:00,5,npzd_phy,0.5,", r"obs.csv:2: sigma"),
        ("yesterday,5,npzd_phy,0.5,0.05", r"obs.csv:2: time 'yesterday' is not ISO 8601"),
        ("2002-03-01T06:00:00,-5,npzd_phy,0.5,0.05", r"obs.csv:2: depth -5.0 m is negative"),
    ],
)
def test_bad_rows_are_named(tmp_path, row, match):
    p = _write(tmp_path, "time,depth,variable,value,sigma\n" + row + "\n")
    with pytest.raises(ObservationError, match=match):
        read_observations(p, start=START, end="2002-12-31", variables=["npzd_phy"])


def test_missing_column_and_drop_option(tmp_path):
    p = _write(tmp_path, "time,depth,variable,value\n2002-03-01T06:00:00,5,npzd_phy,0.5\n")
    with pytest.raises(ObservationError, match=r"missing column\(s\) \['sigma'\]"):
        read_observations(p, start=START)
    p = _write(
        tmp_path,
        "time,depth,variable,value,sigma\n2002-03-01T06:00:00,5,phy,nan,0.1\n"
        "2002-03-01T07:00:00,5,phy,1.0,0.1\n",
    )
    assert read_observations(p, start=START, missing="drop").n_obs == 1


def test_synthetic_observations_noise_models():
    model = DecayModel()
    x0 = torch.tensor([1.0, 0.5])
    times = torch.arange(1, 201) * model.dt
    g = torch.Generator().manual_seed(0)
    obs, h = synthetic_observations(model, x0, times, sigma=0.01, generator=g)
    assert abs(float(((obs.values - h) / 0.01).std()) - 1) < 0.08
    obs_l, h = synthetic_observations(model, x0, times, sigma=0.2, noise="lognormal", generator=g)
    assert obs_l.log is True and abs(float(torch.log(obs_l.values / h).std()) - 0.2) < 0.02
    sample = torch.zeros(200, 2, dtype=torch.bool)
    sample[::10, 0] = True
    obs_s, _ = synthetic_observations(model, x0, times, sigma=0.01, sample=sample, generator=g)
    assert obs_s.n_obs == 20
    assert IndexOperator([1])(x0).tolist() == [0.5]

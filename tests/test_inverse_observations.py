"""ObservationSet: misfit, masking, validation; the one observation stack (core.obsio): long-format CSV/NetCDF
files read for any model through its observation_operator, their validation (every error names file:line),
the writer, and synthetic observations for twins."""

from __future__ import annotations

from datetime import datetime

import pytest
import torch

from _inverse_models import DecayModel
from pelagos.core.errors import ObservationError, ShapeError
from pelagos.core.gradcheck import check_directional
from pelagos.core.model import Coordinate, Variable
from pelagos.core.observations import ObservationSet
from pelagos.core.obsio import (
    Sampling,
    read_observations,
    regular_times,
    synthetic_observations,
    write_observations,
)
from pelagos.core.operators import GridPointOperator, StackedOperator, interpolate_profile

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


@pytest.mark.parametrize("sigma", [0.0, -1.0, float("nan"), float("inf")])
def test_sigma_must_be_positive_and_finite(sigma):
    """Checked by ObservationSet itself (not only by the file reader): scalar, per entry, on assignment."""
    with pytest.raises(ObservationError, match="sigma must be finite and > 0"):
        ObservationSet(torch.arange(2.0), torch.ones(2, 1), sigma)
    with pytest.raises(ObservationError, match=r"sigma must be finite and > 0.*index \(1, 0\)"):
        ObservationSet(torch.arange(2.0), torch.ones(2, 1), torch.tensor([[1.0], [sigma]]))
    obs = ObservationSet(torch.arange(2.0), torch.ones(2, 1), 1.0)
    with pytest.raises(ObservationError, match="sigma must be finite and > 0"):
        obs.sigma = torch.full((2, 1), sigma)
    # a missing value needs no error
    ok = ObservationSet(
        torch.arange(2.0), torch.tensor([[1.0], [float("nan")]]), torch.tensor([[1.0], [sigma]])
    )
    assert ok.n_obs == 1


def test_covariance_must_be_positive_definite():
    with pytest.raises(ObservationError, match="positive definite"):
        ObservationSet(torch.arange(2.0), torch.ones(2, 2), cov=torch.tensor([[1.0, 2.0], [2.0, 1.0]]))


def test_validation_errors():
    with pytest.raises(ObservationError, match="increasing"):
        ObservationSet(torch.tensor([1.0, 0.0]), torch.ones(2, 1), 1.0)
    with pytest.raises(ShapeError, match="n_t"):
        ObservationSet(torch.arange(3.0), torch.ones(2, 1), 1.0)
    obs = ObservationSet(torch.tensor([0.5, 1.25]), torch.ones(2, 1), 1.0)
    with pytest.raises(ObservationError, match=r"1\.25 \(row 1\).*multiple"):
        obs.step_indices(dt=0.5)
    with pytest.raises(ObservationError, match="outside the run"):
        obs.step_indices(dt=0.25, t0=1.0)


def test_interpolation_and_grid_point_operator():
    z = torch.tensor([0.5, 1.5, 2.5, 3.5])  # centre depths, m
    prof = torch.tensor([[10.0, 20.0, 30.0, 40.0], [1.0, 2.0, 3.0, 4.0]], requires_grad=True)
    assert torch.allclose(
        interpolate_profile(prof, z, torch.tensor([1.0, 0.0, 5.0])).detach(),
        torch.tensor([[15.0, 10.0, 40.0], [1.5, 1.0, 4.0]]),
    )
    d = torch.randn(2, 4, generator=torch.Generator().manual_seed(1))
    _, jv = torch.func.jvp(
        lambda p: interpolate_profile(p, z, torch.tensor([2.2])).sum(), (prof.detach(),), (d,)
    )
    (g,) = torch.autograd.grad(interpolate_profile(prof, z, torch.tensor([2.2])).sum(), prof)
    assert torch.allclose(jv, (g * d).sum())
    assert torch.allclose(g[0], torch.tensor([0.0, 0.3, 0.7, 0.0]))
    model = Boxes()
    op = model.observation_operator("c", {"box": [1.0, 0.0, 0.25]})
    assert isinstance(op, GridPointOperator) and op.m == 3
    x = torch.tensor([[2.0, 4.0]])
    assert torch.allclose(op(x), torch.tensor([[4.0, 2.0, 2.5]]))


def test_grid_point_and_stacked_operators_gradients_match_central_fd():
    """float64 central FD of the reverse-mode gradient through GridPointOperator and StackedOperator."""
    model = Boxes()
    parts = [
        model.observation_operator("c", {"box": [0.3, 0.8]}),
        model.observation_operator("c", {"box": 1.0}),
    ]
    op = StackedOperator(parts)
    assert op.m == 3
    x = torch.tensor([[2.0, 4.0], [1.0, -3.0]], dtype=torch.float64)
    for H in [*parts, op]:
        rep = check_directional(lambda x, H=H: torch.sin(H(x)), [x], n_directions=2, tol=1e-7)
        assert rep.passed, rep


# -- a small model with declared variables, coordinates and an epoch ------------------------------------
class Boxes(DecayModel):
    """The two-box decay model (state (..., 2)) with a variable ``c`` along ``box`` and a calendar."""

    epoch = datetime(2002, 3, 1)

    def __init__(self) -> None:
        super().__init__(dt=1800.0)

    def output_variables(self):
        return [Variable("c", "mmol m-3", "concentration", dims=("box",))]

    def output_coordinates(self):
        return {"box": Coordinate(torch.tensor([0.0, 1.0]), "1", "box number")}


class Undated(Boxes):
    epoch = None


HEAD = "time,variable,value,sigma,box\n"


def _write(tmp_path, text, name="obs.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_read_dense_table_dates_seconds_nan_and_roundtrip(tmp_path):
    p = _write(
        tmp_path,
        "# comment lines and blank lines are skipped\n"
        "Time, Variable ,value,sigma,box\n"  # names: case and spaces do not matter
        "2002-03-01T06:00:00,c,0.5,0.05,0\n"
        "\n"
        "2002-03-01 06:00:00,c,0.4,0.05,1\n"
        "86400,c,0.7,0.07,0\n"  # model seconds = 2002-03-02
        "2002-03-02,c,,,1\n",  # missing value: masked, needs no sigma
    )
    model = Boxes()
    obs = read_observations(p, model, start="2002-03-01", stop=2 * 86400.0)
    assert obs.times.tolist() == [6 * 3600.0, 24 * 3600.0]
    assert obs.columns == [("c", {"box": 0.0}), ("c", {"box": 1.0})]
    assert obs.n_obs == 3 and torch.isnan(obs.values[1, 1]) and obs.start == model.epoch
    assert obs.meta["lines"][(0, 1)].endswith("obs.csv:5")
    x = torch.tensor([1.0, 0.5])
    assert torch.allclose(obs.operator(x), x)
    for name in ("back.csv", "back.nc"):
        path = write_observations(obs, tmp_path / name)
        back = read_observations(path, model)
        assert torch.equal(back.times, obs.times) and back.columns == obs.columns
        assert torch.allclose(back.values, obs.values, equal_nan=True)
        assert torch.allclose(back.sigma[obs.mask], obs.sigma[obs.mask])
    assert "2002-03-01 06:00:00,c,0.5,0.05,0" in (tmp_path / "back.csv").read_text()
    # without an epoch: times are model seconds, written as numbers; dates are refused
    undated = Undated()
    obs2 = read_observations(_write(tmp_path, HEAD + "3600,c,1.5,0.1,1\n", "s.csv"), undated)
    assert obs2.times.tolist() == [3600.0] and obs2.start is None
    for name in ("s2.csv", "s2.nc"):
        back = read_observations(write_observations(obs2, tmp_path / name), undated)
        assert torch.equal(back.times, obs2.times) and torch.equal(back.values, obs2.values)
    with pytest.raises(
        ObservationError, match=r"obs.csv:2: time 2002-03-01 00:00:00 is a date but Undated has"
    ):
        read_observations(_write(tmp_path, HEAD + "2002-03-01,c,1.5,0.1,1\n"), undated)


@pytest.mark.parametrize(
    ("row", "match"),
    [
        ("2002-03-01T06:00:00,cc,0.5,0.05,0", r"obs.csv:3: unknown variable 'cc'; did you mean 'c'\?"),
        ("2001-12-31T00:00:00,c,0.5,0.05,0",
         r"obs.csv:3: time 2001-12-31 00:00:00 is outside the window "
         r"\[2002-03-01 00:00:00, 2002-12-31 00:00:00\]"),
        ("2002-03-01T06:00:00,c,0.5,-0.05,0", r"obs.csv:3: sigma must be a finite number > 0; got '-0.05'"),
        ("2002-03-01T06:00:00,c,0.5,0,0", r"obs.csv:3: sigma must be a finite number > 0; got '0'"),
        ("2002-03-01T06:00:00,c,0.5,,0", r"obs.csv:3: sigma is empty"),
        ("2002-03-01T06:00:00,c,inf,0.05,0", r"obs.csv:3: value is 'inf'"),
        ("2002-03-01T06:00:00,c,lots,0.05,0", r"obs.csv:3: value 'lots' is not a number"),
        ("yesterday,c,0.5,0.05,0", r"obs.csv:3: time 'yesterday' is neither model seconds nor an ISO date"),
        (",c,0.5,0.05,0", r"obs.csv:3: time is empty"),
        ("2002-03-01T06:10:00,c,0.5,0.05,0",
         r"obs.csv:3: time 2002-03-01 06:10:00 is not on the model's step grid"),
        ("2002-03-01T06:00:00,c,-999,0.05,0", r"obs.csv:3: value '-999' of c is <= 0 but c is compared"),
        ("2002-03-01T06:00:00,c,0.5,0.05,", r"obs.csv:3: c varies along 'box' \(2 values\)"),
        ("2002-03-01T06:00:00,c,0.5,0.05,0",
         r"obs.csv:3: c at box=0 at 2002-03-01 06:00:00 is observed twice \(also at .*obs.csv:2\)"),
        ("2002-03-01T06:00:00,c,0.5,0.05,0,7", r"obs.csv:3: 6 fields but the header names 5"),
    ],
)  # fmt: skip
def test_bad_rows_are_named(tmp_path, row, match):
    good = "2002-03-01T06:00:00,c,0.5,0.05,0\n"
    p = _write(tmp_path, HEAD + good + row + "\n")
    with pytest.raises(ObservationError, match=match):
        read_observations(p, Boxes(), start="2002-03-01", stop="2002-12-31", log=True)


def test_header_and_window_errors(tmp_path):
    model = Boxes()
    with pytest.raises(ObservationError, match=r"obs.csv:1: the header variable,value,sigma,box lacks time"):
        read_observations(_write(tmp_path, "variable,value,sigma,box\n"), model)
    with pytest.raises(ObservationError, match=r"obs.csv:1: unknown column 'boxx'; did you mean 'box'\?"):
        read_observations(_write(tmp_path, "time,variable,value,sigma,boxx\n"), model)
    with pytest.raises(ObservationError, match="no observation rows"):
        read_observations(_write(tmp_path, HEAD), model)
    with pytest.raises(ObservationError, match=r"ends \(2002-02-01 00:00:00\) before it starts"):
        read_observations(_write(tmp_path, HEAD), model, start="2002-03-01", stop="2002-02-01")
    with pytest.raises(ObservationError, match="does not exist"):
        read_observations(tmp_path / "nope.csv", model)
    with pytest.raises(ObservationError, match=r"unknown observation file type '\.xlsx'"):
        read_observations(_write(tmp_path, HEAD, "obs.xlsx"), model)
    # no sigma column: a default sigma for every row
    obs = read_observations(_write(tmp_path, "time,variable,value,box\n3600,c,1.0,0\n"), model, sigma=0.3)
    assert float(obs.sigma[0, 0]) == 0.3


def test_netcdf_rows_are_named(tmp_path):
    model = Boxes()
    obs = read_observations(_write(tmp_path, HEAD + "3600,c,1.0,0.1,0\n7200,c,2.0,0.1,1\n"), model)
    path = write_observations(obs, tmp_path / "o.nc")
    with pytest.raises(
        ObservationError, match=r"o.nc\[obs=1\]: time 2002-03-01 02:00:00 is outside the window"
    ):
        read_observations(path, model, stop=3600.0)


def test_step_indices_name_the_file_line_and_date(tmp_path):
    model = Boxes()
    obs = read_observations(_write(tmp_path, HEAD + "3600,c,1.0,0.1,0\n5400,c,2.0,0.1,1\n"), model)
    with pytest.raises(
        ObservationError, match=r"2002-03-01 01:30:00 \(row 1, .*obs.csv:3\) is not a multiple"
    ):
        obs.step_indices(dt=3600.0)
    assert obs.select([1]).meta["lines"] == {(0, 1): obs.meta["lines"][(1, 1)]}  # lines follow a selection
    # a batch dim of size 1 (one column of a dict state) is written like (n_t, m)
    one = ObservationSet(
        obs.times, obs.values[:, None], obs.sigma[:, None], columns=obs.columns, start=obs.start
    )
    back = read_observations(write_observations(one, tmp_path / "one.csv"), model)
    assert torch.allclose(back.values, obs.values, equal_nan=True)


def test_synthetic_observations_noise_models():
    model = DecayModel()
    x0 = torch.tensor([1.0, 0.5])
    times = torch.arange(1, 201) * model.dt
    g = torch.Generator().manual_seed(0)
    obs = synthetic_observations(model, x0, times, sigma=0.01, generator=g)
    h = obs.meta["truth"]
    assert abs(float(((obs.values - h) / 0.01).std()) - 1) < 0.08
    obs_l = synthetic_observations(model, x0, times, sigma=0.2, noise="lognormal", generator=g)
    assert obs_l.log is True and abs(float(torch.log(obs_l.values / obs_l.meta["truth"]).std()) - 0.2) < 0.02
    obs_n = synthetic_observations(model, x0, times, sigma=0.01, rel_sigma=0.1, noise="none")
    assert torch.equal(obs_n.values, h) and torch.allclose(obs_n.sigma, 0.01 + 0.1 * h.abs())
    with pytest.raises(ObservationError, match="noise must be"):
        synthetic_observations(model, x0, times, noise="uniform")
    with pytest.raises(ObservationError, match=r"sigma \+ rel_sigma"):
        synthetic_observations(model, x0, times, sigma=0.0)


def test_synthetic_observations_through_the_model_hook(tmp_path):
    """Samplings with their own times: one dense table, NaN where a column is not sampled; dates work."""
    model = Boxes()
    x0 = torch.tensor([1.0, 0.5])
    every_hour = regular_times(model, 0.0, 6 * 3600.0, 3600.0)
    assert every_hour == [3600.0 * k for k in range(1, 7)]
    obs = synthetic_observations(
        model,
        x0,
        every_hour,
        [Sampling("c", {"box": 0.0}), Sampling("c", {"box": [1.0]}, times=["2002-03-01 03:00", 21600.0])],
        noise="none",
        sigma=0.1,
    )
    assert obs.columns == [("c", {"box": 0.0}), ("c", {"box": 1.0})]
    assert obs.n_obs == 6 + 2 and torch.isnan(obs.values[0, 1]) and not torch.isnan(obs.values[2, 1])
    from pelagos.inverse.forward import predict

    assert torch.allclose(predict(model, x0, obs)[obs.mask], obs.values[obs.mask])
    back = read_observations(write_observations(obs, tmp_path / "twin.csv"), model, start=0.0)
    assert torch.allclose(back.values, obs.values, equal_nan=True)
    with pytest.raises(ObservationError, match="unknown variable 'x'"):
        synthetic_observations(model, x0, every_hour, [Sampling("x", {"box": 0.0})])
    with pytest.raises(ObservationError, match="not a step after start"):
        synthetic_observations(model, x0, [100.0], [Sampling("c", {"box": 0.0})])


def test_binary_file_is_refused_clearly(tmp_path):
    p = tmp_path / "obs.csv"
    p.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe")
    with pytest.raises(ObservationError, match="not a UTF-8 text"):
        read_observations(p, Boxes())


def test_a_model_without_variables_is_named(tmp_path):
    p = _write(tmp_path, "time,variable,value,sigma\n1.0,x,0.5,0.1\n")
    with pytest.raises(ObservationError, match=r"obs.csv:2: DecayModel cannot observe 'x'.*declare"):
        read_observations(p, DecayModel())


def _kinds():
    from pelagos.core.registry import model_kinds

    return [k if isinstance(k, str) else k.name for k in model_kinds()]


@pytest.mark.parametrize("kind", _kinds())
def test_every_registered_model_twin_file_roundtrip(kind, tmp_path):
    """One twin → file → reader path for every registered model: the first variable at a grid point."""
    from pelagos.core.registry import get_model_kind

    model = get_model_kind(kind).example()
    var = model.output_variables()[0]
    coords = model.output_coordinates()
    at = {d: float(torch.as_tensor(coords[d].values).reshape(-1)[-1]) for d in var.dims} or None
    state = model.initial_state()
    times = [model.dt, 2 * model.dt]
    obs = synthetic_observations(model, state, times, [Sampling(var.name, at)], noise="none", sigma=1.0)
    assert obs.n_obs == obs.values.numel() == 2 * obs.values[0].numel()
    back = read_observations(write_observations(obs, tmp_path / "twin.csv"), model, start=0.0)
    assert back.columns == obs.columns
    assert torch.allclose(back.values.reshape(2, -1), obs.values.reshape(2, -1), rtol=1e-12)
    from pelagos.inverse.forward import predict

    assert torch.allclose(predict(model, state, back).reshape(2, -1), obs.values.reshape(2, -1), rtol=1e-9)

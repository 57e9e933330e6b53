"""Inverse problems on the water column: observation operators, CSV observations, twins (4D-Var, ES-MDA)."""

from __future__ import annotations

import math

import pytest
import torch

from pelagos.column import ColumnForcing, ColumnModel, compact_forcing_path
from pelagos.column.background import ColumnBackground
from pelagos.column.coarsen import coarsen_forcing
from pelagos.column.observe import ColumnObservationOperator
from pelagos.column.stacked import StackedColumn
from pelagos.core.errors import ObservationError
from pelagos.core.obsio import (
    Sampling,
    read_observations,
    regular_times,
    synthetic_observations,
    write_observations,
)
from pelagos.inverse.calibrate import calibrate
from pelagos.inverse.forward import predict
from pelagos.io.config import resolve_path

DAY = 86400.0
VARS = ["npzd_nut", "npzd_phy", "npzd_zoo", "npzd_det"]


def twin(model, x0, patterns, *, t0, t_end, noise="none", rel=0.2, seed=0):
    """Synthetic column observations: ``patterns`` = [(variable, depths, every s)], from t0 + every."""
    samplings = [
        Sampling(v, {"depth": d}, regular_times(model, t0, t_end, every)) for v, d, every in patterns
    ]
    sigma, rel_sigma = (rel, 0.0) if noise == "lognormal" else (0.0, rel)
    kind = {"relative": "gaussian"}.get(noise, noise)
    return synthetic_observations(
        model, x0, None, samplings, start=t0, noise=kind, sigma=sigma, rel_sigma=rel_sigma,
        generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip


# -- operators -------------------------------------------------------------------------------------------
def _h():
    return torch.tensor([12.0, 8.0, 5.0, 3.0, 2.0], dtype=torch.float64)  # bottom -> surface, 30 m


def _centres(h):
    above = torch.flip(torch.cumsum(torch.flip(h, [0]), 0), [0]) - h
    return above + 0.5 * h


def test_depth_interpolation_exact_on_linear_profiles():
    h = _h()
    z = _centres(h)  # 1, 3.5, 7.5, 14, 24
    depths = [1.0, 2.0, 3.5, 5.1, 10.0, 20.0, 24.0]
    op = ColumnObservationOperator([("npzd_phy", d) for d in depths] + [("npzd_nut", 9.0)], VARS, h)
    x = torch.zeros(2, 4, 5, dtype=torch.float64)
    a = torch.tensor([0.3, -1.0], dtype=torch.float64)
    b = torch.tensor([0.05, 0.2], dtype=torch.float64)
    x[:, 1] = a[:, None] + b[:, None] * z
    x[:, 0] = 7.0 - 0.1 * z
    y = op(x)
    expect = a[:, None] + b[:, None] * torch.tensor(depths, dtype=torch.float64)
    assert torch.allclose(y[:, :-1], expect, atol=1e-12)
    assert torch.allclose(y[:, -1], torch.tensor(7.0 - 0.9, dtype=torch.float64), atol=1e-12)
    # above the top centre / below the bottom centre: the layer's own value
    op2 = ColumnObservationOperator([("npzd_phy", 0.0), ("npzd_phy", 29.0), ("npzd_phy", "surface")], VARS, h)
    y2 = op2(x)
    assert torch.allclose(y2[:, 0], x[:, 1, -1]) and torch.allclose(y2[:, 1], x[:, 1, 0])
    assert torch.allclose(y2[:, 2], x[:, 1, -1])


def test_depth_integral_and_dict_state():
    h = _h()
    op = ColumnObservationOperator([("npzd_det", "integral"), ("npzd_nut", "integral")], VARS, h)
    x = torch.rand(3, 4, 5, dtype=torch.float64)
    y = op(x)
    assert torch.allclose(y[:, 0], (h * x[:, 3]).sum(-1), rtol=1e-14)
    assert torch.allclose(y[:, 1], (h * x[:, 0]).sum(-1), rtol=1e-14)
    d = {n: x[:, i] for i, n in enumerate(VARS)}
    assert torch.equal(op(d), y)


def test_operator_gradients_fd_and_forward_mode():
    h = _h()
    op = ColumnObservationOperator(
        [("npzd_phy", 4.0), ("npzd_nut", "integral"), ("npzd_det", "surface"), ("npzd_zoo", 17.3)], VARS, h
    )
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 5, generator=g, dtype=torch.float64)
    w = torch.rand(op.m, generator=g, dtype=torch.float64)
    v = torch.randn(4, 5, generator=g, dtype=torch.float64)

    def f(x):
        return (w * torch.sin(op(x))).sum()

    xx = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(f(xx), xx)
    eps = 1e-6
    fd = (f(x + eps * v) - f(x - eps * v)) / (2 * eps)
    assert abs(float((grad * v).sum() - fd)) <= 1e-6 * abs(float(fd)) + 1e-12
    _, jv = torch.func.jvp(f, (x,), (v,))
    assert torch.allclose(jv, (grad * v).sum(), rtol=1e-12)


def test_operator_errors():
    with pytest.raises(ObservationError, match="unknown variable 'chl'"):
        ColumnObservationOperator([("chl", 1.0)], VARS, _h())
    with pytest.raises(ObservationError, match="unknown variable 'phy'; did you mean 'npzd_phy'"):
        ColumnObservationOperator([("phy", 1.0)], VARS, _h())
    with pytest.raises(ObservationError, match="below the column bottom"):
        ColumnObservationOperator([("npzd_phy", 31.0)], VARS, _h())
    with pytest.raises(ObservationError, match="depth must be"):
        ColumnObservationOperator([("npzd_phy", -1.0)], VARS, _h())


# -- a small column ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small():
    """2 layers of 55 m (NNS physics), 12-h step, April 1998: the bloom onset."""
    fine = ColumnForcing.from_gotm(compact_forcing_path())
    t0 = fine.seconds("1998-04-01")
    dt = 12 * 3600.0
    f = coarsen_forcing(fine, layers=11, dt=dt, start=t0, stop=t0 + 30 * DAY)
    model = StackedColumn(ColumnModel(resolve_path("builtin:fabm/fabm-gotm-npzd.yaml", None), f, dt=dt))
    x0 = torch.tensor([[5.0, 5.0], [0.3, 0.3], [0.01, 0.01], [2.0, 2.0]], dtype=torch.float64)
    return model, x0, t0


def _reset(model):
    for n, v in {"npzd.rmax": 1.0, "npzd.gmax": 0.2, "npzd.alpha": 1.35}.items():
        model.set_parameter_value(n, v)


def test_csv_roundtrip_and_errors(small, tmp_path):
    model, x0, t0 = small
    _reset(model)
    obs = twin(
        model,
        x0,
        [("npzd_phy", ["surface"], 5 * DAY), ("npzd_nut", [10.0, 80.0], 10 * DAY)],
        t0=t0,
        t_end=t0 + 30 * DAY,
        noise="relative",
        rel=0.1,
        seed=1,
    )
    assert obs.columns == [
        ("npzd_phy", {"depth": "surface"}), ("npzd_nut", {"depth": 10.0}), ("npzd_nut", {"depth": 80.0})
    ]  # fmt: skip
    p = write_observations(obs, tmp_path / "obs.csv")
    window = {"start": t0, "stop": t0 + 30 * DAY}
    back = read_observations(p, model, **window)
    assert back.n_obs == obs.n_obs == 6 + 3 * 2
    assert torch.allclose(back.times, obs.times)
    assert torch.allclose(back.values.nan_to_num(-1), obs.values.nan_to_num(-1), rtol=1e-7)
    assert torch.allclose(predict(model, x0, back, t0=t0), predict(model, x0, obs, t0=t0))
    text = p.read_text().splitlines()
    header, row = text[0], text[1]
    assert header == "time,depth,variable,value,sigma" and row.startswith(
        "1998-04-06 00:00:00,surface,npzd_phy,"
    )

    def write(line: str):
        q = tmp_path / "bad.csv"
        q.write_text(header + "\n" + row + "\n" + line + "\n")
        return q

    t = row.split(",")[0]
    bad = {
        f"{t},5,chlorophyll,1.0,0.1": r"bad.csv:3: unknown variable 'chlorophyll'",
        f"{t},5,phy,1.0,0.1": r"bad.csv:3: unknown variable 'phy'; did you mean 'npzd_phy'\?",
        "1999-01-01 00:00:00,5,npzd_phy,1.0,0.1": r"bad.csv:3: time 1999-01-01 00:00:00 is outside the "
        r"window \[1998-04-01 00:00:00, 1998-05-01 00:00:00\]",
        f"{t},5,npzd_phy,1.0,-0.1": r"bad.csv:3: sigma must be",
        f"{t},deep,npzd_phy,1.0,0.1": r"bad.csv:3: depth 'deep' is neither a number",
        f"{t},-5,npzd_phy,1.0,0.1": r"bad.csv:3: depth -5 m is negative",
        f"{t},120,npzd_phy,1.0,0.1": r"bad.csv:3: observation of npzd_phy at 120 m is below the column",
        f"{t},,npzd_phy,1.0,0.1": r"bad.csv:3: npzd_phy is a profile \(2 layers\): give a depth",
        row: r"bad.csv:3: npzd_phy at the surface at 1998-04-06 00:00:00 is observed twice \(also at "
        r".*bad.csv:2\)",
    }
    for line, match in bad.items():
        with pytest.raises(ObservationError, match=match):
            read_observations(write(line), model, **window)
    # a NaN value is masked, not an error
    assert read_observations(write(f"{t},5,npzd_phy,nan,0.1"), model, **window).n_obs == 1
    q = tmp_path / "nohead.csv"
    q.write_text("t,z,var,value\n")
    with pytest.raises(
        ObservationError, match=r"nohead.csv:1: the header t,z,var,value lacks time, variable"
    ):
        read_observations(q, model)


def test_example_observation_file_and_z_coordinate(tmp_path):
    """examples/data/npzd_nns_obs.csv (depth 'surface' and metres) reads for the NNS column; 'z' (GOTM's,
    negative down) locates the same points as depth."""
    from pathlib import Path

    fine = ColumnForcing.from_gotm(compact_forcing_path())
    model = ColumnModel(resolve_path("builtin:fabm/fabm-gotm-npzd.yaml", None), fine, dt=21600.0)
    path = Path(__file__).parents[1] / "examples" / "data" / "npzd_nns_obs.csv"
    obs = read_observations(path, model, start="1998-03-15", stop="1998-05-15", log=True)
    assert obs.n_obs == 24 and obs.log is True
    assert (
        obs.columns[0] == ("npzd_phy", {"depth": "surface"}) and ("npzd_nut", {"depth": 100.0}) in obs.columns
    )
    x = model.initial_state(1)
    assert obs.operator(x).shape == (1, obs.m)
    by_z = model.observation_operator("npzd_nut", {"z": [-5.0, -100.0]})
    by_depth = model.observation_operator("npzd_nut", {"depth": [5.0, 100.0]})
    assert torch.equal(by_z.W, by_depth.W)
    with pytest.raises(ObservationError, match="by 'depth'"):
        model.observation_operator("npzd_nut", {"lev": 1})
    with pytest.raises(ObservationError, match="negative down"):
        model.observation_operator("npzd_nut", {"z": 5.0})
    bad = tmp_path / "neg.csv"
    bad.write_text(path.read_text().replace("0.40154025", "-999", 1))
    with pytest.raises(ObservationError, match=r"neg.csv:3: value '-999' of npzd_phy is <= 0 .* log"):
        read_observations(bad, model, start="1998-03-15", stop="1998-05-15", log=True)


def test_cost_gradient_fd_through_the_column(small):
    """dJ/d(parameters, initial-state increment) of the column 4D-Var cost vs central FD (float64)."""
    from pelagos.inverse.problem import VariationalProblem

    model, x0, t0 = small
    _reset(model)
    obs = twin(
        model,
        x0,
        [("npzd_phy", ["surface", 60.0], 4 * DAY), ("npzd_nut", ["integral"], 8 * DAY)],
        t0=t0,
        t_end=t0 + 16 * DAY,
        noise="lognormal",
        rel=0.2,
        seed=2,
    )
    model.select_free(["npzd.rmax", "npzd.alpha"])
    B = ColumnBackground(0.2 * x0 + 1e-3, torch.tensor([82.5, 27.5]), 30.0)
    prob = VariationalProblem(model, obs, x0, t0=t0, control_state=True, B=B)
    g = torch.Generator().manual_seed(3)
    z = 0.3 * torch.randn(prob.size, generator=g, dtype=torch.float64)
    d = torch.randn(prob.size, generator=g, dtype=torch.float64)
    zz = z.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(prob.cost(zz), zz)
    eps = 1e-5
    with torch.no_grad():
        fd = (prob.cost(z + eps * d) - prob.cost(z - eps * d)) / (2 * eps)
    assert abs(float(grad @ d) - float(fd)) <= 1e-6 * abs(float(fd))
    model.select_free([])


@pytest.mark.parametrize("noise", ["none", "lognormal"])
def test_small_twin_recovers_parameters(small, noise):
    model, x0, t0 = small
    truth = {"npzd.rmax": 1.0, "npzd.gmax": 0.2, "npzd.alpha": 1.35}
    _reset(model)
    obs = twin(
        model,
        x0,
        [
            ("npzd_phy", ["surface"], 2 * DAY),
            ("npzd_nut", [5.0, 80.0], 4 * DAY),
            ("npzd_zoo", ["surface"], 4 * DAY),
        ],
        t0=t0,
        t_end=t0 + 20 * DAY,
        noise="lognormal" if noise == "lognormal" else "none",
        rel=0.15,
        seed=4,
    )
    if noise == "none":
        obs.log = True
        obs.sigma = torch.full_like(obs.values, 0.15)
    guess = {"npzd.rmax": 0.6, "npzd.gmax": 0.35, "npzd.alpha": 2.2}
    for n, v in guess.items():
        model.set_parameter_value(n, v)
    res = calibrate(
        model, obs, x0, free=list(truth), t0=t0, max_iter=40, uncertainty="gauss-newton", write_back=False
    )
    for n, v in truth.items():
        if noise == "none":  # exact data: the optimum is the truth
            assert abs(res.estimates[n] - v) <= 1e-3 * v, (n, res.estimates[n])
            assert res.std[n] > 0
        else:
            assert abs(res.estimates[n] - v) <= 2.5 * res.std[n], (n, res.estimates[n], res.std[n])
    assert res.history[-1] < 0.01 * res.history[0] or noise != "none"
    _reset(model)
    model.select_free([])


def test_esmda_agrees_with_gradient_estimate(small):
    from pelagos.inverse.ensemble import esmda, sample_prior

    model, x0, t0 = small
    _reset(model)
    obs = twin(
        model,
        x0,
        [("npzd_phy", ["surface"], 2 * DAY), ("npzd_nut", [5.0], 4 * DAY)],
        t0=t0,
        t_end=t0 + 16 * DAY,
        noise="lognormal",
        rel=0.15,
        seed=5,
    )
    model.select_free(["npzd.rmax", "npzd.alpha"])
    model.set_prior("npzd.rmax", 0.8, 0.5)
    model.set_prior("npzd.alpha", 1.8, 0.5)
    model.set_parameter_value("npzd.rmax", 0.8)
    model.set_parameter_value("npzd.alpha", 1.8)
    res = calibrate(model, obs, x0, t0=t0, max_iter=30, uncertainty="gauss-newton", write_back=False)
    U = sample_prior(model, 128, generator=torch.Generator().manual_seed(6))
    ens = esmda(
        model, obs, x0.expand(128, *x0.shape), U, alphas=4, t0=t0, generator=torch.Generator().manual_seed(7)
    )
    for n in model.free_parameter_names():
        u_grad, s_grad = res.raw[n], res.raw_std[n]
        assert abs(ens.raw_mean[n] - u_grad) <= 0.5 * s_grad + 0.05, (n, ens.raw_mean[n], u_grad, s_grad)
        assert 0.4 < ens.raw_std[n] / s_grad < 2.5, (n, ens.raw_std[n], s_grad)
    for n in ("npzd.rmax", "npzd.alpha"):
        model.parameter_spec(n).prior = None
    _reset(model)
    model.select_free([])
    assert math.isfinite(ens.history[-1])


# The YAML driver's test (calibrate, ES-MDA, 4D-Var of the column from a configuration) moved to
# tests/test_inverse_cli.py::test_column_calibrate_esmda_4dvar (the one generic driver).


def test_weak_constraint_4dvar_absorbs_model_error_on_the_column(small):
    # Truth grows phytoplankton faster (rmax 1.3) than the model used for assimilation (rmax 1.0): a model
    # error. Strong-constraint 4D-Var can only move the initial state; weak-constraint 4D-Var also adds a
    # model-error forcing every 2 days (Q) and must fit the observations better and end closer to the truth.
    from pelagos.inverse.fourdvar import fourdvar

    model, x0, t0 = small
    _reset(model)
    model.select_free([])
    model.set_parameter_value("npzd.rmax", 1.3)
    pattern = [("npzd_phy", ["surface", 60.0], 2 * DAY), ("npzd_nut", [5.0], 2 * DAY)]
    obs = twin(model, x0, pattern, t0=t0, t_end=t0 + 16 * DAY, noise="none")
    _, truth_end = predict(model, x0, obs, t0=t0, return_final=True)
    truth_end = truth_end.reshape(-1)
    _reset(model)
    obs.sigma = 0.05 * obs.values.abs() + 1e-3
    B = ColumnBackground(0.2 * x0 + 1e-3, torch.tensor([82.5, 27.5]), 30.0)
    Q = ColumnBackground(0.1 * x0 + 1e-3, torch.tensor([82.5, 27.5]), 30.0)
    strong = fourdvar(model, obs, x0, B, t0=t0, max_iter=60)
    weak = fourdvar(model, obs, x0, B, t0=t0, Q=Q, model_error_every=4, max_iter=60)
    assert weak.model_error is not None and weak.model_error.abs().sum() > 0
    assert weak.cost_terms["obs"] < 0.5 * strong.cost_terms["obs"]

    def err(final):
        return float((final.reshape(-1) - truth_end).norm() / truth_end.norm())

    assert err(weak.final) < err(strong.final)


def test_empty_depth_means_no_vertical_position(tmp_path):
    """An empty depth: right for a bottom pool (no vertical dim), an error naming the row for a profile."""
    from pelagos.bgc.system import BGCSystem

    f = ColumnForcing.from_gotm(compact_forcing_path(), bottom_stress=0.0)
    bgc = BGCSystem.from_yaml(
        resolve_path("builtin:fabm/fabm-nersc-ecosmo.yaml", None), drop_unsupported=True
    )
    model = ColumnModel(bgc, f, dt=3600.0)
    assert "ECO_sed1" in model.bottom
    p = tmp_path / "sed.csv"
    p.write_text(
        "time,depth,variable,value,sigma\n"
        "1998-04-01 01:00,,ECO_sed1,300,30\n"
        "1998-04-01 01:00,surface,ECO_no3,5,0.5\n"
    )
    obs = read_observations(p, model)
    assert obs.columns == [("ECO_sed1", {}), ("ECO_no3", {"depth": "surface"})]
    x = model.initial_state()
    assert torch.equal(obs.operator(x), torch.stack([x["ECO_sed1"], x["ECO_no3"][:, -1]], -1))
    p.write_text("time,depth,variable,value,sigma\n1998-04-01 01:00,5,ECO_sed1,300,30\n")
    with pytest.raises(ObservationError, match=r"sed.csv:2: ECO_sed1 is attached to the bottom"):
        read_observations(p, model)
    p.write_text("time,depth,variable,value,sigma\n1998-04-01 01:00,,ECO_no3,5,0.5\n")
    with pytest.raises(ObservationError, match=r"sed.csv:2: ECO_no3 is a profile"):
        read_observations(p, model)

"""Issue 11 experiments through the command line: ``initial.restart`` (start from a spin-up), the generic
``pelagos sensitivity`` map (forward-mode arrows = finite differences of the loss), the ocean calibration
configuration, and the gradient-cost script's helpers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from pelagos.cli import main
from pelagos.core.errors import ConfigError
from pelagos.io.build import run, setup
from pelagos.io.config import load_config

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def _l63(tmp_path: Path, **extra) -> dict:
    cfg = {
        "title": "L63 twin",
        "model": {"kind": "lorenz63", "dtype": "float64"},
        "time": {"start": 0, "duration": 0.3, "dt": 0.01},
        "parameters": {"rho": 25.0, "sigma": 9.0},
        "observations": {
            "synthetic": {
                "truth": {"rho": 28.0, "sigma": 10.0},
                "patterns": [{"variable": "x", "every": 0.05}, {"variable": "z", "every": 0.05}],
                "sigma": 0.5,
                "seed": 1,
            }
        },
        "method": {"kind": "calibrate", "free": ["rho", "sigma"]},
        "_base": str(tmp_path),
    }
    cfg.update(extra)
    return cfg


# -- initial.restart ---------------------------------------------------------------------------------------
def test_initial_restart_starts_from_the_state_a_run_wrote(tmp_path):
    spin = {
        "model": {"kind": "lorenz63"},
        "time": {"duration": 0.5, "dt": 0.01},
        "output": {"file": "spin.nc"},
        "restart": {"file": "spin.restart.pt"},
        "_base": str(tmp_path),
    }
    run(spin, progress=False)
    from pelagos.core.restart import load_restart

    stored = load_restart(tmp_path / "spin.restart.pt").state[0]
    cfg = load_config(
        {
            "model": {"kind": "lorenz63"},
            "time": {"duration": 0.1},
            "initial": {"restart": "spin.restart.pt"},
            "_base": str(tmp_path),
        }
    )
    s = setup(cfg)
    default = setup(load_config({"model": {"kind": "lorenz63"}, "time": {"duration": 0.1}})).state
    assert torch.equal(s.state, stored)
    assert not torch.equal(s.state, default)  # it really moved away from the default start


def test_initial_restart_errors_name_the_key(tmp_path):
    cfg = load_config(
        {
            "model": {"kind": "lorenz63"},
            "time": {"duration": 0.1},
            "initial": {"restart": "missing.pt"},
            "_base": str(tmp_path),
        }
    )
    with pytest.raises(ConfigError, match=r"initial.restart: .*missing.pt not found"):
        setup(cfg)
    with pytest.raises(ConfigError, match=r"initial\.restart must be the path"):
        load_config({"model": {"kind": "lorenz63"}, "time": {"duration": 0.1}, "initial": {"restart": 3}})
    # a state of another shape (batch 2 against the default single member)
    run(
        {
            "model": {"kind": "lorenz63"},
            "time": {"duration": 0.05, "dt": 0.01},
            "initial": {"batch": 2},
            "output": {"file": "b2.nc"},
            "restart": {"file": "b2.pt"},
            "_base": str(tmp_path),
        },
        progress=False,
    )
    cfg = load_config(
        {
            "model": {"kind": "lorenz63"},
            "time": {"duration": 0.1},
            "initial": {"restart": "b2.pt"},
            "_base": str(tmp_path),
        }
    )
    with pytest.raises(ConfigError, match=r"initial.restart: .*same model kind"):
        setup(cfg)


# -- pelagos sensitivity -----------------------------------------------------------------------------------
def _misfit(cfg_map: dict, u: torch.Tensor) -> float:
    """The data misfit at unconstrained parameters ``u``, computed independently of the sensitivity code: the
    twin's observations, the model run through ``inverse.predict`` and ½ Σ ((H(x) − y)/σ)²."""
    from pelagos.inverse.forward import predict
    from pelagos.io.inverse_run import inverse_view, observations

    cfg = load_config(dict(cfg_map))
    s = setup(cfg)
    model, x0 = inverse_view(s, "calibrate")
    obs, _ = observations(cfg, s, model, x0)
    model.select_free(cfg.method.free)
    with torch.no_grad(), model.using(u):
        pred = predict(model, x0, obs, t0=s.t0)
    r = (pred.reshape(obs.values.shape) - obs.values) / torch.as_tensor(obs.sigma, dtype=pred.dtype)
    return float(0.5 * (r[~torch.isnan(obs.values)] ** 2).sum())  # NaN: a point not observed at that time


def test_sensitivity_arrows_equal_finite_differences_of_the_loss(tmp_path):
    cfg = _l63(tmp_path)
    out = tmp_path / "s.json"
    from pelagos.io.inverse_run import run_sensitivity

    res = run_sensitivity(cfg, grid=3, span=1.3, output=out, plot=True)
    assert out.exists() and out.with_suffix(".png").exists()
    names = res["names"]
    assert sorted(names) == ["rho", "sigma"]
    ua = torch.tensor(res["unconstrained"][names[0]], dtype=torch.float64)
    ub = torch.tensor(res["unconstrained"][names[1]], dtype=torch.float64)
    loss = torch.tensor(res["loss"], dtype=torch.float64)
    grad = torch.tensor(res["grad_unconstrained"], dtype=torch.float64)
    assert loss.shape == (3, 3) and grad.shape == (3, 3, 2)
    # the axes: log-spaced, covering the first guess and the truth, widened by ×/÷ 1.3
    vals = res["values"]
    assert min(vals["rho"]) == pytest.approx(25.0 / 1.3) and max(vals["rho"]) == pytest.approx(28.0 * 1.3)
    h = 1e-5
    worst = 0.0
    for i, j in [(0, 0), (1, 2), (2, 1)]:
        u = torch.stack([ua[i], ub[j]])
        assert loss[i, j] == pytest.approx(_misfit(cfg, u), rel=1e-10)
        for k in range(2):
            e = torch.zeros(2, dtype=torch.float64)
            e[k] = h
            fd = (_misfit(cfg, u + e) - _misfit(cfg, u - e)) / (2 * h)
            worst = max(worst, abs(fd - float(grad[i, j, k])) / max(abs(fd), 1e-3 * float(loss[i, j])))
    assert worst < 1e-6, worst
    # the gradient really varies over the grid (not a constant or a swapped copy)
    assert not torch.allclose(grad[0, 0], grad[2, 1], rtol=0.1)


def test_sensitivity_command_line_and_errors(tmp_path, capsys):
    cfg = _l63(tmp_path)
    cfg.pop("_base")
    path = tmp_path / "l63.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "map.json"
    rc = main(
        [
            "sensitivity",
            str(path),
            "--grid",
            "2",
            "--range",
            "rho=20:30",
            "--range",
            "sigma=8:12",
            "--output",
            str(out),
            "--no-plot",
            "--no-progress",
        ]
    )
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["values"]["rho"][0] == pytest.approx(20.0) and res["values"]["rho"][-1] == pytest.approx(30.0)
    assert res["values"]["sigma"] == pytest.approx([8.0, 12.0])
    assert "smallest misfit" in capsys.readouterr().out
    rc = main(["sensitivity", str(path), "--set", "method.free=[rho]", "--output", str(out)])
    assert rc == 1
    assert "sensitivity maps two parameters" in capsys.readouterr().err
    rc = main(["sensitivity", str(path), "--range", "beta=1:2", "--output", str(out)])
    assert rc == 1
    assert "not in method.free" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sensitivity", str(path), "--range", "rho"])


# -- the ocean configurations ----------------------------------------------------------------------------
def test_ocean_experiment_configurations_load():
    spin = load_config(EXAMPLES / "ocean_spinup_4deg.yaml")
    cal = load_config(EXAMPLES / "ocean_calibrate.yaml", require=("observations", "method"))
    assert spin.kind.name == cal.kind.name == "acc"
    assert cal.initial_restart and Path(cal.initial_restart).name == Path(spin.restart.file).name
    assert cal.method.free == ["A_h", "r_bot"]
    truth = cal.observations.synthetic.truth
    # the first guess is the mis-specified truth: A_h × 2, r_bot × 0.5
    assert cal.parameters["A_h"] == pytest.approx(2 * truth["A_h"])
    assert cal.parameters["r_bot"] == pytest.approx(0.5 * truth["r_bot"])
    assert {p.variable for p in cal.observations.synthetic.patterns} == {"psi"}


@pytest.mark.slow
def test_ocean_calibration_recovers_a_h_and_r_bot_noise_free(tmp_path):
    """The ocean twin through `pelagos calibrate` on a short spin-up and window, exact observations: both
    parameters back to 1e-3 (the full experiment, with noise: docs/ocean_experiments.md)."""
    raw = yaml.safe_load((EXAMPLES / "ocean_spinup_4deg.yaml").read_text())
    raw.update(
        time={"duration": "20 days", "dt": 43200.0},
        output={"file": str(tmp_path / "spin.nc")},
        restart={"file": str(tmp_path / "spin.pt")},
    )
    run(raw, progress=False)
    cal = yaml.safe_load((EXAMPLES / "ocean_calibrate.yaml").read_text())
    cal["initial"]["restart"] = str(tmp_path / "spin.pt")
    cal["time"]["duration"] = "6 days"
    cal["observations"]["synthetic"]["noise"] = "none"
    cal["method"].update(results=str(tmp_path / "cal.json"), plots=None, max_iter=8)
    cal["output"] = {}
    from pelagos.io.inverse_run import run_inverse

    res = run_inverse(cal, mode="calibrate")
    for n, t in res["truth"].items():
        assert res["estimates"][n] == pytest.approx(t, rel=1e-3)
        assert res["std"][n] > 0


@pytest.mark.slow
def test_sensitivity_arrows_equal_finite_differences_on_the_ocean(tmp_path):
    """The same check on the ACC (4°, from its default initial state, a 2-day window): forward-mode arrows of
    the ψ-track misfit w.r.t. (log A_h, log r_bot) = central differences of the misfit."""
    cal = yaml.safe_load((EXAMPLES / "ocean_calibrate.yaml").read_text())
    cal["initial"] = {"batch": 1, "u": 0.05}
    cal["time"]["duration"] = "2 days"
    cal["output"] = {}
    cal["_base"] = str(tmp_path)
    from pelagos.io.inverse_run import run_sensitivity

    res = run_sensitivity(cal, grid=2, span=1.5, output=tmp_path / "o.json", plot=False)
    a, b = res["names"]
    grad = torch.tensor(res["grad_unconstrained"], dtype=torch.float64)
    u = torch.tensor([res["unconstrained"][a][1], res["unconstrained"][b][0]], dtype=torch.float64)
    assert res["loss"][1][0] == pytest.approx(_misfit(cal, u), rel=1e-10)
    h = 1e-5
    for k in range(2):
        e = torch.zeros(2, dtype=torch.float64)
        e[k] = h
        fd = (_misfit(cal, u + e) - _misfit(cal, u - e)) / (2 * h)
        assert float(grad[1, 0, k]) == pytest.approx(fd, rel=1e-6)

"""`pelagos calibrate` / `pelagos assimilate`: every method on Lorenz, QG and the water column from the one
generic driver (pelagos.io.inverse_run); configuration errors."""

from __future__ import annotations

import json

import pytest

from _cli_configs import COLUMN, L63
from _cli_configs import write_config as _cfg
from pelagos.cli import main
from pelagos.io.inverse_run import run_inverse

L96 = """
model: {kind: lorenz96, nx: 10, dtype: float64}
time: {start: 0, duration: 1.0, dt: 0.05, spinup: 10.0}
observations:
  synthetic:
    patterns: [{variable: x, at: {i: [0, 2, 4, 6, 8]}, every: 0.1}]
    sigma: 0.5
    initial_error: 1.0
    seed: 0
"""


def test_calibrate_lorenz63_twin(tmp_path, capsys):
    out = tmp_path / "res.json"
    assert main(["calibrate", str(_cfg(tmp_path, L63)), "--output", str(out)]) == 0
    text = capsys.readouterr().out
    assert "converged" in text and f"wrote {out}" in text
    d = json.loads(out.read_text())
    assert abs(d["estimates"]["rho"] - 28.0) < 3 * d["std"]["rho"] + 0.05
    assert d["std"]["rho"] < 0.5
    assert d["initial"]["rho"] == pytest.approx(25.0)
    assert d["misfit"]["after"] < 0.1 * d["misfit"]["before"]


@pytest.mark.parametrize(
    "method",
    [
        "{kind: 4dvar, background: {std: 1.0, length_scale: 1.5}, max_iter: 60}",
        "{kind: weak4dvar, background: {std: 1.0}, model_error: {std: 0.05}, model_error_every: 5, "
        "max_iter: 60}",
        "{kind: enkf, members: 20, inflation: 1.05, spread: {std: 1.0}}",
        "{kind: enkf, variant: pertobs, members: 20, inflation: 1.05, spread: {std: 1.0}}",
        "{kind: letkf, members: 10, inflation: 1.05, radius: 2, spread: {std: 1.0}}",
    ],
)
def test_assimilate_lorenz96_every_state_method(tmp_path, method):
    res = run_inverse(
        _cfg(tmp_path, L96 + f"method: {method}\n"), mode="assimilate", output=tmp_path / "r.json"
    )
    assert res["misfit"]["after"] < 0.5 * res["misfit"]["before"], res["misfit"]
    assert (tmp_path / "r.json").exists()


def test_esmda_and_joint_enkf_estimate_a_parameter(tmp_path):
    base = (
        L96.replace("initial_error: 1.0", "initial_error: 0.0").replace(
            "synthetic:", "synthetic:\n    truth: {F: 8.0}"
        )
        + "parameters: {F: 7.0}\n"
    )
    res = run_inverse(
        _cfg(tmp_path, base + "method: {kind: esmda, free: [F], members: 32, priors: {F: {std: 0.5}}}\n"),
        mode="calibrate",
        output=tmp_path / "e.json",
    )
    assert abs(res["estimates"]["F"] - 8.0) < 3 * res["std"]["F"] + 0.1
    res = run_inverse(
        _cfg(tmp_path, base + "method: {kind: enkf, free: [F], members: 30, priors: {F: {std: 0.5}},"
                             " spread: {std: 0.1}}\n"),
        mode="assimilate",
        output=tmp_path / "k.json",
    )  # fmt: skip
    assert abs(res["estimates"]["F"] - 8.0) < 0.5


QG = """
model: {kind: qg, nx: 16}
time: {duration: 1 day, dt: 7200}
initial: {seed: 0}
observations:
  synthetic:
    patterns: [{variable: q, at: {random: 64, seed: 1}, every: 6 h}]
    sigma: 1.0e-8
    initial_error: 1.0e-7
"""


def test_qg_from_the_command_line(tmp_path):
    """QG can be calibrated and assimilated into from the same commands (ensembles on the PV view)."""
    cal = """
model: {kind: qg, nx: 16}
time: {duration: 1 day, dt: 7200}
parameters: {rek: 3.0e-7}
observations:
  synthetic:
    truth: {rek: 1.0e-6}
    patterns: [{variable: psi, at: {random: 24, seed: 1}, every: 6 h}]
    noise: none
    rel: 0.01
method: {kind: calibrate, free: [rek], max_iter: 10, uncertainty: none}
"""
    res = run_inverse(_cfg(tmp_path, cal), mode="calibrate", output=tmp_path / "c.json")
    assert res["misfit"]["after"] < 0.1 * res["misfit"]["before"]
    assert abs(res["estimates"]["rek"] / 1e-6 - 1) < 0.1
    res = run_inverse(
        _cfg(tmp_path, QG + "method: {kind: letkf, members: 16, radius: 3, spread: {std: 1.0e-7}}\n"),
        mode="assimilate",
        output=tmp_path / "a.json",
    )
    assert res["misfit"]["after"] < 0.5 * res["misfit"]["before"]


def test_column_calibrate_esmda_4dvar(tmp_path):
    """The water column through the generic driver: a noise-free twin (2 layers, 12-h steps, 10 days) recovers
    rmax by calibration; ES-MDA from the CSV it wrote lands within 2 of its own std; 4D-Var from a wrong
    state fits; results files, the analysed run and plots are written."""
    csv_path = tmp_path / "obs.csv"
    initial = "initial: {profiles: {npzd_nut: 5.0, npzd_phy: 0.3, npzd_zoo: 0.01, npzd_det: 2.0}}\n"
    cfg = (
        COLUMN
        + initial
        + f"""
observations:
  synthetic:
    truth: {{npzd.rmax: 1.0}}
    patterns: [{{variable: npzd_phy, depths: [surface, 80], every: 86400}}]
    noise: none
    rel: 0.1
    write: {csv_path}
method: {{kind: calibrate, free: [npzd.rmax], max_iter: 30, results: {tmp_path / "r.json"},
          plots: {tmp_path / "plots"}}}
output: {{file: {tmp_path / "an.nc"}, interval: 86400}}
"""
    )
    res = run_inverse(_cfg(tmp_path, cfg), mode="calibrate")
    # exact data: only the (50 %) prior around the first guess 0.7 keeps the MAP off the truth, by < 1 %
    assert abs(res["estimates"]["npzd.rmax"] - 1.0) < 0.01
    assert abs(res["estimates"]["npzd.rmax"] - 1.0) < res["std"]["npzd.rmax"]
    assert res["misfit"]["after"] < 1e-3 * res["misfit"]["before"]
    assert json.loads((tmp_path / "r.json").read_text())["n_obs"] == res["n_obs"] == 20
    for f in ("obs.csv", "an.nc", "plots/cost.png", "plots/obs_vs_model.png", "r.json"):
        assert str(tmp_path / f) in res["files"], f
    obs_file = f"observations: {{file: {csv_path}}}\n"
    res2 = run_inverse(
        _cfg(tmp_path, COLUMN + initial + obs_file + "method: {kind: esmda, free: [npzd.rmax], members: 48, "
                                                     "seed: 1}\n"),
        mode="assimilate",
        output=tmp_path / "e.json",
    )  # fmt: skip
    assert abs(res2["estimates"]["npzd.rmax"] - 1.0) < 2 * res2["std"]["npzd.rmax"] + 0.02
    wrong = "initial: {profiles: {npzd_nut: 4.0, npzd_phy: 0.2, npzd_zoo: 0.01, npzd_det: 2.0}}\n"
    res3 = run_inverse(
        _cfg(tmp_path, COLUMN + wrong + obs_file + "method: {kind: 4dvar, free: [npzd.rmax], max_iter: 40, "
             "background: {rel_std: 0.3, floor: 0.01, length_scale: 50.0}}\n"),
        mode="assimilate",
        output=tmp_path / "v.json",
    )  # fmt: skip
    assert res3["misfit"]["after"] < 0.05 * res3["misfit"]["before"]
    assert abs(res3["estimates"]["npzd.rmax"] - 1.0) < 2 * res3["std"]["npzd.rmax"]


OBS0 = "model: {kind: lorenz63}\ntime: {duration: 1}\nobservations: {synthetic: {patterns: [{variable: x}],"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("model: {kind: lorenz63}\ntime: {duration: 1}\n", "no `observations:` section"),
        (
            OBS0 + " sigma: 1}}\nmethod: {kind: calibrate, free: [gamma]}\n",
            "unknown parameter 'gamma'",
        ),
        (
            OBS0 + " sigmaa: 1}}\nmethod: {kind: calibrate, free: [rho]}\n",
            "did you mean 'sigma'",
        ),
        (
            OBS0 + " sigma: 1}}\nmethod: {kind: 4dvar}\n",
            "use `pelagos assimilate` for 4dvar",
        ),
        ("model: {factory: 'pelagos.models:Lorenz63'}\n", "kind: lorenz63"),
    ],
)
def test_bad_configs_give_clear_errors(tmp_path, capsys, text, match):
    assert main(["calibrate", str(_cfg(tmp_path, text))]) == 1
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err

"""Per-basin calibration of HBV through `pelagos calibrate` (the kind `hbv`, the one observation stack and the
one inverse driver): a twin recovers known parameters; the CAMELS observation file makes the Gaussian misfit
NSE-equivalent; the example configuration runs; NSE/KGE scoring of calibration and test periods."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pelagos.cli import main
from pelagos.core.obsio import read_observations
from pelagos.hydro.calibration import calibrate_basins, evaluate, observation_std, write_observations_csv
from pelagos.hydro.camels import SAMPLE, load_basin
from pelagos.hydro.metrics import nse
from pelagos.io.build import setup
from pelagos.io.config import load_config
from pelagos.io.inverse_run import run_inverse

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "hbv_calibrate.yaml"

TWIN = """
model: {kind: hbv, dtype: float64}
forcing: {gauge_ids: ['02064000'], start: '2000-03-01', end: '2000-06-30'}
time: {start: '2000-03-01', stop: '2000-07-01'}
observations:
  synthetic:
    truth: {FC: 320.0, BETA: 2.8, K2: 0.05}
    patterns: [{variable: Q, at: {basin: ['02064000']}, every: 1 days}]
    noise: none
    sigma: 0.05
method:
  kind: calibrate
  free: [FC, BETA, K2]
  priors: {FC: {std: 10}, BETA: {std: 10}, K2: {std: 10}}
  max_iter: 40
  gtol: 1e-9
  uncertainty: none
"""


def test_twin_recovers_known_parameters(tmp_path):
    """Synthetic daily discharge (March-June 2000, exact values) from known FC, BETA, K2 (others at their
    defaults); calibration from the defaults (250, 2.0, 0.02) recovers them. (K1 would not do here: with
    PERC = 2 mm/d the upper zone rarely holds water long enough in this window for Q1 = K1·SUZ to matter.)"""
    cfg = tmp_path / "twin.yaml"
    cfg.write_text(TWIN)
    res = run_inverse(cfg, mode="calibrate", output=tmp_path / "twin.json")
    est = res["estimates"]
    assert est["FC"] == pytest.approx(320.0, rel=3e-3)
    assert est["BETA"] == pytest.approx(2.8, rel=3e-3)
    assert est["K2"] == pytest.approx(0.05, rel=3e-3)
    assert res["misfit"]["after"] < 1e-4 * res["misfit"]["before"]


def test_observation_file_makes_the_misfit_nse_equivalent(tmp_path):
    """The CAMELS observation file (σ = std of the observed flow) read by the one reader: values and times
    line up with the basin's record, and ½ Σ((Q̂ − Q)/σ)² = ½ N (1 − NSE)."""
    path = write_observations_csv(SAMPLE, "01547700", "2000-02-01", "2000-04-30", tmp_path / "obs.csv")
    b = load_basin(SAMPLE, "01547700", "2000-02-01", "2000-04-30")
    assert float(np.nanstd(b.q_obs)) == pytest.approx(observation_std(b.q_obs))
    cfg = load_config(
        {
            "model": {"kind": "hbv"},
            "forcing": {"gauge_ids": ["01547700"], "start": "2000-01-01", "end": "2000-04-30"},
            "time": {"start": "2000-01-01", "stop": "2000-05-01"},
        }
    )
    s = setup(cfg)
    obs = read_observations(path, s.model, start=s.t0, stop=s.t1)
    assert obs.n_times == 90 and obs.m == 1
    torch.testing.assert_close(obs.values[:, 0], torch.as_tensor(b.q_obs), equal_nan=True, rtol=1e-9, atol=0)
    # the record of day D is at D + 1 day (00:00), i.e. step 31 + k for 1 February + k days
    assert obs.step_indices(86400.0, s.t0).tolist() == list(range(32, 122))
    sim = torch.linspace(0.5, 3.0, 90, dtype=torch.float64)[:, None]
    n_valid = int(torch.isfinite(obs.values).sum())
    expected = 0.5 * n_valid * (1 - float(nse(sim, obs.values)[0]))
    assert float(obs.nll(sim)) == pytest.approx(expected, rel=1e-9)  # σ written with 10 digits


def test_example_configuration_runs(tmp_path):
    """`pelagos calibrate examples/hbv_calibrate.yaml` (one L-BFGS iteration here) lowers the misfit."""
    out = tmp_path / "cal.json"
    rc = main(
        ["calibrate", str(EXAMPLE), "--set", "method.max_iter=1", "--output", str(out), "--no-progress"]
    )
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["model"] == "hbv" and len(res["names"]) == 14
    assert res["n_obs"] == 365
    assert res["misfit"]["after"] < res["misfit"]["before"]


def test_per_basin_driver_scores_calibration_and_test(tmp_path):
    """calibrate_basins: one `pelagos calibrate` per basin, then NSE/KGE of first guess and estimates on the
    calibration and test years (here a 1-iteration calibration: the calibration-year NSE must not drop)."""
    summary = calibrate_basins(
        EXAMPLE, ["01547700"], out_dir=tmp_path, overrides=["method.max_iter=1"], log=lambda *_: None
    )
    b = summary["basins"]["01547700"]
    assert b["calibrated"]["calibration"]["NSE"] >= b["first_guess"]["calibration"]["NSE"] - 1e-9
    for k in ("calibration", "test"):
        assert set(b["calibrated"][k]) == {"NSE", "KGE"}
    assert (tmp_path / "summary.json").exists() and (tmp_path / "obs_01547700.csv").exists()
    # the scoring run reproduces the misfit that pelagos calibrate reported (same model, same window)
    ev = evaluate(SAMPLE, "01547700", b["estimates"], start="2000-01-01",
                  calibration=("2001-01-01", "2001-12-31"), test=("2002-01-01", "2002-12-31"))  # fmt: skip
    n_valid = 365
    assert 0.5 * n_valid * (1 - ev["calibration"]["NSE"]) == pytest.approx(b["misfit"]["after"], rel=1e-4)

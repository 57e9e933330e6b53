"""`method.stages` of `pelagos calibrate`: continuation in the window length through the one inverse driver.

The Lorenz-63 twin of tests/_cli_configs.py (observations every 0.05 time units from 0.05 to 2, three
variables): each stage's cost is recomputed here, independently of the driver, from the observations up to
its end and the previous stage's estimate."""

from __future__ import annotations

import json
import math

import pytest
import torch

from _cli_configs import COLUMN
from _cli_configs import L63_TEMPLATE as L63
from _cli_configs import write_config as _cfg
from pelagos.cli import main
from pelagos.inverse.problem import VariationalProblem
from pelagos.io.build import setup
from pelagos.io.config import load_config
from pelagos.io.inverse_run import inverse_view, observations, run_inverse, set_priors


def _problem(text: str, rho: float, t_end: float) -> VariationalProblem:
    """The calibration problem of the twin on the observations up to ``t_end`` at ``rho``, built here."""
    cfg = load_config(text, require=("observations", "method"))
    s = setup(cfg)
    model, x0 = inverse_view(s, "calibrate")
    obs, _ = observations(cfg, s, model, x0)
    model.select_free(cfg.method.free)
    set_priors(model, cfg.method)  # priors centred on the first guess, as the driver sets them
    model.set_parameter_value("rho", rho)
    return VariationalProblem(model, obs.window(-math.inf, t_end), x0, t0=s.t0)


def _cost(text: str, rho: float, t_end: float) -> tuple[float, int]:
    p = _problem(text, rho, t_end)
    with torch.no_grad():
        return float(p.cost(p.z0)), int(p.obs.n_obs)


def test_stages_use_their_window_and_warm_start(tmp_path, capsys):
    import yaml

    text = L63 % ", stages: [0.5, 1.0]"
    out = tmp_path / "staged.json"
    assert main(["calibrate", str(_cfg(tmp_path, text)), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    for k in (1, 2, 3):
        assert f"stage {k}/3: observations up to" in printed
    d = json.loads(out.read_text())
    st = d["stages"]
    assert [s["end"] for s in st] == [0.5, 1.0, "all"]
    # observations every 0.05 from 0.05: 10, 20 and 40 times of three variables
    assert (
        [s["n_obs"] for s in st]
        == [30, 60, 120]
        == [_cost(yaml.safe_load(text), 28.0, t)[1] for t in (0.5, 1.0, math.inf)]
    )
    raw = yaml.safe_load(text)
    # stage 1 starts from the first guess, stage k + 1 from stage k's estimate, each on its own window
    starts = [25.0] + [s["estimates"]["rho"] for s in st[:-1]]
    ends = [0.5, 1.0, math.inf]
    for s, rho, t in zip(st, starts, ends, strict=True):
        assert s["cost_start"] == pytest.approx(_cost(raw, rho, t)[0], rel=1e-9)
        assert s["cost_end"] == pytest.approx(_cost(raw, s["estimates"]["rho"], t)[0], rel=1e-9)
        assert s["cost_end"] < s["cost_start"] and s["model_runs"] > 0
    # the stages moved rho: a start from the first guess would not give the later stages' costs
    assert abs(st[0]["estimates"]["rho"] - 25.0) > 0.5
    # the last stage is the command's result: its estimate, cost history, on all the observations
    assert d["estimates"]["rho"] == st[-1]["estimates"]["rho"]
    assert d["cost_history"][-1] == pytest.approx(st[-1]["cost_end"], rel=1e-12)
    assert d["cost_history"][0] == pytest.approx(st[-1]["cost_start"], rel=1e-12)
    assert d["n_obs"] == 120 and d["std"]["rho"] > 0
    assert d["initial"]["rho"] == pytest.approx(25.0)  # the first guess, not the last stage's start
    assert f"({sum(s['model_runs'] for s in st)} over the stages)" in printed


def test_last_stage_is_the_plain_cost(tmp_path):
    staged = run_inverse(
        _cfg(tmp_path, L63 % ", stages: [1.0]"), mode="calibrate", output=tmp_path / "s.json"
    )
    plain = run_inverse(_cfg(tmp_path, L63 % "", "p.yaml"), mode="calibrate", output=tmp_path / "p.json")
    assert "stages" not in plain and len(staged["stages"]) == 2
    # the plain run's cost function (all observations, same prior) at the staged estimate
    rho = staged["estimates"]["rho"]
    import yaml

    j, n = _cost(yaml.safe_load(L63 % ""), rho, math.inf)
    assert n == staged["stages"][-1]["n_obs"] == plain["n_obs"]
    assert staged["stages"][-1]["cost_end"] == pytest.approx(j, rel=1e-9)
    # same observations and first guess: the misfit before is the plain run's; both reach the same minimum
    assert staged["misfit"]["before"] == pytest.approx(plain["misfit"]["before"], rel=1e-12)
    assert rho == pytest.approx(plain["estimates"]["rho"], abs=1e-3)


@pytest.mark.parametrize(
    ("stages", "match"),
    [
        ("[1.0, 0.5]", "method.stages[1] = 0.5 is not after method.stages[0]"),
        ("[0.5, 0.5]", "method.stages[1] = 0.5 is not after method.stages[0]"),
        ("[2.0]", "method.stages[0] = 2.0 is not before the last observation"),
        ("[3.5]", "method.stages[0] = 3.5 is not before the last observation"),
        ("[0.0]", "method.stages[0] = 0.0 is not after time.start"),
        ("[0.02]", "method.stages[0] = 0.02: no observation up to then"),
        ("[soon]", "method.stages[0] 'soon' is neither model seconds nor an ISO date"),
        ("[]", "method.stages is empty"),
        ("[0.5], control_state: true", "method.stages warm-starts the parameters only"),
        ("1.0", "method.stages must be a list"),
    ],
)
def test_bad_stages_give_clear_errors(tmp_path, capsys, stages, match):
    assert main(["calibrate", str(_cfg(tmp_path, L63 % f", stages: {stages}"))]) == 1
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err


def test_stages_are_for_calibrate_only(tmp_path, capsys):
    text = (
        (L63 % "")
        .replace("kind: calibrate", "kind: esmda")
        .replace("max_iter: 50, uncertainty: hessian", "stages: [1.0]")
    )
    assert main(["calibrate", str(_cfg(tmp_path, text))]) == 1
    assert "method.stages" in capsys.readouterr().err


COLUMN_TWIN = (
    COLUMN
    + """\
initial: {profiles: {npzd_nut: 5.0, npzd_phy: 0.3, npzd_zoo: 0.01, npzd_det: 2.0}}
observations:
  synthetic:
    truth: {npzd.rmax: 1.0}
    patterns: [{variable: npzd_phy, depths: [surface, 80], every: 86400}]
    noise: none
    rel: 0.1
method: {kind: calibrate, free: [npzd.rmax], max_iter: 30, stages: %s}
"""
)


def test_column_stages_are_calendar_dates(tmp_path, capsys):
    """The water column twin with stage ends as dates (quoted, and unquoted: YAML dates), parsed as
    time.start: daily observations at two depths from 2 April give 2 × 3 values up to 4 April, 2 × 6 up to
    7 April."""
    res = run_inverse(
        _cfg(tmp_path, COLUMN_TWIN % '["1998-04-04", 1998-04-07 00:00:00]'),
        mode="calibrate",
        output=tmp_path / "r.json",
        log=print,
    )
    st = res["stages"]
    assert [s["end"] for s in st] == ["1998-04-04", "1998-04-07 00:00:00", "all"]
    assert [s["n_obs"] for s in st] == [6, 12, 20] and res["n_obs"] == 20
    assert "stage 1/3: observations up to 1998-04-04 00:00:00 (6 values)" in capsys.readouterr().out
    assert abs(res["estimates"]["npzd.rmax"] - 1.0) < 0.01


@pytest.mark.parametrize(
    ("stages", "match"),
    [
        ('["1998-03-01"]', "method.stages[0] = '1998-03-01' is not after time.start"),
        ('["1998-04-31"]', "method.stages[0] '1998-04-31' is neither model seconds nor an ISO date"),
        ('["1998-04-06", "1998-04-05"]', "method.stages[1] = '1998-04-05' is not after method.stages[0]"),
        ('["1998-05-01"]', "is not before the last observation"),
    ],
)
def test_column_bad_stage_dates(tmp_path, capsys, stages, match):
    assert main(["calibrate", str(_cfg(tmp_path, COLUMN_TWIN % stages))]) == 1
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err

"""ECOSMO for calibration: smoothing only some switch kinds (``smooth_only``, used by the 20-parameter twin)
and the bounds / log transforms of its parameters (docs/ecosmo_identifiability.md)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pelagos.bgc.ecosmo import ECOSMO, PARAMETERS
from pelagos.bgc.ecosmo_switches import DEFAULT_SCALES, Switches
from pelagos.bgc.fabm_yaml import load_system, packaged_yaml
from pelagos.core.errors import ConfigError
from test_ecosmo_gradients import _fd_check, all_outputs, case, max_block_rel_err, yaml_like

ROOT = Path(__file__).resolve().parents[1]
LOSS = ["loss_phyto", "loss_zoo"]
F64 = torch.float64


def test_switches_smooth_only_the_listed_kinds() -> None:
    x = torch.linspace(-0.05, 0.25, 301, dtype=F64)
    sw = Switches(True, 100.0, only=["loss_phyto"])
    assert sw.smooth_kinds == {"loss_phyto"}
    hard = Switches(False)
    # a kind not listed is FABM's hard switch, bit for bit
    for kind in set(DEFAULT_SCALES) - {"loss_phyto"}:
        assert torch.equal(sw.step(x, 0.1, kind, inclusive=True), hard.step(x, 0.1, kind, inclusive=True))
        assert torch.equal(sw.min(x, 0.1 - x, kind=kind), hard.min(x, 0.1 - x, kind=kind))
        assert torch.equal(sw.max(x, 0.1 - x, kind=kind), hard.max(x, 0.1 - x, kind=kind))
    # the listed kind is smooth: 1/2 at the threshold, and equal to the hard step far from it (width 1e-3)
    s = sw.step(x, 0.1, "loss_phyto", inclusive=True)
    h = hard.step(x, 0.1, "loss_phyto", inclusive=True)
    far = (x - 0.1).abs() > 0.04  # 40 widths
    assert float((s - h)[far].abs().max()) < 1e-17
    assert float((s - h).abs().max()) > 0.4
    assert float(sw.step(torch.tensor(0.1, dtype=F64), 0.1, "loss_phyto", inclusive=True)) == 0.5
    # not smooth at all: no kind is smoothed, whatever ``only`` says
    assert Switches(False, only=["loss_phyto"]).smooth_kinds == frozenset()
    with pytest.raises(ConfigError, match=r"unknown switch kind.*loss_phyt"):
        Switches(True, only=["loss_phyt"])


def test_smooth_only_loss_switches_equal_hard_away_from_thresholds() -> None:
    rng = np.random.default_rng(21)
    s, sed, env = case(rng, near_switches=False)  # biomass ≥ 30 widths from the loss thresholds
    hard = yaml_like(ECOSMO(couple_co2=True, turn_on_additional_diagnostics=True).double())
    part = yaml_like(
        ECOSMO(smooth=True, smooth_only=LOSS, couple_co2=True, turn_on_additional_diagnostics=True).double()
    )
    ref = all_outputs(hard, s, sed, env, {})
    got = all_outputs(part, s, sed, env, {})
    assert set(got) == set(ref)
    assert max_block_rel_err(got, ref) < 1e-11
    # next to a threshold the two differ (the smooth step is 1/2 there), so the option acts
    s["fla"][:, 3] = 0.1
    s["microzoo"][:, 5] = 0.01
    assert max_block_rel_err(all_outputs(part, s, sed, env, {}), all_outputs(hard, s, sed, env, {})) > 1e-3


def test_smooth_only_loss_switches_fd_gradient_across_the_threshold() -> None:
    """FD = jvp = vjp through the smooth loss switches, with biomass within a width of the thresholds and
    every other switch hard (away from its kink)."""
    rng = np.random.default_rng(22)
    s, sed, env = case(rng, near_switches=False)
    s["fla"][:, 3] = 0.1 + 1e-4  # width 1e-3 mgC m-3 at sharpness 100
    s["dia"][:, 4] = 0.1 - 3e-4
    s["microzoo"][:, 6] = 0.01 + 2e-5  # width 1e-4
    s["mesozoo"][:, 7] = 0.01
    m = yaml_like(ECOSMO(smooth=True, smooth_only=LOSS, couple_co2=True)).double()
    _fd_check(m, s, sed, env, seed=4)


def test_smooth_only_from_fabm_yaml_and_bad_values() -> None:
    m = ECOSMO.from_config({"smooth": True, "smooth_only": ["loss_zoo"]})
    assert m.sw.smooth_kinds == {"loss_zoo"}
    with pytest.raises(ConfigError, match=r"smooth_only.*list"):
        ECOSMO.from_config({"smooth": True, "smooth_only": "loss_zoo"})
    with pytest.raises(ConfigError, match="unknown switch kind"):
        ECOSMO(smooth=True, smooth_only=["loss"])


def test_twin_fabm_yaml_is_the_test_case_plus_smooth_loss_switches() -> None:
    twin = load_system(ROOT / "examples" / "fabm-nersc-ecosmo-twin.yaml", drop_unsupported=True)
    ref = load_system(packaged_yaml("fabm-nersc-ecosmo.yaml"), drop_unsupported=True)
    a, b = twin.models["ECO"], ref.models["ECO"]
    assert a.sw.smooth_kinds == set(LOSS) and a.sw.sharpness == 100.0
    assert b.sw.smooth_kinds == frozenset()
    for n in b.params.specs:
        assert torch.equal(a.p(n), b.p(n)), n


def test_parameter_bounds_and_transforms_keep_the_default_run() -> None:
    m = ECOSMO.from_config({}, dtype=F64)
    spec = m.params.specs
    for n in ("muPl", "aa", "rNO3", "psi", "reminD", "Rg", "excZs"):
        assert spec[n].transform.name == "log" and spec[n].bounds == (0.0, None), n
    for n in ("EXw", "zpr", "prefZsBG", "reminSED", "burialRt"):  # often switched off: 0 allowed
        assert spec[n].transform.name == "identity" and spec[n].bounds == (0.0, None), n
    assert spec["gammaZd"].bounds == (0.0, 1.0) and spec["gammaZd"].transform.name == "identity"
    for n in ("sinkBG", "TrefBG", "sinkDia"):
        assert spec[n].bounds == (None, None), n
    # the default values through exp(log(θ)): FABM's defaults to a few roundings (|log θ|·2⁻⁵³ at most)
    for name, default, *_, scale in PARAMETERS:
        got = float(m.p(name))
        want = default * scale
        assert got == pytest.approx(want, rel=1e-15, abs=0.0), name
    m.set_parameter_value("EXw", 0.0)
    m.set_parameter_value("zpr", 0.0)
    with pytest.raises(ConfigError, match=r"'muPl' = -0\.1 .*below its lower bound 0"):
        m.set_parameter_value("muPl", -0.1)
    with pytest.raises(ConfigError, match=r"'EXw' = -1 .*below its lower bound 0"):
        m.set_parameter_value("EXw", -1.0)
    # a log-transformed rate configured exactly 0 (switched off) keeps an identity transform
    off = ECOSMO.from_config({"mPl": 0.0})
    assert off.params.specs["mPl"].transform.name == "identity" and float(off.p("mPl")) == 0.0
    # log transform: a calibration step in z cannot make a rate negative
    u = m.params.raw["reminD"].detach() - 50.0
    assert float(m.params.specs["reminD"].transform.forward(u)) > 0.0
    assert math.isclose(float(m.p("reminD")) * 86400.0, 0.003, rel_tol=1e-15)

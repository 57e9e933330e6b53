"""The 0-D box as a Model (``BoxModel``): the forcing read by model time (``BoxForcing``) and per step
(``StepForcing``, what ``run_box`` uses) step alike; ``run_box`` is the model through ``Simulation``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pelagos.bgc.box import SWR_SF, BoxDriver, BoxForcing, BoxModel, StepForcing, run_box
from pelagos.bgc.npzd import NPZD
from pelagos.bgc.system import BGCSystem
from pelagos.core.rollout import rollout


def _forcing():
    t = np.arange(0, 86400 + 1, 3600.0)
    swr = 300.0 * np.clip(np.sin(2 * np.pi * (t / 86400.0 - 0.25)), 0.0, None)
    return t, {SWR_SF: swr, "temperature": np.full_like(t, 11.0), "practical_salinity": np.full_like(t, 35.0)}


def test_box_model_matches_per_step_forcing_and_run_box():
    t, values = _forcing()
    model = BoxModel(BGCSystem({"npzd": NPZD()}), BoxForcing(values, t), dt=1800.0).to(torch.float64)
    s0 = model.initial_state(values={"npzd_phy": 0.5})
    n = 40
    traj = rollout(model, s0, n)
    step_t = model.dt * np.arange(1, n + 1)
    per_step = {k: torch.tensor(np.interp(step_t, t, v), dtype=torch.float64) for k, v in values.items()}
    ref = rollout(BoxModel(model.system, StepForcing(per_step, 1800.0), dt=1800.0), s0, n).states
    for k in ref:
        assert torch.equal(traj.states[k], ref[k]), k
    out = model.output(traj.final, n * model.dt)
    assert out["npzd_phy"].shape == () and "total_nitrogen" in out
    ds = run_box(model.system, per_step, dt=1800.0, state0=s0)
    for k in ref:
        np.testing.assert_array_equal(ds[k].values, ref[k][..., 0].numpy())
    # the totals are named as the column's (total_<quantity>); diagnostics are those of each step (NaN at t0)
    assert "total_nitrogen" in ds and "total_nitrogen_total" not in ds
    assert ds["total_nitrogen"].attrs["units"] == "per m2 (state units x m)"
    assert np.isnan(ds["npzd_PPR"].values[0]) and np.isfinite(ds["npzd_PPR"].values[1:]).all()


def test_step_diagnostics_are_those_of_the_step():
    t, values = _forcing()
    system = BGCSystem({"npzd": NPZD()}).double()
    model = BoxModel(system, BoxForcing(values, t), dt=1800.0, step_diagnostics=True)
    s0 = model.initial_state(values={"npzd_phy": 0.5})
    assert set(s0["_diag"]) >= {"npzd_PPR", "PAR", "surface_PAR"}
    s1 = model.step(s0, 0.0)
    env = model.environment(model._svars(s0), model.forcing.sample(1800.0))
    _, dg = system.interior_sources(model._svars(s0), env)
    out = model.output(s1, 1800.0)
    assert float(out["npzd_PPR"]) == float(dg["npzd_PPR"][0])
    assert float(out["surface_PAR"]) == float(env["surface_downwelling_photosynthetic_radiative_flux"])


def test_box_driver_is_a_deprecated_wrapper_of_the_model():
    _, values = _forcing()
    system = BGCSystem({"npzd": NPZD()}).double()
    n = 10
    per_step = {k: torch.tensor(v[1 : n + 1]) for k, v in values.items()}  # dt = 3600: the records
    with pytest.warns(DeprecationWarning, match="BoxDriver is deprecated"):
        drv = BoxDriver(system, dt=3600.0, method="rk2")
    s0 = system.initial_state((), nz=1, dtype=torch.float64)
    traj, diags = drv.simulate(s0, per_step, n, save_every=5)
    ds = run_box(system, per_step, dt=3600.0, method="rk2", save_every=5)
    assert traj["npzd_phy"].shape == (3, 1) and diags["PAR"].shape == (2, 1)
    np.testing.assert_array_equal(traj["npzd_phy"][:, 0].numpy(), ds["npzd_phy"].values)
    np.testing.assert_array_equal(diags["npzd_PPR"][:, 0].numpy(), ds["npzd_PPR"].values[1:])

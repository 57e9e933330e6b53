"""The 0-D box as a Model (``BoxModel``) steps exactly as the box driver's own loop."""

from __future__ import annotations

import numpy as np
import torch

from pelagos.bgc.box import SWR_SF, BoxDriver, BoxForcing, BoxModel
from pelagos.bgc.npzd import NPZD
from pelagos.bgc.system import BGCSystem
from pelagos.core.rollout import rollout


def test_box_model_matches_the_driver_loop():
    t = np.arange(0, 86400 + 1, 3600.0)
    swr = 300.0 * np.clip(np.sin(2 * np.pi * (t / 86400.0 - 0.25)), 0.0, None)
    values = {SWR_SF: swr, "temperature": np.full_like(t, 11.0), "practical_salinity": np.full_like(t, 35.0)}
    model = BoxModel(BGCSystem({"npzd": NPZD()}), BoxForcing(values, t), dt=1800.0).to(torch.float64)
    s0 = model.initial_state(values={"npzd_phy": 0.5})
    n = 40
    traj = rollout(model, s0, n)
    step_t = model.dt * np.arange(1, n + 1)
    per_step = {k: torch.tensor(np.interp(step_t, t, v), dtype=torch.float64) for k, v in values.items()}
    drv = BoxDriver(model.system, dt=1800.0)
    ref, _ = drv.simulate(s0, per_step, n, diagnostics=False)
    for k in ref:
        assert torch.allclose(traj.states[k], ref[k], rtol=1e-14, atol=0), k
    out = model.output(traj.final, n * model.dt)
    assert out["npzd_phy"].shape == () and "total_nitrogen" in out

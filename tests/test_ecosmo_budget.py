"""N, P and Si budgets of ECOSMO in the real column, sediment included, with every term leaving the system.

Over three days of the nns_annual physics (the GOTM+FABM fixture; bottom stress from the file, resuspension
active) with the element sinks made visible (zooplankton closure ``zpr``, burial), the column totals (water
column + sediment pools, per m2) change by exactly the time integral of the sinks, computed here
independently from docs/ecosmo.md "Real sources and sinks of N, P, Si":

- N: zooplankton closure ``zpr (L_Zs Zs + L_Zl Zl)``, the half of the sediment's oxic remineralisation that
  leaves (``Rsa sed1``), burial ``2e-3 burialRt sed1^2`` (water-column and sediment denitrification need
  anoxia, N fixation needs cyanobacteria: neither occurs in this case, which the test asserts);
- P: the zooplankton closure and burial of sed1;  Si: burial of sed2.

Every Euler substep adds its rates at one state, so the integral is the sum of substep rates x 1800 s.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pelagos.bgc.ecosmo import F32_2EM3, N2C, P2C, SI2C
from pelagos.bgc.fabm_yaml import load_system
from pelagos.column import ColumnForcing, ColumnModel
from pelagos.core import rollout
from pelagos.io.config import resolve_path

FIXTURE = Path(__file__).parent / "data" / "ecosmo" / "nns_day100_3d.nc"
DAY = 86400.0


def test_n_p_si_budgets_with_sediment_and_losses_close_to_round_off():
    yaml = resolve_path("builtin:fabm/fabm-nersc-ecosmo.yaml", None)
    system = load_system(
        yaml, drop=("CO2",), parameters={"ECO": {"zpr": 0.05, "burialRt": 0.01}}, dtype=torch.float64
    )
    forcing = ColumnForcing.from_gotm(FIXTURE, dtype=torch.float64)
    model = ColumnModel(system, forcing, dt=3600.0, split_factor=2)
    eco = system.models["ECO"]
    P = {n: float(eco.p(n)) for n in ("zpr", "burialRt", "reminSED", "TctrlDenit")}
    sub_dt = model.dt / model.split_factor
    lost = {"N": torch.zeros(1, dtype=torch.float64), "P": torch.zeros(1, dtype=torch.float64)}
    lost["Si"] = torch.zeros(1, dtype=torch.float64)
    seen = {"resuspension": False, "deposition": False}
    rates_fn = model._rates

    def recording(s, phys, means):
        out = rates_fn(s, phys, means)
        env = out[2]
        h = phys["h"]
        assert float(s["ECO_oxy"].min()) > 0.0  # oxic: no denitrification
        zs, zl = s["ECO_microzoo"], s["ECO_mesozoo"]
        closure = P["zpr"] * ((zs >= 0.01) * zs + (zl >= 0.01) * zl)  # mgC m-3 s-1
        sed1, sed2 = s["ECO_sed1"], s["ECO_sed2"]
        t_bot = env["temperature"][..., 0]
        r_sa = P["reminSED"] * torch.exp(P["TctrlDenit"] * t_bot)
        burial1 = F32_2EM3 * P["burialRt"] * sed1 * sed1
        burial2 = F32_2EM3 * P["burialRt"] * sed2 * sed2
        col = (closure * h).sum(-1)  # mgC m-2 s-1
        lost["N"] += sub_dt * (col + r_sa * sed1 + burial1) / N2C
        lost["P"] += sub_dt * (col + burial1) / P2C
        lost["Si"] += sub_dt * burial2 / SI2C
        tb = float(env["bottom_stress"].reshape(-1)[0])
        seen["resuspension" if tb >= 0.007 else "deposition"] = True
        return out

    model._rates = recording
    s0 = model.initial_state()
    tot0 = model.totals(s0, 0.0)
    with torch.no_grad():
        final = rollout(model, s0, 72, save_every=72, include_initial=False).final
    tot = model.totals(final, 72 * 3600.0)
    assert seen["resuspension"]  # the sediment exchanges with the water (taub above crBotStr)
    assert "ECO_bg" not in final  # no cyanobacteria: no N fixation
    for q, e in (("total_nitrogen", "N"), ("total_phosphorus", "P"), ("total_silicon", "Si")):
        change = float(tot[q] - tot0[q])
        tol = 1e-12 * float(tot0[q])  # round-off of the column total
        assert float(lost[e]) > 1e4 * tol  # the sinks are far above round-off ...
        assert abs(change + float(lost[e])) < tol, (
            q,
            change,
            float(lost[e]),
        )  # ... and account for the change

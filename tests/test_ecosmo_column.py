"""ECOSMO in the water column (pelagos.column.ColumnModel): sinking, rising, sediment exchange, budgets."""

from __future__ import annotations

import pytest
import torch

from pelagos.bgc.fabm_yaml import load_system
from pelagos.column import model as column
from pelagos.column.forcing import ColumnForcing
from pelagos.core.paths import DATA_DIR

YAML = DATA_DIR / "fabm" / "fabm-nersc-ecosmo.yaml"  # FABM's test case, shipped with the package
NZ, H = 20, 4.0


def _model(bottom_stress: float, **eco):
    params = {"burialRt": 0.0, "reminSED": 0.0, "use_cyanos": True, "zpr": 0.0, "sinkDia": 2.0, **eco}
    system = load_system(YAML, drop=("CO2",), parameters={"ECO": params})
    nuh = torch.full((NZ + 1,), 1e-4, dtype=torch.float64)
    forcing = ColumnForcing.constant(
        torch.full((NZ,), H, dtype=torch.float64),
        torch.full((NZ,), 12.0, dtype=torch.float64),
        torch.full((NZ,), 30.0, dtype=torch.float64),  # salty: cyanobacteria do not grow, but they rise
        nuh,
        150.0,
        bottom_stress=bottom_stress,
    )
    return column.ColumnModel(system, forcing, dt=1800.0)


@pytest.mark.parametrize("bottom_stress", [0.0, 0.05])
def test_column_run_is_finite_and_conserves_n_p_si(bottom_stress):
    m = _model(bottom_stress)
    state = m.initial_state(2, profiles={"ECO_det": 5.0, "ECO_opa": 3.0, "ECO_bg": 0.5, "ECO_bgchl": 0.02})
    tot0 = m.totals(state, 0.0)
    t = 0.0
    for _ in range(48):
        state = m.step(state, t)
        t += m.dt
    for k, v in state.items():
        if torch.is_tensor(v):
            assert torch.isfinite(v).all(), k
    tot = m.totals(state, t)
    for q in ("total_nitrogen", "total_phosphorus", "total_silicon"):
        assert torch.allclose(tot[q], tot0[q], rtol=1e-12, atol=0), (q, tot[q] - tot0[q])
    # detritus reaches the sediment (deposition) or the sediment is stirred up (resuspension)
    sed1_0 = 113.6
    if bottom_stress == 0.0:
        assert (state["ECO_sed1"] > sed1_0).all()
    else:
        assert (state["ECO_sed1"] < sed1_0).all()
    # cyanobacteria rise: more at the surface (index nz-1) than at the bottom (index 0)
    assert (state["ECO_bg"][:, -1] > state["ECO_bg"][:, 0]).all()

"""ECOSMO over a whole year in the Northern North Sea column: N, P, Si closed to round-off (slow)."""

from __future__ import annotations

import pytest
import torch

from pelagos.bgc.fabm_yaml import load_system
from pelagos.column import ColumnForcing, ColumnModel, compact_forcing_path
from pelagos.core import rollout
from pelagos.io.config import resolve_path


@pytest.mark.slow
def test_ecosmo_year_in_closed_nns_column_conserves_n_p_si():
    # The element sinks of ECOSMO are switched off: burial, oxic/anoxic sediment remineralisation (its N loss
    # and sediment denitrification) and the zooplankton closure term. The test case has no cyanobacteria (no
    # N fixation) and the NNS column stays oxic (no water-column denitrification), so N, P, Si are closed.
    yaml = resolve_path("builtin:fabm/fabm-nersc-ecosmo.yaml", None)
    system = load_system(
        yaml,
        drop=("CO2",),
        parameters={"ECO": {"burialRt": 0.0, "reminSED": 0.0, "zpr": 0.0}},
        dtype=torch.float64,
    )
    forcing = ColumnForcing.from_gotm(compact_forcing_path(), bottom_stress=0.02, dtype=torch.float64)
    model = ColumnModel(system, forcing, dt=3600.0)
    state = model.initial_state()
    tot0 = model.totals(state, 0.0)
    with torch.no_grad():
        final = rollout(model, state, 8760, save_every=8760, include_initial=False).final
    for k, v in final.items():
        if torch.is_tensor(v):
            assert torch.isfinite(v).all(), k
    tot = model.totals(final, 8760 * 3600.0)
    for q in ("total_nitrogen", "total_phosphorus", "total_silicon"):
        rel = float((tot[q] - tot0[q]).abs().max() / tot0[q].abs().max())
        assert rel < 1e-11, (q, rel)
    assert float(final["ECO_oxy"].min()) > 0.0  # oxic all year: the premise of the N budget

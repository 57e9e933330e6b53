"""The shared ECOSMO test case (fabm-nersc-ecosmo.yaml) in pelagos's 0-D box driver."""

from __future__ import annotations

import numpy as np
import pytest

from pelagos.bgc import box
from pelagos.bgc.fabm_yaml import load_system
from pelagos.core.paths import DATA_DIR

DATA = DATA_DIR / "fabm"  # FABM's test-case files, shipped with the package
YAML, ENV = DATA / "fabm-nersc-ecosmo.yaml", DATA / "env_nns_annual.dat"


def _run(parameters=None, n_steps=96 * 3):
    system = load_system(YAML, drop=("CO2",), parameters={"ECO": parameters or {}})
    ds = box.run_box(
        system, ENV, n_steps=n_steps, start="1998-05-01 00:00:00", extra_env={"bottom_stress": 0.0}
    )
    return system, ds


def test_test_case_loads_without_carbonate_and_runs_finite():
    system, ds = _run()
    eco = system.models["ECO"]
    assert type(eco).__name__ == "ECOSMO" and eco.couple_co2 and not eco.use_cyanos
    assert float(eco.param("muPl")) == pytest.approx(1.15) and float(eco.param("Exphy")) == pytest.approx(
        0.041
    )
    for v in system.variables:
        x = ds[v.name].values
        assert np.isfinite(x).all(), v.name
        assert (x >= 0).all(), v.name
    # May at the Northern North Sea: the phytoplankton start growing from the threshold value 0.1 mgC m-3
    assert float(ds["ECO_fla"][-1]) > 0.5


def test_box_conserves_n_p_si_with_sediment_sinks_off():
    # the N/P/Si sinks of an oxic box: burial, oxic sediment remineralisation (N); zpr = 0
    # and no cyanobacteria in the test case
    _, ds = _run({"burialRt": 0.0, "reminSED": 0.0})
    for q in ("total_nitrogen", "total_phosphorus", "total_silicon"):
        x = ds[q].values
        assert np.abs(x - x[0]).max() <= 1e-12 * x[0], q
    # with them on, nitrogen is lost (oxic sediment remineralisation releases half of sed1's N) and P, Si are
    # buried: totals decrease, and only slowly
    _, ds2 = _run()
    for q in ("total_nitrogen", "total_phosphorus", "total_silicon"):
        x = ds2[q].values
        assert x[-1] < x[0] and (x[0] - x[-1]) < 1e-3 * x[0], q

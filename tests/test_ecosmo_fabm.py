"""pelagos's ECOSMO against a real GOTM+FABM run of the nns_annual case (tests/data/ecosmo/, a small slice).

The fixture (scripts/build_gotm_fabm.sh, run_gotm_fabm_ecosmo.sh, make_ecosmo_fixture.sh/.py) starts from
GOTM's float64 restart at 1998-04-11 00:00 (day 100, every plankton state far above ECOSMO's anti-extinction
thresholds) and holds the physics GOTM ran with for the next three days, and FABM's states (float32 output)
at 24, 48 and 72 h in six layers. pelagos runs the case's numerics (split_factor 2 Euler substeps, the
fabm.yaml's gotm/light recomputed at every source evaluation, P2_PDM sinking, nuh of the previous step,
Absolute Salinity, taub from the file) and must agree pointwise to 1e-6 relative (measured: 5e-8 interior,
1.3e-7 sediment, i.e. GOTM's float32 output precision).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pelagos.bgc.fabm_yaml import load_system
from pelagos.column import ColumnForcing, ColumnModel
from pelagos.core import rollout
from pelagos.io.config import resolve_path

FIXTURE = Path(__file__).parent / "data" / "ecosmo" / "nns_day100_3d.nc"


def _run(parameters=None, **numerics):
    netCDF4 = pytest.importorskip("netCDF4")
    yaml = resolve_path("builtin:fabm/fabm-nersc-ecosmo.yaml", None)
    system = load_system(yaml, drop=("CO2",), parameters=parameters, dtype=torch.float64)
    forcing = ColumnForcing.from_gotm(FIXTURE, dtype=torch.float64)
    opts = {"split_factor": 2, "sinking_method": "P2_PDM"} | numerics
    model = ColumnModel(system, forcing, dt=3600.0, **opts)
    state = model.initial_state()
    with netCDF4.Dataset(FIXTURE) as d:
        for n in model.interior + model.bottom:
            init = np.asarray(d[f"init_{n}"][:], dtype=np.float64)
            state[n] = torch.as_tensor(init).reshape(state[n].shape)
        layers = np.asarray(d["ref_layer"][:])
        ref = {n: np.asarray(d[f"ref_{n}"][:], dtype=np.float64) for n in model.interior + model.bottom}
        steps = (np.asarray(d["ref_time"][:]) / 3600.0).round().astype(int)
    assert list(steps) == [24, 48, 72]
    with torch.no_grad():
        traj = rollout(model, state, 72, save_every=24, include_initial=False)
    rel = {}
    for n, want in ref.items():
        got = traj.states[n].numpy()[:, 0]
        got = got[:, layers] if got.ndim == 2 else got
        rel[n] = float(np.max(np.abs(got - want) / np.abs(want)))
    return rel


def test_three_days_of_the_real_case_match_gotm_fabm_to_1e_6():
    rel = _run()
    assert len(rel) == 17  # 14 interior states (no cyanobacteria in the test case) + 3 sediment pools
    bad = {n: r for n, r in rel.items() if not r < 1e-6}
    assert not bad, bad


def test_the_fixture_tells_the_fabm_behaviour_from_the_old_exphy_quirk():
    # the old default (Exphy divided by 79.566: 80x weaker self-shading) is far outside the tolerance
    rel = _run(parameters={"ECO": {"EXphy": 0.041 / 79.566}})
    assert max(rel.values()) > 1e-4, rel


def test_forcing_hands_the_biology_gotms_absolute_salinity_and_bottom_stress():
    # GOTM gives FABM models its Absolute Salinity `salt` as practical_salinity; `salt_p` only as a fallback
    xr = pytest.importorskip("xarray")
    t = np.array([0.0, 3600.0])
    prof = (("time", "z", "lat", "lon"),)
    ds = xr.Dataset(
        {
            "h": (prof[0], np.ones((2, 3, 1, 1)), {"units": "m"}),
            "temp": (prof[0], 10 * np.ones((2, 3, 1, 1)), {"units": "Celsius"}),
            "salt": (prof[0], 35.17 * np.ones((2, 3, 1, 1)), {"units": "g/kg"}),
            "salt_p": (prof[0], 35.0 * np.ones((2, 3, 1, 1)), {"units": "PSU"}),
            "nuh": (("time", "zi", "lat", "lon"), np.zeros((2, 4, 1, 1)), {"units": "m2/s"}),
            "I_0": (("time", "lat", "lon"), np.zeros((2, 1, 1)), {"units": "W/m2"}),
            "taub": (("time", "lat", "lon"), np.array([0.01, 0.02]).reshape(2, 1, 1), {"units": "Pa"}),
        },
        coords={"time": ("time", t, {"units": "seconds since 1998-01-01 00:00:00"})},
    )
    f = ColumnForcing.from_dataset(ds)
    assert f.salinity_source == "salt"
    assert float(f.sample(0.0)["salt"][0, 0]) == pytest.approx(35.17)
    assert float(f.sample(3600.0)["bottom_stress"][0]) == pytest.approx(0.02)
    assert "salt" in f.to_dataset() and "salt_p" not in f.to_dataset()
    old = ColumnForcing.from_dataset(ds.drop_vars("salt"))
    assert old.salinity_source == "salt_p" and float(old.sample(0.0)["salt"][0, 0]) == pytest.approx(35.0)
    # the fixture is GOTM's own physics: Absolute Salinity and taub are what the ECOSMO regression ran on
    fx = ColumnForcing.from_gotm(FIXTURE)
    assert fx.salinity_source == "salt" and fx.has_bottom_stress

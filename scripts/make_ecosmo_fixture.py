"""Cut tests/data/ecosmo/nns_day100_3d.nc from the GOTM+FABM runs of scripts/make_ecosmo_fixture.sh.

The fixture holds, for 1998-04-11 00:00 to 1998-04-14 00:00 (days 100-103 of the nns_annual ECOSMO case):
- the physics GOTM ran with, hourly, in GOTM's names and layout (``h``, ``temp`` (Conservative Temperature),
  ``salt`` (Absolute Salinity), ``nuh``, ``I_0``, ``taub``; 73 records, the first from GOTM's float64 restart,
  the others GOTM's float32 output), readable by ``ColumnForcing.from_gotm``;
- the initial ECOSMO state, float64, every layer (``init_<ECO_name>``), from the restart;
- FABM's ECOSMO states at a few times (``ref_time``: 24, 48, 72 h) and layers (``ref_layer``, index 0 =
  bottom) as GOTM wrote them (float32): ``ref_<ECO_name>`` (time, layer), sediment pools (time,).

    python scripts/make_ecosmo_fixture.py [.side/gotm]
"""

from __future__ import annotations

import sys
from pathlib import Path

import netCDF4
import numpy as np

TIMES_H = (24, 48, 72)
LAYERS = (0, 10, 40, 70, 95, 109)


def main(side: str = ".side/gotm") -> None:
    side_p = Path(side)
    rst = netCDF4.Dataset(side_p / "run_day100" / "restart.nc")
    phy = netCDF4.Dataset(side_p / "run_day100_3d" / "physics.nc")
    eco = netCDF4.Dataset(side_p / "run_day100_3d" / "ecosmo.nc")
    out_p = Path(__file__).resolve().parent.parent / "tests" / "data" / "ecosmo" / "nns_day100_3d.nc"
    out_p.parent.mkdir(parents=True, exist_ok=True)
    nz = rst["temp"].shape[1]

    def prof(ds, name, n):  # (time, n) float64
        return np.asarray(ds[name][:], dtype=np.float64).reshape(-1, n)

    phys = {
        "h": np.vstack([prof(rst, "h", nz), prof(phy, "h", nz)]),
        "temp": np.vstack([prof(rst, "temp", nz), prof(phy, "temp", nz)]),
        "salt": np.vstack([prof(rst, "salt", nz), prof(phy, "salt", nz)]),
        "nuh": np.vstack([prof(rst, "nuh", nz + 1), prof(phy, "nuh", nz + 1)]),
    }
    i0 = np.asarray(phy["I_0"][:], dtype=np.float64).ravel()
    taub = np.asarray(phy["taub"][:], dtype=np.float64).ravel()
    # record 0 (00:00, before sunrise): I_0 = 0; its bottom stress is not used by the step (the step uses the
    # forcing at its end): the next record's value
    series = {"I_0": np.concatenate([[0.0], i0]), "taub": np.concatenate([taub[:1], taub])}
    with netCDF4.Dataset(out_p, "w") as out:
        out.title = "GOTM+FABM ECOSMO reference slice (pelagos tests); see scripts/make_ecosmo_fixture.py"
        out.source = (
            "GOTM 84f8d8e + FABM 980a0eaa (gfortran), gotm-model/cases nns_annual, fabm-nersc-ecosmo.yaml"
        )
        out.createDimension("time", phys["h"].shape[0])
        out.createDimension("z", nz)
        out.createDimension("zi", nz + 1)
        out.createDimension("lat", 1)
        out.createDimension("lon", 1)
        out.createDimension("ref_time", len(TIMES_H))
        out.createDimension("ref_layer", len(LAYERS))
        t = out.createVariable("time", "f8", ("time",))
        t.units = "seconds since 1998-04-11 00:00:00"
        t[:] = np.arange(phys["h"].shape[0]) * 3600.0
        for v, d in (("lat", 59.33333), ("lon", 1.283333)):
            x = out.createVariable(v, "f8", (v,))
            x[:] = d
        units = {"h": "m", "temp": "Celsius", "salt": "g/kg", "nuh": "m2/s", "I_0": "W/m2", "taub": "Pa"}
        for k, a in phys.items():
            dims = ("time", "zi" if k == "nuh" else "z", "lat", "lon")
            x = out.createVariable(k, "f8", dims, zlib=True, complevel=9, shuffle=True)
            x.units = units[k]
            x[:] = a[:, :, None, None]
        for k, a in series.items():
            x = out.createVariable(k, "f8", ("time", "lat", "lon"), zlib=True, complevel=9, shuffle=True)
            x.units = units[k]
            x[:] = a[:, None, None]
        rt = out.createVariable("ref_time", "f8", ("ref_time",))
        rt.units = "s since the start"
        rt[:] = np.array(TIMES_H) * 3600.0
        rl = out.createVariable("ref_layer", "i4", ("ref_layer",))
        rl[:] = LAYERS
        ti = [int(np.argmin(np.abs(eco["time"][:] + 3600.0 - h * 3600.0))) for h in TIMES_H]
        for name in eco.variables:
            if not name.startswith("ECO_") or name not in rst.variables:
                continue
            v = eco[name]
            if v.ndim == 4:  # interior (time, z, lat, lon)
                init = out.createVariable(f"init_{name}", "f8", ("z",), zlib=True)
                init[:] = np.asarray(rst[name][:], dtype=np.float64).ravel()
                ref = out.createVariable(f"ref_{name}", "f4", ("ref_time", "ref_layer"))
                ref[:] = np.asarray(v[:], dtype=np.float32).reshape(v.shape[0], -1)[ti][:, list(LAYERS)]
            else:  # bottom pools (time, lat, lon)
                init = out.createVariable(f"init_{name}", "f8", ())
                init[:] = float(np.asarray(rst[name][:]).ravel()[0])
                ref = out.createVariable(f"ref_{name}", "f4", ("ref_time",))
                ref[:] = np.asarray(v[:], dtype=np.float32).reshape(v.shape[0])[ti]
            ref.units = init.units = getattr(v, "units", "")
    print(f"wrote {out_p} ({out_p.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main(*sys.argv[1:])

"""Make the compact NNS physics forcing shipped with pelagos (src/pelagos/data/nns_annual_22x5m.nc).

Derivation (from the GOTM nns_annual run in shared/data/gotm_nns_annual/physics_hourly.nc, 110 layers of 1 m):

- vertical: groups of ``--group`` consecutive layers (default 5: 110 x 1 m -> 22 x 5 m), counted from the
  bottom. ``h`` is summed over the group; ``temp`` and ``salt_p`` are thickness-weighted means (the heat and
  salt content of each coarse layer equals that of its fine layers); ``nuh`` is kept at the retained
  interfaces (every ``group``-th interface, bottom and surface included, so it stays 0 there);
- time: every ``--every``-th hourly record (default 1: all 8761 hourly records are kept, so a run at
  dt = 3600 s uses the records as GOTM did, without time interpolation); ``I_0`` from the same records;
- stored as float32, zlib level 9 with the shuffle filter, GOTM's variable names, units and dims.

Usage: python scripts/make_compact_forcing.py [--source PATH] [--group 5] [--every 1] [--out PATH]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import xarray as xr

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SOURCE = ROOT.parent / "shared" / "data" / "gotm_nns_annual" / "physics_hourly.nc"
DEFAULT_OUT = ROOT / "src" / "pelagos" / "data" / "nns_annual_22x5m.nc"


def coarsen(ds: xr.Dataset, group: int, every: int) -> xr.Dataset:
    nz = ds.sizes["z"]
    if nz % group:
        raise SystemExit(f"--group {group} must divide the number of layers {nz}")
    ds = ds.isel(time=slice(None, None, every))
    h = ds["h"].values.astype(np.float64)  # (T, nz, 1, 1)
    T = h.shape[0]
    shp = (T, nz // group, group, *h.shape[2:])
    hg = h.reshape(shp)
    hc = hg.sum(axis=2)
    temp = (ds["temp"].values.astype(np.float64).reshape(shp) * hg).sum(axis=2) / hc
    salt = (ds["salt_p"].values.astype(np.float64).reshape(shp) * hg).sum(axis=2) / hc
    nuh = ds["nuh"].values[:, ::group]
    zi = ds["zi"].values[:, ::group]
    z = 0.5 * (zi[:, 1:] + zi[:, :-1])

    def attrs(name: str) -> dict:
        return {
            k: v
            for k, v in ds[name].attrs.items()
            if k in ("units", "long_name", "standard_name", "positive")
        }

    dz4, dzi4 = ("time", "z", "lat", "lon"), ("time", "zi", "lat", "lon")
    out = xr.Dataset(
        {
            "h": (dz4, hc.astype(np.float32), attrs("h")),
            "temp": (dz4, temp.astype(np.float32), attrs("temp")),
            "salt_p": (dz4, salt.astype(np.float32), attrs("salt_p")),
            "nuh": (dzi4, nuh.astype(np.float32), attrs("nuh")),
            "I_0": (("time", "lat", "lon"), ds["I_0"].values.astype(np.float32), attrs("I_0")),
        },
        coords={
            "time": ("time", ds["time"].values, attrs("time") | {"calendar": "standard"}),
            "lat": ("lat", ds["lat"].values, attrs("lat")),
            "lon": ("lon", ds["lon"].values, attrs("lon")),
            "z": (dz4, z.astype(np.float32), attrs("z")),
            "zi": (dzi4, zi.astype(np.float32), attrs("zi")),
        },
        attrs={
            "title": "Northern North Sea 1998 (GOTM nns_annual) physics, compact",
            "source": "GOTM (gotm-model/code 84f8d8e), case nns_annual (gotm-model/cases a5d5076), physics",
            "history": (
                f"scripts/make_compact_forcing.py --group {group} --every {every}: {nz} layers -> "
                f"{nz // group} "
                "(h summed, temp/salt_p thickness-weighted means, nuh at retained interfaces), every "
                f"{every} "
                "hourly record, float32"
            ),
        },
    )
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    ap.add_argument("--group", type=int, default=5)
    ap.add_argument("--every", type=int, default=1)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    a = ap.parse_args(argv)
    with xr.open_dataset(a.source, decode_times=False) as ds:
        out = coarsen(ds.load(), a.group, a.every)
    enc = {
        v: {"zlib": True, "complevel": 9, "shuffle": True}
        for v in ("h", "temp", "salt_p", "nuh", "I_0", "z", "zi")
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    out.to_netcdf(a.out, encoding=enc, format="NETCDF4")
    print(f"wrote {a.out} ({a.out.stat().st_size / 1e6:.2f} MB): {dict(out.sizes)}")


if __name__ == "__main__":
    main()

"""Reference fixture for pelagos's HBV: MHPI's hydrodl2 HBV 1.0, run in float64, on the CAMELS-US sample.

Runs the *real* hydrodl2 1.4.0 (Penn State non-commercial licence; only run here, never imported by pelagos or
copied) in the side environment made by ``scripts/side_env_hbv_reference.sh``::

    bash scripts/side_env_hbv_reference.sh .venv/bin/python
    PYTHONPATH=src .side/hbv_ref/bin/python scripts/make_hbv_fixtures.py

**float64 build.** hydrodl2 hard-codes float32 in places (``dtype=torch.float32`` for its state and output
buffers, ``.type(torch.float32)`` for the rain mask, and default-dtype ``torch.arange``/``torch.zeros`` in the
unit hydrograph). This script patches that *at run time*, without editing hydrodl2: it sets torch's default
dtype to float64 and gives hydrodl2's HBV and base modules a ``torch`` whose ``float32`` attribute is
``torch.float64``. Every tensor hydrodl2 creates is then float64 (checked below).

Cases (forcing: the 4 sample basins 2000-01-01..2002-12-31, Daymet prcp, tmean = (tmin + tmax)/2 and
pelagos's Hargreaves PET, computed by ``pelagos.hydro.camels``; parameters: seeded uniform values in
[0.05, 0.95] of each range, pushed through hydrodl2's own logit/sigmoid so that the *physical* values stored
are those it uses):

- ``static``: nmul = 1, static parameters, routing, no warm-up;
- ``nmul4_dynamic``: nmul = 4, BETA and K0 dynamic (daily values), routing;
- ``warmup``: nmul = 2, static parameters, 365 warm-up days run separately (hydrodl2's ``warmup_states``).

Writes ``tests/data/hydro/hbv_reference.npz`` (float64): the parameters of each case and every 20th day of the
reference's daily outputs (plus their sums over all days), ~ 45 KB.
"""

from __future__ import annotations

import pathlib
import sys
import types

import numpy as np
import torch

torch.set_default_dtype(torch.float64)

import hydrodl2.models.base as h_base  # noqa: E402
import hydrodl2.models.hbv.hbv as h_hbv  # noqa: E402

from pelagos.hydro.camels import SAMPLE, SAMPLE_BASINS, load_basins, stack_basins  # noqa: E402

OUT = pathlib.Path(__file__).resolve().parents[1] / "tests" / "data" / "hydro" / "hbv_reference.npz"
NAMES = ("BETA", "FC", "K0", "K1", "K2", "LP", "PERC", "UZL", "TT", "CFMAX", "CFR", "CWH")
BOUNDS = {  # the published ranges (da_hydro.md §2.1); hydrodl2 uses the same
    "BETA": (1.0, 6.0), "FC": (50, 1000), "K0": (0.05, 0.9), "K1": (0.01, 0.5), "K2": (0.001, 0.2),
    "LP": (0.2, 1), "PERC": (0, 10), "UZL": (0, 100), "TT": (-2.5, 2.5), "CFMAX": (0.5, 10), "CFR": (0, 0.1),
    "CWH": (0, 0.2), "route_a": (0, 2.9), "route_b": (0, 6.5),
}  # fmt: skip
STRIDE = 20


class _Torch64(types.ModuleType):
    """``torch`` as hydrodl2 sees it: every attribute of torch, but ``float32`` is ``float64``."""

    def __getattr__(self, name):
        return torch.float64 if name == "float32" else getattr(torch, name)


def patch_float64() -> None:
    fake = _Torch64("torch")
    h_hbv.torch = fake
    h_base.torch = fake


def dynamic_unit(base: np.ndarray, phase: np.ndarray, nt: int) -> np.ndarray:
    """Daily values in (0, 1) of a dynamic parameter: ``base + 0.25 sin(2π day/365 + phase)``."""
    day = np.arange(nt)[:, None, None]
    return base + 0.25 * np.sin(2 * np.pi * day / 365.0 + phase)


def run_case(forcing, nmul: int, dynamic: list[str], warmup: int, seed: int):
    P, T, PET = forcing
    nt, nb = P.shape
    g = np.random.default_rng(seed)
    n_hbv = len(NAMES) * nmul
    unit = g.uniform(0.05, 0.95, size=(nt, nb, n_hbv + 2))
    dyn_spec = {}
    unit[:] = unit[-1]
    for name in dynamic:  # smooth daily variation of a dynamic parameter around a static value
        j = NAMES.index(name) * nmul
        phase = g.uniform(0, 2 * np.pi, size=(1, nb, nmul))
        base = g.uniform(0.3, 0.7, size=(1, nb, nmul))
        unit[:, :, j : j + nmul] = dynamic_unit(base, phase, nt)
        dyn_spec[name] = (base, phase)
    unit = torch.as_tensor(unit)
    raw = torch.log(unit) - torch.log1p(-unit)  # hydrodl2 applies a sigmoid to what it is given
    config = {
        "warmup": warmup,
        "warmup_states": True,
        "dynamic_params": {"Hbv": ["par" + n for n in dynamic]},
        "variables": ["prcp", "tmean", "pet"],
        "routing": True,
        "nmul": nmul,
    }
    model = h_hbv.Hbv(config, device=torch.device("cpu"))
    x = torch.stack([P, T, PET], dim=-1)
    with torch.no_grad():
        out = model({"x_phy": x}, raw)
    for k, v in out.items():
        assert v.dtype == torch.float64, f"hydrodl2 output {k} is {v.dtype}: the float64 patch missed it"
    # the physical values hydrodl2 used: its own sigmoid of our logit, then lo + s (hi - lo)
    s = torch.sigmoid(raw)
    phys = {}
    for i, n in enumerate(NAMES):
        lo, hi = BOUNDS[n]
        v = s[:, :, i * nmul : (i + 1) * nmul] * (hi - lo) + lo  # (nt, nb, nmul)
        if n not in dynamic:
            phys[n] = v[-1].numpy()
    for i, n in enumerate(("route_a", "route_b")):
        lo, hi = BOUNDS[n]
        phys[n] = (s[-1, :, n_hbv + i] * (hi - lo) + lo).numpy()
    names = {
        "Q": "streamflow", "Q_unrouted": "streamflow_no_rout", "ET": "AET_hydro", "SNOWPACK": "SWE",
        "recharge": "recharge", "excess": "excs", "tosoil": "tosoil", "perc": "percolation",
        "Q0": "srflow_no_rout", "Q1": "ssflow_no_rout", "Q2": "gwflow_no_rout", "Q0_routed": "srflow",
        "Q2_routed": "gwflow",
    }  # fmt: skip
    series = {k: out[v][..., 0].numpy() for k, v in names.items()}
    for n, (base, phase) in dyn_spec.items():
        phys[n + "_base"], phys[n + "_phase"] = base, phase
    return phys, series


def main() -> int:
    patch_float64()
    basins = load_basins(SAMPLE, SAMPLE_BASINS, "2000-01-01", "2002-12-31")
    f = stack_basins(basins, torch.float64)
    forcing = (f["P"], f["T"], f["PET"])
    cases = {
        "static": dict(nmul=1, dynamic=[], warmup=0, seed=1),
        "nmul4_dynamic": dict(nmul=4, dynamic=["BETA", "K0"], warmup=0, seed=2),
        "warmup": dict(nmul=2, dynamic=[], warmup=365, seed=3),
    }
    arrays: dict[str, np.ndarray] = {"stride": np.array(STRIDE)}
    for case, kw in cases.items():
        phys, series = run_case(forcing, **kw)
        for n, v in phys.items():  # static values; a dynamic one as its base and phase (see dynamic_unit)
            arrays[f"{case}/param/{n}"] = v
        for n, v in series.items():
            arrays[f"{case}/out/{n}"] = v[::STRIDE]
            arrays[f"{case}/sum/{n}"] = v.sum(0)
        arrays[f"{case}/nmul"] = np.array(kw["nmul"])
        arrays[f"{case}/warmup"] = np.array(kw["warmup"])
        print(case, {n: float(v.mean()) for n, v in series.items() if n in ("Q", "ET", "SNOWPACK")})
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.0f} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

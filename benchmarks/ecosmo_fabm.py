"""ECOSMO year of GOTM's nns_annual case: pelagos against GOTM+FABM, agreement and wall time.

Needs the side build and run (``scripts/build_gotm_fabm.sh``, ``scripts/run_gotm_fabm_ecosmo.sh``):
GOTM+FABM's 6-hourly ECOSMO output, the hourly physics it ran with and its wall time (``wall_seconds``,
physics included). pelagos runs the same case (``examples/nns_annual_ecosmo.yaml``'s numerics: split_factor 2,
gotm/light, P2_PDM, float64) on that physics with :func:`pelagos.core.rollout` (no output but the 6-hourly
states kept in memory), and reports per state ``max |pelagos - FABM| / max |FABM|`` over the year, the peaks
and their days, and the wall-time ratio. ``--perturb EPS`` also runs pelagos from its initial state perturbed
by +-EPS (relative, random per layer) and reports pelagos's own divergence with the same measure (ECOSMO's
anti-extinction switches make the year sensitive to the last bits: docs/ecosmo.md). Writes
``benchmarks/results/ecosmo_fabm.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import netCDF4
import numpy as np
import torch

from pelagos.bgc.fabm_yaml import load_system
from pelagos.column import ColumnForcing, ColumnModel
from pelagos.core import rollout
from pelagos.io.config import resolve_path

ROOT = Path(__file__).resolve().parent.parent


def _pelagos_year(run: Path, days: float, perturb: float = 0.0):
    system = load_system(
        resolve_path("builtin:fabm/fabm-nersc-ecosmo.yaml", None), drop=("CO2",), dtype=torch.float64
    )
    forcing = ColumnForcing.from_gotm(run / "physics.nc", dtype=torch.float64, stop=days * 86400.0)
    model = ColumnModel(system, forcing, dt=3600.0, split_factor=2, sinking_method="P2_PDM")
    s = model.initial_state()
    if perturb:
        g = torch.Generator().manual_seed(1)
        for k in model.interior:
            s[k] = s[k] * (1 + perturb * (2 * torch.rand(s[k].shape, generator=g, dtype=s[k].dtype) - 1))
    t0 = time.perf_counter()
    with torch.no_grad():
        traj = rollout(model, s, round(days * 24), save_every=6, include_initial=True)
    wall = time.perf_counter() - t0
    names = model.interior + model.bottom
    return {n: traj.states[n].numpy().reshape(traj.states[n].shape[0], -1) for n in names}, wall


def _compare(a: dict, b: dict) -> dict:
    out = {}
    for n, x in a.items():
        y = b[n][: x.shape[0]].reshape(x.shape)
        out[n] = {
            "max_rel_to_range": float(np.abs(x - y).max() / np.abs(y).max()),
            "peak": [float(x.max()), float(y.max())],
            "peak_day": [float(x.max(1).argmax() / 4), float(y.max(1).argmax() / 4)],
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default=str(ROOT / ".side" / "gotm" / "run_ecosmo"))
    ap.add_argument("--days", type=float, default=365.0)
    ap.add_argument("--perturb", type=float, default=0.0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    run = Path(args.run)
    with netCDF4.Dataset(run / "ecosmo.nc") as e:
        ours, wall = _pelagos_year(run, args.days)
        nt = next(iter(ours.values())).shape[0]
        ref = {n: np.asarray(e[n][:nt], dtype=np.float64).reshape(nt, -1) for n in ours}
    res = {"pelagos_vs_fabm": _compare(ours, ref)}
    gotm_wall = float((run / "wall_seconds").read_text())
    res["wall_s"] = {"pelagos": wall, "gotm_fabm_physics_included": gotm_wall, "ratio": wall / gotm_wall}
    print(f"{'state':14s} {'pelagos vs FABM':>16s}   peaks (pelagos / FABM, day)")
    for n, r in res["pelagos_vs_fabm"].items():
        print(
            f"{n:14s} {r['max_rel_to_range']:16.2e}   {r['peak'][0]:.6g} / {r['peak'][1]:.6g}"
            f"  ({r['peak_day'][0]:.2f} / {r['peak_day'][1]:.2f})"
        )
    if args.perturb:
        pert, _ = _pelagos_year(run, args.days, args.perturb)
        res["pelagos_self_divergence"] = {
            "perturb": args.perturb,
            **{n: v["max_rel_to_range"] for n, v in _compare(pert, ours).items()},
        }
        worst = max(v for k, v in res["pelagos_self_divergence"].items() if k != "perturb")
        print(f"pelagos perturbed by +-{args.perturb:g}: worst self-divergence {worst:.2e}")
    print(
        f"wall: pelagos {wall:.1f} s, GOTM+FABM {gotm_wall:.2f} s (physics included): "
        f"{wall / gotm_wall:.0f}x (ours / reference)"
    )
    res["machine"] = {"platform": platform.platform(), "torch": torch.__version__, "threads": 1}
    out = ROOT / "benchmarks" / "results" / "ecosmo_fabm.json"
    out.write_text(json.dumps(res, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

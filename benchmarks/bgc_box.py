"""0-D NPZD box (pelagos.bgc.box) against an independent numpy loop of the same equations.

Measures, on this machine, one CPU thread, float64, FABM's NNS 0-D case (dt = 1800 s, depth 10 m):
- wall time of a box run per integrator (Euler, RK2, MP) and of a plain numpy Euler loop (the reference:
  scalar NPZD + fabm0d light, what a hand-written 0-D model costs in Python);
- the largest difference between the pelagos Euler trajectory and the numpy one;
- the cost per box-step when B boxes run batched (one Python loop, tensors (B, 1)).
Timings are the minimum over repeats (the machine is shared). Writes benchmarks/results/bgc_box.json and
docs/bench_bgc_box.md. ``--quick``: 30 days instead of a year.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from pelagos.bgc import BGCSystem  # noqa: E402
from pelagos.bgc.box import read_env_file, run_box  # noqa: E402
from pelagos.bgc.fabm_yaml import packaged_yaml  # noqa: E402
from test_bgc_box import numpy_box_npzd_euler  # noqa: E402

ENV = ROOT / ".." / "shared" / "data" / "fabm" / "env_nns_annual.dat"


def best(f, repeats):
    t = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = f()
        t.append(time.perf_counter() - t0)
    return min(t), out


def main(argv):
    quick = "--quick" in argv
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    days = 30 if quick else 365
    dt = 1800.0
    n = int(days * 86400 / dt)
    system = BGCSystem.from_yaml(packaged_yaml())
    if ENV.exists():
        data = read_env_file(ENV)
        t_file = (data["time"] - data["time"][0]) / np.timedelta64(1, "s")
        swr = np.interp(
            dt * np.arange(1, n + 1), t_file.astype(float), data["surface_downwelling_shortwave_flux"]
        )
        source = "env_nns_annual.dat (FABM NNS 1998)"
    else:
        t = dt * np.arange(1, n + 1)
        swr = np.maximum(0.0, 500.0 * np.sin(2 * np.pi * t / 86400.0))
        source = "synthetic daily cycle"
    forcing = {"surface_downwelling_shortwave_flux": torch.tensor(swr)}
    q = {
        k: float(system.get_parameter_value(f"npzd.{k}"))
        for k in (
            "p0",
            "z0",
            "kc",
            "i_min",
            "rmax",
            "gmax",
            "iv",
            "alpha",
            "rpn",
            "rzn",
            "rdn",
            "rpdu",
            "rpdl",
            "rzd",
        )
    }
    rep = 2 if quick else 1
    res = {
        "machine": platform.processor() or platform.machine(),
        "threads": 1,
        "steps": n,
        "dt_s": dt,
        "forcing": source,
    }
    t_np, ref = best(lambda: numpy_box_npzd_euler(swr, dt, n, q, (4.5, 1e-15, 1e-15, 4.5)), rep + 1)
    res["numpy_euler_s"] = t_np
    for m in ("euler", "rk2", "mp"):
        tm, ds = best(lambda m=m: run_box(system, forcing, dt=dt, method=m), rep)
        res[f"pelagos_{m}_s"] = tm
        if m == "euler":
            got = np.stack([ds[k].values for k in ("npzd_nut", "npzd_phy", "npzd_zoo", "npzd_det")], -1)
            res["max_abs_diff_vs_numpy"] = float(np.abs(got - ref).max())
        tn = ds["total_nitrogen"].values
        res[f"pelagos_{m}_N_drift_rel"] = float(np.abs(tn - tn[0]).max() / tn[0])
    # batched boxes: cost per box-step
    res["batched"] = {}
    nb = min(n, 480)
    for B in (1, 100, 10000):
        st0 = system.initial_state((B,), nz=1)
        f = {"surface_downwelling_shortwave_flux": torch.tensor(swr[:nb])[:, None].expand(nb, B)}
        tb, _ = best(lambda st0=st0, f=f: run_box(system, f, dt=dt, state0=st0, save_every=nb), 2)
        res["batched"][B] = {"s_per_step": tb / nb, "us_per_box_step": 1e6 * tb / nb / B}
    out = ROOT / "benchmarks" / "results" / ("bgc_box_quick.json" if quick else "bgc_box.json")
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    lines = [
        "# 0-D NPZD box: pelagos vs a numpy loop",
        "",
        f"Machine: {res['machine']}, 1 thread, float64; {n} steps of {dt:g} s ({days} days), "
        f"forcing: {source}.",
        "Minimum over repeats on a shared machine. Produced by `python benchmarks/bgc_box.py`.",
        "",
        "| run | wall time (s) | per step (ms) | N drift (rel.) |",
        "| --- | --- | --- | --- |",
        f"| numpy Euler loop (reference) | {t_np:.2f} | {1e3 * t_np / n:.3f} | |",
    ]
    for m in ("euler", "rk2", "mp"):
        tm = res[f"pelagos_{m}_s"]
        lines.append(
            f"| pelagos {m} | {tm:.2f} | {1e3 * tm / n:.3f} | {res[f'pelagos_{m}_N_drift_rel']:.1e} |"
        )
    lines += [
        "",
        f"Largest |pelagos Euler − numpy Euler| over the run: {res['max_abs_diff_vs_numpy']:.2e} mmol m-3.",
        "",
        "| boxes B (batched, Euler) | s per step | µs per box-step |",
        "| --- | --- | --- |",
    ]
    for B, r in res["batched"].items():
        lines.append(f"| {B} | {r['s_per_step']:.2e} | {r['us_per_box_step']:.3f} |")
    doc = ROOT / "docs" / "bench_bgc_box.md"
    doc.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

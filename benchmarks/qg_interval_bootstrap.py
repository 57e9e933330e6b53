"""What the AB3 bootstrap restart of ``QGInterval`` costs (issue 9, item 7).

``QGInterval(model, n_sub)`` makes PV q the whole state, so each interval starts pyqg's time scheme afresh:
forward Euler, then AB2, then AB3 for the remaining ``n_sub − 2`` steps. A continuous run uses AB3 throughout.
This script measures, on the set-up of ``docs/qg_increments.md`` (two-layer 32², L = 500 km, dt = 1 h, spun up
13 000 h, 6-h intervals), how far the two drift apart and compares that with

- the time-truncation error of AB3 itself (continuous dt = 1 h against a continuous dt = 15 min reference),
- the observation error of the 4D-Var experiment (1 % of each layer's ψ std), and
- the model error that experiment is about (β = 0: 0.011 / 0.034 of ψ std after 1 day).

Errors are ψ RMSE per layer [upper, lower] divided by that layer's ψ std. Compute: one tendency per sub-step
either way, so the restart costs no time; it only changes the scheme. Writes
``benchmarks/results/qg_interval_bootstrap.json``; about 30 s on one core.
"""

from __future__ import annotations

import json
import pathlib
import time

import torch

from pelagos.core.rollout import rollout
from pelagos.qg import QGModel
from pelagos.qg.interval import QGInterval
from pelagos.qg.model_error import streamfunction

OUT = pathlib.Path(__file__).resolve().parent / "results" / "qg_interval_bootstrap.json"


def rel(x: torch.Tensor, ref: torch.Tensor, scale: torch.Tensor) -> list[float]:
    d = (x - ref).transpose(0, -3).reshape(x.shape[-3], -1)
    return [round(v, 6) for v in (d.pow(2).mean(1).sqrt() / scale).tolist()]


def main() -> dict:
    torch.set_num_threads(1)
    t0 = time.time()
    kw = dict(nx=32, L=5e5, beta=1.5e-11)
    hourly, fine = QGModel(**kw, dt=3600.0), QGModel(**kw, dt=900.0)
    interval = QGInterval(hourly, 6)
    gen = torch.Generator().manual_seed(0)
    days = [1, 2, 5]
    n_h = 24 * max(days)
    with torch.no_grad():
        q = 3e-6 * torch.randn(1, 2, 32, 32, dtype=torch.float64, generator=gen)
        q = rollout(hourly, hourly.state_from_q(q), 13000, save_every=10**9, include_initial=False).final["q"]
        psi_std = streamfunction(hourly, q).std(dim=(0, 2, 3))
        cont = rollout(hourly, hourly.state_from_q(q), n_h, save_every=24, include_initial=False).states["q"]
        ref = rollout(fine, fine.state_from_q(q), 4 * n_h, save_every=96, include_initial=False).states["q"]
        rest = rollout(interval, q, n_h // 6, save_every=4, include_initial=False).states
        t_restart, t_continuous = [], []
        for _ in range(5):  # best of 5: 30 days each way
            t1 = time.perf_counter()
            rollout(interval, q, 30 * 4, save_every=10**9, include_initial=False)
            t_restart.append(time.perf_counter() - t1)
            t1 = time.perf_counter()
            rollout(hourly, hourly.state_from_q(q), 30 * 24, save_every=10**9, include_initial=False)
            t_continuous.append(time.perf_counter() - t1)
    out = {"setup": "two-layer 32^2, L=500 km, dt=1 h, beta=1.5e-11, spun up 13000 h; QGInterval(model, 6)"}
    for d in days:
        i = d - 1
        p_c, p_r, p_ref = (streamfunction(hourly, x[i]) for x in (cont, rest, ref))
        out[f"{d}d"] = {
            "restart_vs_continuous": rel(p_r, p_c, psi_std),
            "continuous_vs_dt15min": rel(p_c, p_ref, psi_std),
            "restart_vs_dt15min": rel(p_r, p_ref, psi_std),
        }
    out["wall_s_30_days_best_of_5"] = {
        "restart": round(min(t_restart), 3),
        "continuous": round(min(t_continuous), 3),
    }
    out["total_s"] = round(time.time() - t0, 1)
    OUT.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()

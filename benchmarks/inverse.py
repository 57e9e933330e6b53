# ruff: noqa: B023  (closures are called within the loop iteration that defines them)
"""Inverse methods on the water column: how the cost scales with the number of free parameters, gradient
cost with checkpointing, and peak memory versus window length.

1. Scaling in p (ECOSMO, p in {2, 5, 10, 20, 50}): a noise-free twin on a short window (2 layers of 55 m of
   NNS physics, dt = 1 h, 18 h from 1998-04-15, hourly surface + bottom values of the 14 tracers); truth = the
   FABM test-case values, start = each parameter off by ±20 %. Three estimators, each recorded after every
   model run: (a) gradient (L-BFGS, gradient by autograd = one adjoint run per evaluation), (b) ES-MDA with
   N = 64 members run as one batch of columns (4 assimilations), (c) L-BFGS with forward finite-difference
   gradients (the p+1 perturbed runs batched as columns). Reported: model runs (member runs for ES-MDA/FD,
   forward+adjoint pairs for the gradient) and wall time to bring the relative parameter RMS error below
   10 % (from 20 %), or the error reached in the budget.
2. Gradient / forward cost on a long window (NPZD, 11 × 10 m, dt = 6 h, one year = 1460 steps), without and
   with checkpointing (segments of sqrt(n) steps).
3. Peak memory (RSS high-water, fresh process per case) of one gradient versus window length, with and
   without checkpointing.

Run: ``python benchmarks/inverse.py [--quick]``; writes benchmarks/results/inverse.json and prints a summary.
Timings are wall times on a shared 2-core machine (other jobs running): compare ratios within a row.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

DAY = 86400.0
HERE = Path(__file__).resolve().parent
ECO_PARAMS = [
    "muPl", "muPs", "aa", "Exphy", "rNH4", "rNO3", "psi", "mPl", "mPs", "GrZlP", "GrZsP", "GrZlZ", "Rg", "mZl",  # noqa: E501
    "mZs", "excZl", "excZs", "gammaZlp", "gammaZsp", "gammaZd", "reminD", "sinkDet", "rPO4", "rSi", "regenSi",
    "muBG", "GrBG", "mBG", "resuspRt", "sedimRt", "reminSED", "TctrlDenit", "RelSEDp1", "RelSEDp2",
    "reminSEDsi", "sinkOPAL", "prefZsPs", "prefZsPl", "prefZsD", "prefZlPs", "prefZlPl", "prefZlZs", "prefZlD",  # noqa: E501
    "MINchl2nPs", "MAXchl2nPs", "MINchl2nPl", "MAXchl2nPl", "alfaPs", "alfaPl", "frr",
]  # fmt: skip


def ecosmo_setup(hours: int = 18):
    from pelagos.bgc.system import BGCSystem
    from pelagos.column import ColumnForcing, ColumnModel, compact_forcing_path
    from pelagos.column.coarsen import coarsen_forcing
    from pelagos.column.observe import SamplingPattern, synthetic_observations
    from pelagos.io.config import resolve_path

    fine = ColumnForcing.from_gotm(compact_forcing_path(), bottom_stress=0.0)
    t0 = fine.seconds("1998-04-15")
    f = coarsen_forcing(fine, layers=11, dt=3600.0, start=t0 - 3600.0, stop=t0 + hours * 3600.0)
    bgc = BGCSystem.from_yaml(
        resolve_path("builtin:fabm/fabm-nersc-ecosmo.yaml", None), drop_unsupported=True
    )
    model = ColumnModel(bgc, f, dt=3600.0)
    x0 = model.initial_state(t0=t0)
    obs = synthetic_observations(
        model,
        x0,
        [SamplingPattern(v, ["surface", 100.0], 3600.0) for v in model.interior],
        t0=t0,
        t_end=t0 + hours * 3600.0,
        noise="none",
        rel=0.05,
        abs_floor=1e-3,
    )
    obs.sigma = 0.05 * obs.values.abs().nan_to_num(1.0) + 1e-3
    return model, x0, obs, t0


def scaling(ps: list[int], budget: int, members: int = 64) -> list[dict]:
    from pelagos.inverse.ensemble import esmda
    from pelagos.inverse.forward import predict
    from pelagos.inverse.optim import minimize
    from pelagos.inverse.problem import VariationalProblem

    model, x0, obs, t0 = ecosmo_setup()
    rows = []
    for p in ps:
        names = [f"ECO.{n}" for n in ECO_PARAMS[:p]]
        truth = torch.tensor([float(model.get_parameter_value(n)) for n in names], dtype=torch.float64)
        model.select_free(names)
        start = truth * torch.tensor([1.2 if i % 2 == 0 else 0.8 for i in range(p)], dtype=torch.float64)
        scale = truth.abs()

        def err(u: torch.Tensor) -> float:  # identity transforms: raw = physical
            return float(((u - truth) / scale).pow(2).mean().sqrt())

        row = {"p": p, "start_error": err(start)}
        # (a) gradient
        prob = VariationalProblem(model, obs, x0, t0=t0)
        log, t_start = [], time.perf_counter()

        def cost(z):
            J = prob.cost(z)
            log.append((time.perf_counter() - t_start, err(z.detach()), float(J.detach())))
            return J

        minimize(cost, start.clone(), method="lbfgs", max_iter=budget, gtol=1e-10, ftol=1e-14)
        row["gradient"] = _reach(log, runs=lambda i: i + 1)
        # (c) finite differences, p+1 runs batched as columns
        xb = model.initial_state(p + 1, t0=t0)
        log, t_start = [], time.perf_counter()
        h = 1e-6

        def fd_value_and_grad(z: np.ndarray):
            zt = torch.as_tensor(z, dtype=torch.float64)
            U = zt.expand(p + 1, p).clone()
            U[1:] += h * scale.diag()
            with torch.no_grad(), model.using(U):
                J = obs.nll(predict(model, xb, obs, t0=t0), batch_dims=1)
            log.append((time.perf_counter() - t_start, err(zt), float(J[0])))
            return float(J[0]), ((J[1:] - J[0]) / (h * scale)).numpy()

        from scipy.optimize import minimize as sp_min

        sp_min(
            fd_value_and_grad,
            start.numpy(),
            jac=True,
            method="L-BFGS-B",
            options={"maxfun": budget, "maxiter": budget, "gtol": 1e-12, "ftol": 1e-15},
        )
        row["finite_difference"] = _reach(log, runs=lambda i: (i + 1) * (p + 1))
        # (b) ES-MDA, prior N(start, (20 %)^2) around the first guess
        g = torch.Generator().manual_seed(p)
        U = start + 0.2 * scale * torch.randn(members, p, generator=g, dtype=torch.float64)
        xe = model.initial_state(members, t0=t0)
        t = time.perf_counter()
        r = esmda(model, obs, xe, U, alphas=4, t0=t0, generator=g)
        wall = time.perf_counter() - t
        e = err(r.params.mean(0))
        row["esmda"] = {
            "members": members,
            "member_runs": r.n_evals * members,
            "batched_runs": r.n_evals,
            "wall_s": wall,
            "final_error": e,
            "reached": e <= 0.1,
        }
        rows.append(row)
        print(json.dumps(row))
        model.select_free([])
    return rows


def _reach(log: list, runs) -> dict:
    errs = [e for _, e, _ in log]
    hit = next((i for i, e in enumerate(errs) if e <= 0.1), None)
    out = {
        "evaluations": len(log),
        "final_error": errs[-1],
        "best_error": min(errs),
        "cost_first": log[0][2],
        "cost_last": log[-1][2],
        "wall_s_total": log[-1][0],
    }
    if hit is not None:
        out.update(reached=True, runs_to_target=runs(hit), wall_s_to_target=log[hit][0])
    else:
        out.update(reached=False)
    return out


def npzd_long(days: float):
    from pelagos.column import ColumnForcing, ColumnModel, compact_forcing_path
    from pelagos.column.coarsen import coarsen_forcing
    from pelagos.column.stacked import StackedColumn
    from pelagos.io.config import resolve_path

    fine = ColumnForcing.from_gotm(compact_forcing_path())
    dt = 6 * 3600.0
    f = coarsen_forcing(fine, layers=2, dt=dt, start=0.0, stop=min(days, 364.0) * DAY)
    return StackedColumn(ColumnModel(resolve_path("builtin:fabm/fabm-gotm-npzd.yaml", None), f, dt=dt))


def gradient_ratio(days: float = 364.0, repeat: int = 2) -> dict:
    from pelagos.core.rollout import rollout

    model = npzd_long(days)
    model.select_free(["npzd.rmax", "npzd.gmax"])
    n = round(days * DAY / model.dt)
    x0 = model.initial_state()[0]
    u = model.free_vector()

    def fwd():
        with torch.no_grad(), model.using(u):
            rollout(model, x0, n, save_every=n, include_initial=False)

    def grad(ck):
        uu = u.clone().requires_grad_(True)
        with model.using(uu):
            x = rollout(model, x0, n, save_every=n, include_initial=False, checkpoint=ck).final
            J = x[1].sum()
        J.backward()

    out = {"steps": n, "nz": model.nz}
    out["forward_s"] = min(_time(fwd) for _ in range(repeat))
    out["gradient_s"] = min(_time(lambda: grad(None)) for _ in range(repeat))
    out["gradient_sqrt_checkpoint_s"] = min(_time(lambda: grad("sqrt")) for _ in range(repeat))
    out["ratio"] = out["gradient_s"] / out["forward_s"]
    out["ratio_checkpoint"] = out["gradient_sqrt_checkpoint_s"] / out["forward_s"]
    model.select_free([])
    return out


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _memory_child(days: float, ck: str) -> None:
    from pelagos.core.rollout import rollout

    model = npzd_long(days)
    model.select_free(["npzd.rmax"])
    n = round(days * DAY / model.dt)
    x0 = model.initial_state()[0]

    def kb(field: str) -> int:
        for line in open("/proc/self/status"):  # noqa: SIM115
            if line.startswith(field):
                return int(line.split()[1])
        return 0

    open("/proc/self/clear_refs", "w").write("5")  # noqa: SIM115  # reset the RSS high-water mark (Linux)
    before = kb("VmRSS:")
    uu = model.free_vector().clone().requires_grad_(True)
    with model.using(uu):
        x = rollout(
            model, x0, n, save_every=n, include_initial=False, checkpoint=None if ck == "none" else ck
        ).final
    x[1].sum().backward()
    after = kb("VmHWM:")
    print(
        json.dumps(
            {"days": days, "steps": n, "checkpoint": ck, "peak_rss_increase_MB": (after - before) / 1024}
        )
    )


def memory(windows: list[float]) -> list[dict]:
    rows = []
    for d in windows:
        for ck in ("none", "sqrt"):
            r = subprocess.run(
                [sys.executable, __file__, "--memory-child", str(d), ck],
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
            )
            rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
            print(rows[-1])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--memory-child", nargs=2)
    args = ap.parse_args()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    if args.memory_child:
        _memory_child(float(args.memory_child[0]), args.memory_child[1])
        return
    t = time.perf_counter()
    res = {"machine": f"{os.cpu_count()} CPU cores (shared), torch {torch.__version__}, 1 torch thread"}
    ps = [2, 5] if args.quick else [2, 5, 10, 20, 50]
    res["scaling"] = scaling(ps, budget=15 if args.quick else 40)
    res["gradient_cost"] = gradient_ratio(60.0 if args.quick else 364.0)
    print(res["gradient_cost"])
    res["memory"] = memory([30.0, 90.0] if args.quick else [30.0, 90.0, 180.0, 364.0])
    res["total_wall_s"] = time.perf_counter() - t
    out = HERE / "results" / ("inverse_quick.json" if args.quick else "inverse.json")
    out.write_text(json.dumps(res, indent=2))
    print(f"wrote {out} ({res['total_wall_s']:.0f} s)")


if __name__ == "__main__":
    main()

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
   A quick consistency check of the three methods only: at this size (18 h, 2 layers) almost nothing is
   identifiable. The study at a realistic size (a year, 22 layers, 20 parameters, identifiability) is
   examples/ecosmo_identifiability.py (docs/ecosmo_identifiability.md).
2. Gradient / forward cost on a long window (NPZD, 11 × 10 m, dt = 6 h, one year = 1460 steps), without and
   with checkpointing (segments of sqrt(n) steps).
3. Memory of one gradient versus window length (bytes autograd saves for the backward pass), with and
   without checkpointing.

Run: ``python benchmarks/inverse.py [--quick]``; writes benchmarks/results/inverse.json and prints a summary.
Timings are wall times on a shared 2-core machine (other jobs running): compare ratios within a row.
"""

from __future__ import annotations

import argparse
import json
import math
import os
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
    from pelagos.core.obsio import Sampling, regular_times, synthetic_observations
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
        regular_times(model, t0, t0 + hours * 3600.0, 3600.0),
        [Sampling(v, {"depth": ["surface", 100.0]}) for v in model.interior],
        start=t0,
        noise="none",
        sigma=1e-3,
        rel_sigma=0.05,
    )
    obs.sigma = 0.05 * obs.values.abs().nan_to_num(1.0) + 1e-3
    return model, x0, obs, t0


def scaling(ps: list[int], budget: int, members: int = 64) -> list[dict]:
    from pelagos.inverse.ensemble import esmda
    from pelagos.inverse.forward import predict
    from pelagos.inverse.optim import minimize
    from pelagos.inverse.problem import VariationalProblem

    rows = []
    for p in ps:
        model, x0, obs, t0 = ecosmo_setup()  # fresh for every p: nothing carried over between cases
        model.select_free([f"ECO.{n}" for n in ECO_PARAMS[:p]])
        names = model.free_parameter_names()  # the order of the free vector
        truth = torch.tensor(
            [float(model.get_parameter_value(n).detach()) for n in names], dtype=torch.float64
        )
        start = truth * torch.tensor([1.2 if i % 2 == 0 else 0.8 for i in range(p)], dtype=torch.float64)
        scale = truth.abs()

        def err(u: torch.Tensor) -> float:  # identity transforms: raw = physical
            return float(((u - truth) / scale).pow(2).mean().sqrt())

        row = {"p": p, "start_error": err(start)}
        # the same Gaussian prior for every method: N(first guess, (20 % of the value)^2)
        for n, s0 in zip(names, start.tolist()):
            model.set_prior(n, s0, 0.2 * abs(s0))
        pstd = 0.2 * start.abs()
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
            J = J + 0.5 * ((U - start) / pstd).pow(2).sum(-1)  # prior, as in the other methods
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
        U = start + pstd * torch.randn(members, p, generator=g, dtype=torch.float64)
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
            "misfit_history": r.history,
        }
        rows.append(row)
        print(json.dumps(row))
        for n in names:
            model.parameter_spec(n).prior = None
        model.select_free([])
    return rows


def _reach(log: list, runs) -> dict:
    """Evaluations and wall time to the first point with parameter error <= 10 % and to the first point with a
    cost within 1 % of the best cost found (convergence)."""
    errs = [e for _, e, _ in log]
    costs = [c for _, _, c in log]
    best = min(costs)
    out = {
        "evaluations": len(log),
        "final_error": errs[-1],
        "best_error": min(errs),
        "cost_first": costs[0],
        "cost_last": costs[-1],
        "cost_best": best,
        "wall_s_total": log[-1][0],
    }
    hit = next((i for i, e in enumerate(errs) if e <= 0.1), None)
    if hit is not None:
        out.update(reached=True, runs_to_target=runs(hit), wall_s_to_target=log[hit][0])
    else:
        out.update(reached=False)
    conv = next(i for i, c in enumerate(costs) if c - best <= 0.01 * max(costs[0] - best, 1e-300))
    out.update(runs_to_converge=runs(conv), wall_s_to_converge=log[conv][0], error_at_converge=errs[conv])
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


def memory(windows: list[float]) -> list[dict]:
    """Bytes saved for the backward pass by one gradient of a window (saved-tensor hooks: what autograd keeps
    between the forward and the backward run), without and with sqrt(n) checkpointing. With checkpointing the
    count is what stays stored outside the recomputed segments; one segment's graph (≈ sqrt(n) steps) lives
    transiently during its recomputation and is given as well."""
    from pelagos.core.rollout import rollout

    rows = []
    for d in windows:
        model = npzd_long(d)
        model.select_free(["npzd.rmax"])
        n = round(d * DAY / model.dt)
        x0 = model.initial_state()[0]
        for ck in ("none", "sqrt"):
            total = [0]

            def pack(t: torch.Tensor) -> torch.Tensor:
                total[0] += t.numel() * t.element_size()
                return t

            uu = model.free_vector().clone().requires_grad_(True)
            t = time.perf_counter()
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), model.using(uu):
                x = rollout(
                    model, x0, n, save_every=n, include_initial=False, checkpoint=None if ck == "none" else ck
                ).final
            x[1].sum().backward()
            seg = math.isqrt(n) if ck == "sqrt" else n
            rows.append(
                {
                    "days": d,
                    "steps": n,
                    "checkpoint": ck,
                    "saved_MB": total[0] / 2**20,
                    "segment_steps": seg,
                    "wall_s": time.perf_counter() - t,
                }
            )
            print(rows[-1])
        model.select_free([])
    return rows


def plot(res: dict, path: Path) -> Path:
    """Member runs and wall time to convergence versus p; saved memory versus window length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sc = res["scaling"]
    ps = [r["p"] for r in sc]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    ax = axes[0]
    ax.loglog(ps, [r["gradient"]["runs_to_converge"] for r in sc], "o-", label="gradient (forward+adjoint)")
    ax.loglog(ps, [r["finite_difference"]["runs_to_converge"] for r in sc], "s-", label="finite differences")
    ax.loglog(ps, [r["esmda"]["member_runs"] for r in sc], "^-", label="ES-MDA (64 members × 5)")
    ax.set_xlabel("free parameters p")
    ax.set_ylabel("model runs to convergence")
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.loglog(ps, [r["gradient"]["wall_s_to_converge"] for r in sc], "o-", label="gradient")
    ax.loglog(
        ps, [r["finite_difference"]["wall_s_to_converge"] for r in sc], "s-", label="FD (batched columns)"
    )
    ax.loglog(ps, [r["esmda"]["wall_s"] for r in sc], "^-", label="ES-MDA (batched members)")
    ax.set_xlabel("free parameters p")
    ax.set_ylabel("wall time to convergence (s)")
    ax.legend(fontsize=8)
    ax = axes[2]
    for ck, mk in (("none", "o-"), ("sqrt", "s-")):
        rows = [m for m in res["memory"] if m["checkpoint"] == ck]
        ax.loglog([m["steps"] for m in rows], [m["saved_MB"] for m in rows], mk, label=f"checkpoint={ck}")
    ax.set_xlabel("window length (steps of 6 h)")
    ax.set_ylabel("saved for backward (MB)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--plot-only", action="store_true", help="redraw the figure from the JSON")
    args = ap.parse_args()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    fig = HERE.parent / "docs" / "figures" / "bench_inverse_column.png"
    if args.plot_only:
        print(plot(json.loads((HERE / "results" / "inverse.json").read_text()), fig))
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
    if not args.quick:
        plot(res, fig)
    print(f"wrote {out} ({res['total_wall_s']:.0f} s)")


if __name__ == "__main__":
    main()

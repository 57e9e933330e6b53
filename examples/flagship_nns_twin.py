"""Flagship twin experiment (``make demo``): 4D-Var recovers NPZD parameters and the initial state of the
Northern North Sea 1998 spring bloom from sparse, noisy observations.

- Model: FABM's gotm/npzd in the pelagos water column, driven by the GOTM NNS 1998 physics (the compact
  22 × 5 m hourly forcing shipped with pelagos), coarsened to 11 layers of 10 m and a 6-hour step (the step's
  mean forcing; see docs/flagship.md for why this is sound and what it costs).
- Truth: the FABM test-case parameters; spun up from 1 January to the window start (1 March).
- Observations over 1 March – 1 June (92 days, 368 steps): weekly surface phytoplankton and monthly nutrient
  profiles (5, 25, 50, 75, 100 m), 20 % log-normal noise.
- First guess: five parameters wrong by 30–50 % (rmax, gmax, alpha, kc, rpdl) and an initial state spun
  up with those wrong parameters and with 20 % less nutrient; Gaussian priors centred on the first guess,
  background covariance with a 20 m Gaussian vertical correlation.
- 4D-Var (L-BFGS on parameters + whitened initial-state increment, gradient by autograd through the column),
  then the Laplace (Gauss–Newton) posterior std of the parameters.

Prints truth / prior / estimate ± std and writes results/flagship_*.png and results/flagship_nns_twin.json.
Run: ``python examples/flagship_nns_twin.py`` (``--quick`` for a 4-week window).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from pelagos.column import ColumnForcing, ColumnModel, compact_forcing_path
from pelagos.column.background import ColumnBackground
from pelagos.column.coarsen import coarsen_forcing
from pelagos.column.stacked import StackedColumn
from pelagos.core.obsio import Sampling, regular_times, synthetic_observations
from pelagos.inverse.fourdvar import fourdvar
from pelagos.io.config import resolve_path

DAY = 86400.0
TRUTH = {  # FABM's fabm-gotm-npzd.yaml values
    "npzd.rmax": 1.0,
    "npzd.gmax": 0.2,
    "npzd.alpha": 1.35,
    "npzd.kc": 0.03,
    "npzd.rpdl": 0.1,
}
FIRST_GUESS = {
    "npzd.rmax": 0.7,
    "npzd.gmax": 0.3,
    "npzd.alpha": 2.0,
    "npzd.kc": 0.045,
    "npzd.rpdl": 0.06,
}
PRIOR_REL_STD = 0.5  # prior std of each parameter ≈ 50 % of its first-guess value (in unconstrained space)


def raw_std_for(model, name: str, value: float, rel: float) -> float:
    """Unconstrained-space std equivalent to ``rel·|value|`` at ``value`` (delta method)."""
    tr = model.parameter_spec(name).transform
    u = tr.inverse(torch.tensor(float(value), dtype=torch.float64)).requires_grad_(True)
    (dx,) = torch.autograd.grad(tr.forward(u), u)
    return float(rel * abs(value) / abs(float(dx)))


def build(window_days: float = 92.0, layers: int = 2, dt: float = 6 * 3600.0):
    """Coarse NNS forcing and the stacked NPZD column; returns (model, t_start, t_end)."""
    fine = ColumnForcing.from_gotm(compact_forcing_path())
    t0 = fine.seconds("1998-03-01")
    t1 = t0 + window_days * DAY
    forcing = coarsen_forcing(fine, layers=layers, dt=dt, start=0.0, stop=t1)
    col = ColumnModel(resolve_path("builtin:fabm/fabm-gotm-npzd.yaml", None), forcing, dt=dt)
    return StackedColumn(col), t0, t1


def scipy_stop_reason(r, max_iter: int) -> str:
    """SciPy's L-BFGS-B stop message in words (it says just "ABNORMAL: " when the line search fails)."""
    msg = str(r.message)
    if "ABNORMAL" in msg:
        return (
            "stopped: the line search found no lower cost along the last direction (the cost is flat to "
            "rounding there; the estimate is the best point found)"
        )
    if "REL_REDUCTION_OF_F" in msg:
        return "converged: the relative cost change fell below ftol"
    if "PROJ" in msg and "GRADIENT" in msg:
        return "converged: the projected gradient fell below gtol"
    if r.nit >= max_iter or "ITERATIONS" in msg or "EVALUATIONS" in msg:
        return f"stopped: iteration or model-run limit reached ({r.nit} iterations; raise --max-iter)"
    return msg


def fourdvar_scipy(model, obs, xb, B, *, t0: float, max_iter: int):
    """Strong-constraint 4D-Var on parameters + initial state with pelagos.inverse's VariationalProblem (cost,
    adjoint gradient, Laplace) and SciPy's L-BFGS-B as the minimiser (its Moré–Thuente line search needs
    fewer model runs per iteration on this problem than torch's strong-Wolfe L-BFGS)."""
    from types import SimpleNamespace

    import numpy as np
    from scipy.optimize import minimize as sp_minimize

    from pelagos.inverse.calibrate import summarize
    from pelagos.inverse.optim import OptimizeResult
    from pelagos.inverse.problem import VariationalProblem

    prob = VariationalProblem(model, obs, xb, t0=t0, control_params=True, control_state=True, B=B)
    n_evals = [0]

    def value_and_grad(z: np.ndarray):
        zt = torch.tensor(z, dtype=torch.float64, requires_grad=True)
        J = prob.cost(zt)
        (g,) = torch.autograd.grad(J, zt)
        n_evals[0] += 1
        return float(J.detach()), g.numpy()

    z0 = prob.z0.numpy()
    hist, zs = [value_and_grad(z0)[0]], [prob.z0.clone()]

    def callback(intermediate_result):
        hist.append(float(intermediate_result.fun))
        zs.append(torch.tensor(intermediate_result.x))
        # one line per iteration: the run takes minutes and should not look hung
        print(
            f"  4D-Var iteration {len(hist) - 1:3d}: cost {hist[-1]:12.2f} ({n_evals[0]} model runs, "
            f"{time.perf_counter() - t:5.0f} s)",
            flush=True,
        )

    t = time.perf_counter()
    r = sp_minimize(
        value_and_grad, z0, jac=True, method="L-BFGS-B", callback=callback,
        options={"maxiter": max_iter, "maxfun": 3 * max_iter, "ftol": 1e-10, "gtol": 1e-6},
    )  # fmt: skip
    z = torch.tensor(r.x)
    message = scipy_stop_reason(r, max_iter)
    opt = OptimizeResult(
        z=z, cost=float(r.fun), history=hist, z_history=zs, n_evals=n_evals[0], n_iter=int(r.nit),
        converged=bool(r.success), message=message, wall_time=time.perf_counter() - t,
    )  # fmt: skip
    params = summarize(model, prob, opt, method="4dvar[scipy L-BFGS-B]", uncertainty="gauss-newton")
    x0 = prob.initial_state(z).detach()
    return SimpleNamespace(
        params=params, analysis=x0, history=hist, cost=float(r.fun), n_evals=n_evals[0], n_iter=int(r.nit),
        wall_time=opt.wall_time, message=message, converged=bool(r.success),
    )  # fmt: skip


def spin_up(model, params: dict[str, float], t_end: float, nut_factor: float = 1.0) -> torch.Tensor:
    """State at ``t_end`` from the BGC initial values on 1 January with these parameter values."""
    for n, v in params.items():
        model.set_parameter_value(n, v)
    x = model.initial_state()[0]
    x = x * torch.tensor([nut_factor, 1.0, 1.0, 1.0], dtype=x.dtype)[:, None]
    with torch.no_grad():
        for k in range(round(t_end / model.dt)):
            x = model.step(x, k * model.dt)
    return x


def trajectory(model, x0: torch.Tensor, t0: float, n_steps: int, every: int = 1) -> torch.Tensor:
    """(n_steps/every + 1, V, nz) states."""
    out = [x0]
    x = x0
    with torch.no_grad():
        for k in range(n_steps):
            x = model.step(x, t0 + k * model.dt)
            if (k + 1) % every == 0:
                out.append(x)
    return torch.stack(out)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="4-week window (a smoke run)")
    ap.add_argument("--out", default="results", help="output folder")
    ap.add_argument("--max-iter", type=int, default=None)
    ap.add_argument(
        "--method",
        default="scipy",
        choices=["scipy", "gauss-newton", "lbfgs"],
        help="4D-Var minimiser: SciPy's L-BFGS-B (default) or pelagos.inverse's L-BFGS / Gauss-Newton",
    )
    ap.add_argument("--seed", type=int, default=1998)
    ap.add_argument(
        "--sensitivity", action="store_true", help="only print which parameters these observations identify"
    )
    args = ap.parse_args(argv)
    torch.set_default_dtype(torch.float64)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cpu0, wall0 = time.process_time(), time.perf_counter()

    days = 28.0 if args.quick else 92.0
    model, t0, t1 = build(days)
    n_steps = round((t1 - t0) / model.dt)
    print(
        f"NNS 1998 NPZD twin: {model.nz} layers of {float(model.forcing.fields['h'][0, 0, 0]):g} m, "
        f"dt = {model.dt / 3600:g} h, window 1998-03-01 + {days:g} d ({n_steps} steps)"
    )
    names = list(TRUTH)
    x_true = spin_up(model, TRUTH, t0)
    nut_every = 30 * DAY if not args.quick else 14 * DAY
    # weekly surface phytoplankton; nutrient profiles monthly (quick: fortnightly)
    obs = synthetic_observations(
        model,
        x_true,
        None,
        [
            Sampling("npzd_phy", {"depth": "surface"}, regular_times(model, t0, t1, 7 * DAY)),
            Sampling(
                "npzd_nut", {"depth": [5.0, 25.0, 50.0, 75.0, 100.0]}, regular_times(model, t0, t1, nut_every)
            ),
        ],
        start=t0,
        noise="lognormal",
        sigma=0.2,
        generator=torch.Generator().manual_seed(args.seed),
    )
    print(f"observations: {obs.n_obs} values at {obs.n_times} times (20 % log-normal noise)")

    if args.sensitivity:
        return sensitivity(model, obs, x_true, t0)
    # first guess: wrong parameters, initial state spun up with them and 20 % less nutrient
    xb = spin_up(model, FIRST_GUESS, t0, nut_factor=0.8)
    model.select_free(names)
    for n in names:
        model.set_prior(n, FIRST_GUESS[n], raw_std_for(model, n, FIRST_GUESS[n], PRIOR_REL_STD))
    z_centres = torch.flip(torch.cumsum(torch.flip(model.forcing.fields["h"][0, 0], [0]), 0), [0])
    z_centres = z_centres - 0.5 * model.forcing.fields["h"][0, 0]
    # background error std per variable: 30 % of the nutrient, 50 % of phyto/zooplankton (+ small floors), 5 %
    # of the detritus (end-of-winter detritus is set by slow remineralisation and varies little between
    # years; a loose detritus B lets 4D-Var trade detritus against the self-shading constant kc)
    rel = torch.tensor([0.3, 0.5, 0.5, 0.05])[:, None]
    std = rel * xb.abs() + torch.tensor([0.1, 1e-3, 1e-4, 0.01])[:, None]
    B = ColumnBackground(std, z_centres, length_scale=20.0)

    if args.method == "scipy":
        res = fourdvar_scipy(model, obs, xb, B, t0=t0, max_iter=args.max_iter or 60)
    else:
        res = fourdvar(
            model,
            obs,
            xb,
            B,
            t0=t0,
            params=True,
            method=args.method,
            max_iter=args.max_iter or (15 if args.method == "gauss-newton" else 40),
            gtol=1e-6,
            ftol=1e-10,
            uncertainty="gauss-newton",
            progress=False,
        )
    p = res.params
    # table
    rows = []
    print(
        f"\n4D-Var: cost {res.history[0]:.1f} -> {res.cost:.1f} in {res.n_iter} iterations, {res.n_evals} "
        f"forward+adjoint runs, {res.wall_time:.0f} s ({res.message})"
    )
    print(
        f"\n{'parameter':14s} {'truth':>9s} {'prior':>9s} {'estimate':>9s} {'± std':>8s}"
        f"  {'95% interval':>20s}  ±2σ"
    )
    for n in names:
        est, sd = p.estimates[n], p.std.get(n, float("nan"))
        lo, hi = p.interval95.get(n, (float("nan"), float("nan")))
        within = abs(est - TRUTH[n]) <= 2 * sd
        rows.append(
            {
                "name": n,
                "truth": TRUTH[n],
                "prior": FIRST_GUESS[n],
                "estimate": est,
                "std": sd,
                "interval95": [lo, hi],
                "within_2std": bool(within),
            }
        )
        print(
            f"{n:14s} {TRUTH[n]:9.4g} {FIRST_GUESS[n]:9.4g} {est:9.4g} {sd:8.2g}  [{lo:8.4g}, {hi:8.4g}]  "
            f"{'yes' if within else 'NO'}"
        )
    # initial-state error
    rmse = {}
    for i, v in enumerate(model.variables):
        eb = float((xb[i] - x_true[i]).pow(2).mean().sqrt())
        ea = float((res.analysis[i] - x_true[i]).pow(2).mean().sqrt())
        rmse[v] = {"background": eb, "analysis": ea}
    print(
        "\ninitial-state RMSE (background -> analysis): "
        + ", ".join(f"{v} {d['background']:.3g} -> {d['analysis']:.3g}" for v, d in rmse.items())
    )

    # trajectories for plots
    every = 1
    with model.using({n: model.parameter_spec(n).transform.inverse(torch.tensor(TRUTH[n])) for n in names}):
        tr_true = trajectory(model, x_true, t0, n_steps, every)
    with model.using({n: torch.tensor(model.parameter_spec(n).prior.mean) for n in names}):
        tr_fg = trajectory(model, xb, t0, n_steps, every)
    with model.using(p.z[: len(names)]):
        tr_an = trajectory(model, res.analysis, t0, n_steps, every)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    print(f"\ntotal: {wall:.0f} s wall, {cpu:.0f} s CPU (torch threads: {torch.get_num_threads()})")
    files = plot_all(out, model, obs, p, names, tr_true, tr_fg, tr_an, t0, res)
    summary = {
        "window": {"start": "1998-03-01", "days": days, "dt_s": model.dt, "nz": model.nz, "steps": n_steps},
        "observations": {"n": obs.n_obs, "times": obs.n_times, "noise": "lognormal 20 %"},
        "parameters": rows,
        "initial_state_rmse": rmse,
        "cost_history": res.history,
        "n_iter": res.n_iter,
        "n_evals": res.n_evals,
        "wall_time_s": wall,
        "cpu_time_s": cpu,
        "converged": res.converged,
        "message": res.message,
        "plots": [str(f) for f in files],
    }
    (out / "flagship_nns_twin.json").write_text(json.dumps(summary, indent=2))
    print("wrote " + ", ".join(str(f) for f in [*files, out / "flagship_nns_twin.json"]))
    return summary


CANDIDATES = [
    "npzd.rmax", "npzd.gmax", "npzd.iv", "npzd.alpha", "npzd.i_min", "npzd.w_d", "npzd.kc", "npzd.rpn",
    "npzd.rzn", "npzd.rdn", "npzd.rpdu", "npzd.rpdl", "npzd.rzd", "npzd.w_p", "nuh_scale",
]  # fmt: skip


def sensitivity(model, obs, x_true, t0) -> dict:
    """Gauss–Newton posterior std at the truth, each parameter alone and all 15 jointly, with a prior of
    50 % (std in % of the value; 50 = the data say nothing)."""
    from pelagos.inverse.problem import VariationalProblem

    model.select_free(CANDIDATES)
    names = model.free_parameter_names()
    for n in names:
        v = float(model.get_parameter_value(n))
        model.set_prior(n, v, raw_std_for(model, n, v, PRIOR_REL_STD))
    prob = VariationalProblem(model, obs, x_true, t0=t0)
    J = prob.jacobian(prob.z0)
    H = J.T @ J  # includes the prior rows of the residual vector
    C = torch.linalg.inv(H)
    out = {}
    print(f"{'parameter':12s} {'alone %':>8s} {'joint %':>8s}   (posterior std / value, prior 50 %)")
    for i, n in enumerate(names):
        v = float(model.get_parameter_value(n))
        tr = model.parameter_spec(n).transform
        u = tr.inverse(torch.tensor(v)).requires_grad_(True)
        (dx,) = torch.autograd.grad(tr.forward(u), u)
        alone = float(H[i, i].rsqrt() * dx.abs()) / abs(v) * 100
        joint = float(C[i, i].sqrt() * dx.abs()) / abs(v) * 100
        out[n] = {"alone_pct": alone, "joint_pct": joint}
        print(f"{n:12s} {alone:8.1f} {joint:8.1f}")
    model.select_free([])
    return out


def plot_all(out, model, obs, p, names, tr_true, tr_fg, tr_an, t0, res) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    days = (torch.arange(tr_true.shape[0]) * model.dt / DAY).numpy()
    # cost history and parameter trajectories
    fig, axes = plt.subplots(1, 1 + len(names), figsize=(3.0 * (1 + len(names)), 3.0))
    axes[0].semilogy(res.history, marker=".")
    axes[0].set_xlabel("iteration")
    axes[0].set_ylabel("cost J")
    axes[0].set_title("4D-Var cost")
    p.plot_parameters(truth=TRUTH, axes=axes[1:])
    fig.tight_layout()
    files.append(out / "flagship_cost_parameters.png")
    fig.savefig(files[-1], dpi=110)
    plt.close(fig)
    # observations vs model, before/after
    od = ((obs.times - t0) / DAY).numpy()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    ax = axes[0]
    j = 0  # surface phytoplankton column
    for tr, lab, st in ((tr_true, "truth", "k-"), (tr_fg, "first guess", "C1--"), (tr_an, "analysis", "C0-")):
        ax.plot(days, tr[:, 1, -1].numpy(), st, label=lab)
    ok = torch.isfinite(obs.values[:, j])
    ax.plot(od[ok.numpy()], obs.values[ok, j].numpy(), "ko", mfc="none", label="observed")
    ax.set_yscale("log")
    ax.set_xlabel("days after 1998-03-01")
    ax.set_ylabel("surface phytoplankton (mmol N m-3)")
    ax.legend(fontsize=8)
    ax = axes[1]
    zc = model.forcing.fields["h"][0, 0].flip(0).cumsum(0) - 0.5 * model.forcing.fields["h"][0, 0].flip(0)
    k_last = tr_true.shape[0] - 1
    ax.plot(tr_true[k_last, 0].flip(0).numpy(), zc.numpy(), "k-", label="truth (end)")
    ax.plot(tr_fg[k_last, 0].flip(0).numpy(), zc.numpy(), "C1--", label="first guess (end)")
    ax.plot(tr_an[k_last, 0].flip(0).numpy(), zc.numpy(), "C0-", label="analysis (end)")
    last = max(i for i in range(obs.n_times) if bool(torch.isfinite(obs.values[i, 1:]).any()))
    depths = [w["depth"] for _, w in obs.columns[1:]]
    ax.plot(obs.values[last, 1:].numpy(), depths, "ko", mfc="none", label=f"observed day {od[last]:.0f}")
    ax.invert_yaxis()
    ax.set_xlabel("nutrient (mmol N m-3)")
    ax.set_ylabel("depth (m)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    files.append(out / "flagship_obs_vs_model.png")
    fig.savefig(files[-1], dpi=110)
    plt.close(fig)
    # depth-time sections of phytoplankton
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), sharey=True)
    vmax = float(tr_true[:, 1].max())
    for ax, tr, title in zip(axes, (tr_true, tr_fg, tr_an), ("truth", "first guess", "analysis")):
        im = ax.pcolormesh(days, zc.numpy(), tr[:, 1].flip(-1).T.numpy(), vmin=0, vmax=vmax, shading="auto")
        ax.set_title(f"phytoplankton: {title}")
        ax.set_xlabel("days after 1998-03-01")
    axes[0].invert_yaxis()
    axes[0].set_ylabel("depth (m)")
    fig.colorbar(im, ax=axes, label="mmol N m-3")
    files.append(out / "flagship_sections.png")
    fig.savefig(files[-1], dpi=110)
    plt.close(fig)
    return files


if __name__ == "__main__":
    main()

"""ECOSMO with 20 free parameters on a year of the NNS column: identifiability, recovery, cost of three methods.

The twin is ``examples/ecosmo_identifiability.yaml`` (22 × 5 m NNS physics, hourly, 1998; weekly surface
chlorophyll and nutrients, monthly profiles; 20 free ECOSMO parameters), built through the configuration
loader and the twin generator of ``pelagos calibrate`` (one door). Everything else is batching: a year of
ECOSMO on 22 layers costs about the same for 1 column as for 64 (the step is dispatch-bound), so

- the Jacobian of the whitened residuals (2p central differences + the base point) is ONE batched run of
  2p + 1 columns: sensitivity ranking and the Gauss–Newton Laplace posterior come from it;
- the finite-difference calibration (SciPy L-BFGS-B, forward differences) batches its p + 1 runs as columns;
- ES-MDA runs its 64 members as columns (4 assimilations);
- the gradient calibration is pelagos' L-BFGS on ``VariationalProblem.cost`` with the adjoint (autograd):
  one forward + one backward run per evaluation.

Run (the parts can run as two processes; each writes its JSON after every model run, so an interrupted run
keeps what it computed)::

    python examples/ecosmo_identifiability.py --part batched     # truth, Jacobian/Laplace, ES-MDA, FD
    python examples/ecosmo_identifiability.py --part gradient    # adjoint L-BFGS + Laplace at its estimate
    python examples/ecosmo_identifiability.py --part report      # tables + figures from the two JSONs

Outputs: ``benchmarks/results/ecosmo_identifiability_{batched,gradient}.json``, the merged
``benchmarks/results/ecosmo_identifiability.json`` and ``docs/figures/ecosmo_identifiability_*.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch

from pelagos.core.errors import SolverError

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples" / "ecosmo_identifiability.yaml"
RESULTS = ROOT / "benchmarks" / "results"
FIGURES = ROOT / "docs" / "figures"
IDENTIFIABLE_STD = 0.05  # Laplace posterior std ≤ 5 % of the value: recoverable within 10 % at ~2σ


class Twin:
    """The study's model, observations, priors and truth, built from the YAML through pelagos' own loader."""

    def __init__(self, config: str | Path = CONFIG, overrides: list[str] | None = None) -> None:
        from pelagos.io.build import setup
        from pelagos.io.config import load_config
        from pelagos.io.inverse_run import observations, set_priors

        t = time.perf_counter()
        self.cfg = load_config(str(config), overrides=overrides, require=("observations", "method"))
        s = setup(self.cfg)
        self.setup, self.model, self.x0, self.t0 = s, s.model, s.state, s.t0
        self.obs, truth = observations(self.cfg, s, self.model, self.x0)  # the truth run (one forward)
        self.model.select_free(self.cfg.method.free)
        set_priors(self.model, self.cfg.method)
        self.names = self.model.free_parameter_names()
        self.p = len(self.names)
        spec = [self.model.parameter_spec(n) for n in self.names]
        self.truth = torch.tensor(
            [float(spec[i].transform.inverse(torch.tensor(truth[n]))) for i, n in enumerate(self.names)]
        )
        self.prior_mean = torch.tensor([sp.prior.mean for sp in spec], dtype=torch.float64)
        self.prior_std = torch.tensor([sp.prior.std for sp in spec], dtype=torch.float64)
        self.z0 = self.model.free_vector().detach().to(torch.float64).clone()
        self.setup_wall = time.perf_counter() - t

    def physical(self, z: torch.Tensor) -> torch.Tensor:
        return torch.stack(
            [self.model.parameter_spec(n).transform.forward(z[..., i]) for i, n in enumerate(self.names)], -1
        )

    def rel_error(self, z: torch.Tensor) -> torch.Tensor:
        """Relative error of each parameter (physical values) against the truth."""
        t = self.physical(self.truth)
        return (self.physical(z) - t) / t.abs()

    def states(self, n: int):
        from pelagos.io.build import initial_state

        return initial_state(self.cfg, self.model, self.t0, n)

    def residuals(self, Z: torch.Tensor) -> torch.Tensor:
        """Whitened residuals ``[(H x − y)/σ ; (z − μ)/s]`` of a batch of controls ``Z (B, p)``: ONE run of B
        columns. Returns ``(B, M + p)``."""
        from pelagos.inverse.forward import predict

        B = Z.shape[0]
        with self.model.using(Z):
            pred = predict(self.model, self.states(B), self.obs, t0=self.t0)  # (n_t, B, m)
        r = self.obs.residual(pred).movedim(1, 0).reshape(B, -1)
        return torch.cat([r, (Z - self.prior_mean) / self.prior_std], dim=-1)

    @property
    def n_data(self) -> int:
        return self.obs.values.numel()


def batched_jacobian(
    residuals: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, rel_step: float = 1e-5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Central-difference Jacobian ∂r/∂z ``(M, p)`` and r(z) from ONE batched call of ``residuals`` on the
    2p + 1 controls ``[z, z + h_i e_i, z − h_i e_i]`` (h_i = rel_step·max(|z_i|, 1e-12)); truncation error
    O(h²)."""
    p = z.numel()
    h = rel_step * z.abs().clamp(min=1e-12)
    E = torch.diag(h)
    with torch.no_grad():
        R = residuals(torch.cat([z[None], z + E, z - E]))
    return ((R[1 : p + 1] - R[p + 1 :]) / (2 * h[:, None])).T.contiguous(), R[0]


def laplace_from_jacobian(Jm: torch.Tensor, n_obs_rows: int) -> dict:
    """Gauss–Newton Laplace posterior from the Jacobian of the whitened residuals (data rows, then prior
    rows): covariance (JᵀJ)⁻¹, and the data-only information JdᵀJd (its eigenvalues)."""
    H = Jm.T @ Jm
    C = torch.linalg.inv(H)
    C = 0.5 * (C + C.T)
    Jd = Jm[:n_obs_rows]
    return {"cov": C, "std": C.diagonal().sqrt(), "data_info": Jd.T @ Jd}


# -- bookkeeping ---------------------------------------------------------------------------------------------
class Recorder:
    """Results dict written to JSON after every update (nothing computed is lost if a later run fails)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict = json.loads(path.read_text()) if path.exists() else {}
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()

    def clock(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall0, time.process_time() - self.cpu0

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=_jsonable))
        tmp.replace(self.path)


def _jsonable(x):
    if torch.is_tensor(x):
        return x.tolist()
    return float(x)


def _header(tw: Twin) -> dict:
    return {
        "names": tw.names,
        "truth": tw.physical(tw.truth).tolist(),
        "first_guess": tw.physical(tw.z0).tolist(),
        "prior_std_rel": (tw.prior_std / tw.prior_mean.abs()).tolist(),
        "n_obs": int(tw.obs.n_obs),
        "n_times": int(tw.obs.n_times),
        "steps": round((float(tw.obs.times.max()) - tw.t0) / float(tw.model.dt)),
        "layers": int(tw.model.nz),
        "setup_wall_s": tw.setup_wall,
        "torch": torch.__version__,
    }


def identifiability(tw: Twin, z: torch.Tensor, rec: Recorder, key: str) -> None:
    """Jacobian at z (one run of 2p + 1 columns), sensitivity ranking and Laplace posterior."""
    w, c = rec.clock()
    Jm, r = batched_jacobian(tw.residuals, z)
    w2, c2 = rec.clock()
    M = Jm.shape[0] - tw.p
    lap = laplace_from_jacobian(Jm, M)
    theta = tw.physical(z).abs()
    sens = (Jm[:M] * z.abs()).norm(dim=0)  # ‖∂r/∂ln θ_i‖: misfit change per relative change of θ_i
    ev = torch.linalg.eigvalsh(lap["data_info"] * torch.outer(z.abs(), z.abs()))
    rec.data[key] = {
        "columns": 2 * tw.p + 1,
        "wall_s": w2 - w,
        "cpu_s": c2 - c,
        "cost": float(0.5 * r.pow(2).sum()),
        "sensitivity": sens.tolist(),
        "rank": [tw.names[i] for i in torch.argsort(sens, descending=True).tolist()],
        "posterior_std_rel": (lap["std"] / theta).tolist(),
        "posterior_corr": (lap["cov"] / torch.outer(lap["std"], lap["std"])).tolist(),
        "data_info_eigenvalues_rel": ev.tolist(),
        "identifiable": [tw.names[i] for i in range(tw.p) if float(lap["std"][i] / theta[i]) <= IDENTIFIABLE_STD],
    }
    rec.save()
    print(f"[{key}] Jacobian of {2 * tw.p + 1} columns: {w2 - w:.0f} s wall, {c2 - c:.0f} s CPU", flush=True)


def part_batched(tw: Twin, rec: Recorder, fd_evals: int, members: int) -> None:
    from scipy.optimize import minimize as sp_minimize

    from pelagos.inverse.ensemble import esmda, sample_prior

    rec.data.setdefault("header", _header(tw))
    rec.save()
    if "laplace_truth" not in rec.data:
        identifiability(tw, tw.truth, rec, "laplace_truth")
    if "esmda" not in rec.data:
        g = torch.Generator().manual_seed(5)
        U = sample_prior(tw.model, members, generator=g).to(torch.float64)
        w, c = rec.clock()
        E = esmda(tw.model, tw.obs, tw.states(members), U, alphas=4, t0=tw.t0, generator=g)
        w2, c2 = rec.clock()
        zm = E.params.mean(0)
        rec.data["esmda"] = {
            "members": members,
            "batched_runs": E.n_evals,
            "member_runs": E.n_evals * members,
            "wall_s": w2 - w,
            "cpu_s": c2 - c,
            "misfit_history": E.history,
            "estimate": tw.physical(zm).tolist(),
            "rel_error": tw.rel_error(zm).tolist(),
            "ensemble_std_rel": (E.params.std(0) / tw.physical(tw.truth).abs()).tolist(),
        }
        rec.save()
        print(f"[esmda] {E.n_evals} runs of {members} columns: {w2 - w:.0f} s wall", flush=True)
    if "finite_difference" not in rec.data or not rec.data["finite_difference"].get("done"):
        log: list = []
        rec.data["finite_difference"] = {"columns_per_run": tw.p + 1, "log": log, "done": False}
        h = 1e-5  # in prior-whitened units: 1e-5 of a prior std
        w0, c0 = rec.clock()

        def fg(vn):  # control in prior-whitened units, z = μ + s v (as the gradient method)
            if len(log) >= fd_evals or time.time() > STOP_AT[0]:
                raise _Budget
            v = torch.as_tensor(vn, dtype=torch.float64)
            z = tw.prior_mean + tw.prior_std * v
            try:
                with torch.no_grad():
                    R = tw.residuals(torch.cat([z[None], z + h * torch.diag(tw.prior_std)]))
                J = 0.5 * R.pow(2).sum(-1)
            except SolverError:  # the model blew up at this trial point: a large cost sends the search back
                J = torch.full((tw.p + 1,), 1e12)
            w, c = rec.clock()
            log.append({"wall_s": w - w0, "cpu_s": c - c0, "cost": float(J[0]),
                        "rel_error": tw.rel_error(z).tolist(), "z": z.tolist()})  # fmt: skip
            rec.save()
            print(f"[fd] run {len(log)}: J = {float(J[0]):.2f}, {w - w0:.0f} s", flush=True)
            return float(J[0]), ((J[1:] - J[0]) / h).numpy()

        lo, hi = (0.25 * tw.z0 - tw.prior_mean) / tw.prior_std, (4 * tw.z0 - tw.prior_mean) / tw.prior_std
        bounds = list(zip(lo.tolist(), hi.tolist()))  # positive rates, within a factor 4 of the first guess
        msg = "budget of evaluations spent"
        try:
            res = sp_minimize(fg, torch.zeros(tw.p).numpy(), jac=True, method="L-BFGS-B", bounds=bounds,
                              options={"maxfun": fd_evals, "maxiter": fd_evals, "gtol": 1e-8, "ftol": 1e-12})  # fmt: skip
            msg = str(res.message)
        except _Budget:
            pass
        zf = torch.tensor(min(log, key=lambda e: e["cost"])["z"])  # the best point evaluated
        rec.data["finite_difference"].update(
            done=True, message=msg, estimate=tw.physical(zf).tolist(),
            rel_error=tw.rel_error(zf).tolist(),
        )  # fmt: skip
        rec.save()


class _Budget(Exception):
    pass


STOP_AT: list[float] = [math.inf]  # epoch seconds after which no new model run of an optimiser starts


def _stop_at(hhmm: str | None) -> float:
    """Epoch seconds of the next ``HH:MM`` UTC (today, or tomorrow if already past)."""
    if not hhmm:
        return math.inf
    import datetime as dt

    now = dt.datetime.now(dt.UTC)
    h, m = (int(x) for x in hhmm.split(":"))
    t = now.replace(hour=h, minute=m, second=0, microsecond=0)
    if t <= now - dt.timedelta(hours=12):
        t += dt.timedelta(days=1)
    return t.timestamp()


def part_gradient(tw: Twin, rec: Recorder, evals: int) -> None:
    from pelagos.inverse.optim import minimize
    from pelagos.inverse.problem import VariationalProblem

    rec.data.setdefault("header", _header(tw))
    rec.data["gradient"] = {"log": [], "done": False}
    log = rec.data["gradient"]["log"]
    prob = VariationalProblem(tw.model, tw.obs, tw.x0, t0=tw.t0)
    w0, c0 = rec.clock()
    best = {"J": math.inf, "z": tw.z0}

    def cost(v: torch.Tensor) -> torch.Tensor:  # control in prior-whitened units: z = μ + s v
        z = tw.prior_mean + tw.prior_std * v
        if log:  # the previous evaluation (forward + adjoint) is complete when the next one starts
            _stamp(log, rec, w0, c0)
        if len(log) >= evals or time.time() > STOP_AT[0]:
            raise _Budget
        try:
            J = prob.cost(z)
        except SolverError:  # the model blew up at this trial point: infinite cost, the line search backs off
            J = (z * 0).sum() + math.inf
        log.append({"cost": float(J.detach()), "rel_error": tw.rel_error(z.detach()).tolist()})
        if float(J.detach()) < best["J"]:
            best.update(J=float(J.detach()), z=z.detach().clone())
        return J

    msg = "budget of evaluations spent"
    try:
        r = minimize(cost, torch.zeros(tw.p), method="lbfgs", max_iter=evals, gtol=1e-8, ftol=1e-12)
        msg = r.message
        _stamp(log, rec, w0, c0)
    except _Budget:
        pass
    zb = best["z"]
    w, c = rec.clock()
    rec.data["gradient"].update(done=True, message=msg, wall_s=w - w0, cpu_s=c - c0,
                                estimate=tw.physical(zb).tolist(), rel_error=tw.rel_error(zb).tolist(),
                                z=zb.tolist())  # fmt: skip
    rec.save()
    identifiability(tw, zb, rec, "laplace_estimate")
    w, c = rec.clock()
    rec.data["fourdvar_total"] = {
        "wall_s": tw.setup_wall + w,
        "cpu_s": c,
        "note": "truth run + observations, adjoint L-BFGS, Laplace at the estimate (one process)",
    }
    rec.save()


def _stamp(log: list, rec: Recorder, w0: float, c0: float) -> None:
    w, c = rec.clock()
    log[-1].update(wall_s=w - w0, cpu_s=c - c0)
    rec.save()
    print(f"[gradient] evaluation {len(log)}: J = {log[-1]['cost']:.2f}, {w - w0:.0f} s", flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["batched", "gradient", "report", "all"], default="all")
    ap.add_argument("--config", default=str(CONFIG))
    ap.add_argument("--set", action="append", default=[], help="configuration override key=value")
    ap.add_argument("--fd-evals", type=int, default=12)
    ap.add_argument("--grad-evals", type=int, default=12)
    ap.add_argument("--members", type=int, default=64)
    ap.add_argument("--tag", default="ecosmo_identifiability")
    ap.add_argument("--stop-at", default=None, help="HH:MM UTC: optimisers start no model run after it")
    args = ap.parse_args(argv)
    STOP_AT[0] = _stop_at(args.stop_at)
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    if args.part in ("batched", "all"):
        part_batched(Twin(args.config, args.set), Recorder(RESULTS / f"{args.tag}_batched.json"),
                     args.fd_evals, args.members)  # fmt: skip
    if args.part in ("gradient", "all"):
        part_gradient(Twin(args.config, args.set), Recorder(RESULTS / f"{args.tag}_gradient.json"),
                      args.grad_evals)  # fmt: skip
    if args.part in ("report", "all"):
        report(args.tag)  # noqa: F821 (defined below)


if __name__ == "__main__":
    main()

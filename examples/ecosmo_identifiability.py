"""ECOSMO, 20 free parameters, a year of the NNS column: identifiability, recovery, cost of three methods.

The twin is ``examples/ecosmo_identifiability.yaml`` (22 × 5 m NNS physics, hourly, 1998; weekly surface
chlorophyll and nutrients, monthly profiles; 20 free ECOSMO parameters), built through the configuration
loader and the twin generator of ``pelagos calibrate`` (one door). Everything else is batching: a year of
ECOSMO on 22 layers costs about the same for 1 column as for 64 (the step is dispatch-bound), so

- the Jacobian of the whitened residuals (2p central differences + the base point) is ONE batched run of
  2p + 1 columns: sensitivity ranking and the Gauss–Newton Laplace posterior come from it;
- the finite-difference calibration (Levenberg–Marquardt on forward-difference Jacobians, as PEST does)
  batches the p + 1 runs of each Jacobian as columns: one batched run per iteration;
- ES-MDA runs its 64 members as columns (3 assimilations: 4 batched runs);
- the gradient calibration is pelagos' L-BFGS on ``VariationalProblem.cost`` with the adjoint (autograd):
  one forward + one backward run per evaluation.

Run (the parts can run as two processes; each writes its JSON after every model run, so an interrupted run
keeps what it computed)::

    python examples/ecosmo_identifiability.py --part laplace     # Jacobian at the truth: sensitivity, Laplace
    python examples/ecosmo_identifiability.py --part esmda       # ES-MDA, 64 members as columns
    python examples/ecosmo_identifiability.py --part fd          # Levenberg-Marquardt, batched FD Jacobians
    python examples/ecosmo_identifiability.py --part gradient    # adjoint L-BFGS + Laplace at its estimate
    python examples/ecosmo_identifiability.py --part report      # tables + figures from the two JSONs
    python examples/ecosmo_identifiability.py --part lm --lm-start continuation --lm-jacobian bundle \
        --stages 1998-04-01,...,1999-01-01 [--adaptive 10,7]     # LM on growing windows from the first guess

Outputs: ``benchmarks/results/ecosmo_identifiability_{laplace,esmda,fd,gradient}.json``, the merged
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

    def control(self, theta: torch.Tensor) -> torch.Tensor:
        """Control z (the unconstrained values: log θ for ECOSMO's positive rates) of physical values θ."""
        return torch.stack(
            [self.model.parameter_spec(n).transform.inverse(theta[..., i]) for i, n in enumerate(self.names)],
            -1,
        )

    def dtheta_dz(self, z: torch.Tensor) -> torch.Tensor:
        """dθ/dz of each parameter at z (θ for log-transformed parameters, 1 for identity ones)."""
        zz = z.detach().clone().requires_grad_(True)
        (d,) = torch.autograd.grad(self.physical(zz).sum(), zz)
        return d

    def fd_step(self, z: torch.Tensor, rel_step: float) -> torch.Tensor:
        """Finite-difference steps in z giving a relative change ``rel_step`` of each θ."""
        return rel_step * self.physical(z).abs().clamp(min=1e-300) / self.dtheta_dz(z).abs()

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
    residuals: Callable[[torch.Tensor], torch.Tensor],
    z: torch.Tensor,
    rel_step: float = 1e-5,
    h: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Central-difference Jacobian ∂r/∂z ``(M, p)`` and r(z) from ONE batched call of ``residuals`` on the
    2p + 1 controls ``[z, z + h_i e_i, z − h_i e_i]`` (h_i = rel_step·max(|z_i|, 1e-12) unless ``h`` is
    given); truncation error O(h²)."""
    p = z.numel()
    if h is None:
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
    Jm, r = batched_jacobian(tw.residuals, z, h=tw.fd_step(z, 1e-5))
    w2, c2 = rec.clock()
    M = Jm.shape[0] - tw.p
    lap = laplace_from_jacobian(Jm, M)  # covariance of z
    theta = tw.physical(z).abs()
    d = tw.dtheta_dz(z).abs()
    lnscale = theta / d  # dz/d ln θ
    sens = (Jm[:M] * lnscale).norm(dim=0)  # ‖∂r/∂ln θ_i‖: misfit change per relative change of θ_i
    ev = torch.linalg.eigvalsh(lap["data_info"] * torch.outer(lnscale, lnscale))
    rec.data[key] = {
        "columns": 2 * tw.p + 1,
        "wall_s": w2 - w,
        "cpu_s": c2 - c,
        "cost": float(0.5 * r.pow(2).sum()),
        "sensitivity": sens.tolist(),
        "rank": [tw.names[i] for i in torch.argsort(sens, descending=True).tolist()],
        "posterior_std_rel": (lap["std"] * d / theta).tolist(),
        "posterior_corr": (lap["cov"] / torch.outer(lap["std"], lap["std"])).tolist(),
        "data_info_eigenvalues_rel": ev.tolist(),
        "identifiable": [
            tw.names[i] for i in range(tw.p) if float(lap["std"][i] * d[i] / theta[i]) <= IDENTIFIABLE_STD
        ],
    }
    rec.save()
    print(f"[{key}] Jacobian of {2 * tw.p + 1} columns: {w2 - w:.0f} s wall, {c2 - c:.0f} s CPU", flush=True)


def part_laplace(tw: Twin, rec: Recorder) -> None:
    """The Jacobian at the truth: sensitivity ranking and Laplace posterior (identifiability)."""
    rec.data.setdefault("header", _header(tw))
    rec.save()
    identifiability(tw, tw.truth, rec, "laplace_truth")


def part_esmda(tw: Twin, rec: Recorder, members: int, assimilations: int) -> None:
    """ES-MDA with ``members`` columns and ``assimilations`` equal inflation factors. Keeps the final members
    (controls z) and the cost J (misfit + prior) of each: the starts of the multi-start Levenberg–Marquardt
    (``--part lm --lm-start members``). A saved result without members is run again (same seed: same
    ensemble) and records how far its mean is from the saved one."""
    from pelagos.inverse.ensemble import esmda

    rec.data.setdefault("header", _header(tw))
    rec.save()
    old = rec.data.get("esmda")
    if old is None or "members_z" not in old:
        g = torch.Generator().manual_seed(5)
        # prior draws truncated at ±1.5σ (45 % of the value): with untruncated draws one member of 64 made
        # ECOSMO blow up (NaN) within the year, and one failed column stops the whole batched run
        v = torch.randn(members, tw.p, generator=g, dtype=torch.float64).clamp(-1.5, 1.5)
        U = tw.prior_mean + tw.prior_std * v
        w, c = rec.clock()
        E = esmda(tw.model, tw.obs, tw.states(members), U, alphas=assimilations, t0=tw.t0, generator=g)
        w2, c2 = rec.clock()
        zm = E.params.mean(0)
        cost = E.member_misfit + 0.5 * ((E.params - tw.prior_mean) / tw.prior_std).pow(2).sum(-1)
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
            "members_z": E.params.tolist(),
            "member_misfit": E.member_misfit.tolist(),
            "member_cost": cost.tolist(),
        }
        if old is not None:  # the earlier run of the same seed, saved without its members
            prev = torch.tensor(old["estimate"], dtype=torch.float64)
            diff = float(((tw.physical(zm) - prev) / prev).abs().max())
            rec.data["esmda"]["rerun_mean_max_rel_diff"] = diff
            rec.data["esmda"]["previous_run"] = {k: old[k] for k in ("wall_s", "cpu_s", "misfit_history")}
        rec.save()
        print(f"[esmda] {E.n_evals} runs of {members} columns: {w2 - w:.0f} s wall, {c2 - c:.0f} s CPU")


def part_fd(tw: Twin, rec: Recorder, runs: int) -> None:
    """Levenberg–Marquardt (as PEST does) on forward-difference Jacobians, in the prior-whitened control
    ``v`` (z = μ + s v). Every iteration is ONE batched run of p + 1 columns ``[v, v + h e_i]``: the cost at
    the trial point and the Jacobian there come together; a rejected trial raises λ and retries from the
    last accepted point (its Jacobian is kept)."""
    rec.data.setdefault("header", _header(tw))
    log: list = []
    rec.data["finite_difference"] = {
        "columns_per_run": tw.p + 1,
        "log": log,
        "done": False,
        "method": "Levenberg-Marquardt, forward-difference Jacobian",
    }
    h = 1e-5  # in prior-whitened units: 1e-5 of a prior std
    th0 = tw.physical(tw.z0)  # positive rates, within a factor 4 of the first guess:
    lo = (tw.control(0.25 * th0) - tw.prior_mean) / tw.prior_std
    hi = (tw.control(4.0 * th0) - tw.prior_mean) / tw.prior_std
    w0, c0 = rec.clock()

    def run(v: torch.Tensor) -> tuple[float, torch.Tensor, torch.Tensor]:
        z = tw.prior_mean + tw.prior_std * v
        try:
            with torch.no_grad():
                R = tw.residuals(torch.cat([z[None], z + h * torch.diag(tw.prior_std)]))
            J = 0.5 * float(R[0].pow(2).sum())
        except SolverError:  # the model blew up at this trial point
            R, J = None, math.inf
        w, c = rec.clock()
        log.append({"wall_s": w - w0, "cpu_s": c - c0, "cost": J, "rel_error": tw.rel_error(z).tolist(),
                    "z": z.tolist()})  # fmt: skip
        rec.save()
        print(f"[fd] run {len(log)}: J = {J:.2f}, {w - w0:.0f} s", flush=True)
        if R is None:
            return J, None, None
        return J, R[0], ((R[1:] - R[0]) / h).T

    v = torch.zeros(tw.p)
    J, r, Jm = run(v)
    lam, msg = 1.0, "budget of runs spent"
    while len(log) < runs and time.time() <= STOP_AT[0]:
        A = Jm.T @ Jm
        g = Jm.T @ r
        if float(g.norm()) < 1e-6:
            msg = "gradient norm below 1e-6"
            break
        dv = torch.linalg.solve(A + lam * torch.eye(tw.p), -g)
        vt = torch.maximum(torch.minimum(v + dv, hi), lo)
        Jt, rt, Jmt = run(vt)
        if Jt < J:
            small = J - Jt < 1e-6 * Jt
            v, J, r, Jm, lam = vt, Jt, rt, Jmt, max(lam / 3, 1e-6)
            if small:
                msg = "relative cost change below 1e-6"
                break
        else:
            lam *= 4
    z = tw.prior_mean + tw.prior_std * v
    M = Jm.shape[0] - tw.p
    lap = laplace_from_jacobian(Jm / tw.prior_std, M)  # Jacobian in z units
    theta = tw.physical(z).abs() / tw.dtheta_dz(z).abs()  # std of z -> relative std of θ
    rec.data["finite_difference"].update(
        done=True, message=msg, estimate=tw.physical(z).tolist(), rel_error=tw.rel_error(z).tolist(),
        laplace_std_rel=(lap["std"] / theta).tolist(), final_lambda=lam, cost=J,
    )  # fmt: skip
    rec.save()


class _BudgetError(Exception):
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


def part_gradient(tw: Twin, rec: Recorder, evals: int, start: dict | None = None) -> None:
    """Adjoint L-BFGS in the prior-whitened control from the first guess, or from ``start`` (the ES-MDA
    part's results: its ensemble mean), then the Laplace posterior at the best point."""
    from pelagos.inverse.optim import minimize
    from pelagos.inverse.problem import VariationalProblem

    rec.data.setdefault("header", _header(tw))
    rec.data["gradient"] = {"log": [], "done": False, "start": "first guess"}
    log = rec.data["gradient"]["log"]
    v0 = torch.zeros(tw.p)
    if start is not None:
        z_start = tw.control(torch.tensor(start["estimate"], dtype=torch.float64))
        v0 = (z_start - tw.prior_mean) / tw.prior_std
        rec.data["gradient"]["start"] = "ES-MDA mean"
        rec.data["gradient"]["start_rel_error"] = tw.rel_error(z_start).tolist()
    prob = VariationalProblem(tw.model, tw.obs, tw.x0, t0=tw.t0)
    w0, c0 = rec.clock()
    best = {"J": math.inf, "z": tw.z0}

    def cost(v: torch.Tensor) -> torch.Tensor:  # control in prior-whitened units: z = μ + s v
        z = tw.prior_mean + tw.prior_std * v
        if log:  # the previous evaluation (forward + adjoint) is complete when the next one starts
            _stamp(log, rec, w0, c0)
        if len(log) >= evals or time.time() > STOP_AT[0]:
            raise _BudgetError
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
        r = minimize(cost, v0, method="lbfgs", max_iter=evals, gtol=1e-8, ftol=1e-12)
        msg = r.message
        _stamp(log, rec, w0, c0)
    except _BudgetError:
        pass
    zb = best["z"]
    w, c = rec.clock()
    rec.data["gradient"].update(
        done=True,
        message=msg,
        wall_s=w - w0,
        cpu_s=c - c0,
        estimate=tw.physical(zb).tolist(),
        rel_error=tw.rel_error(zb).tolist(),
        z=zb.tolist(),
    )
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


def _identifiable(tag: str) -> list[str]:
    """The identifiable parameters of the Laplace part (posterior std ≤ 5 % at the truth), if it has run."""
    f = RESULTS / f"{tag}_laplace.json"
    if not f.exists():
        return []
    return json.loads(f.read_text()).get("laplace_truth", {}).get("identifiable", [])


def _validated_problem(tw: Twin, rec: Recorder, jacobian: str = "forward") -> object:
    """The study's ``VariationalProblem``, its batched forward-mode Jacobian checked once at the first guess.

    The check (``VariationalProblem._check_jacobian``: J d against a difference, then against one unbatched
    forward-mode run) guards against a model that mixes the members of the control batch, a property of the
    model, not of the point. Near the truth and the ES-MDA members the year's tangents grow to 1e3–1e22
    (docs/ecosmo_identifiability.md): there the batched and the unbatched exact runs disagree by roundoff
    amplified that much, the check fails there for that reason alone, and ``jacfwd`` (≈ 350 s CPU per
    Jacobian against ≈ 12 s) would give an equally amplified answer. At the first guess the tangents stay
    moderate (J d of the batched and the unbatched run agree to 1.5e-14), so the check is made there."""
    from pelagos.inverse.problem import VariationalProblem

    prob = VariationalProblem(tw.model, tw.obs, tw.x0, t0=tw.t0, jacobian=jacobian)
    if jacobian == "forward":
        w, c = rec.clock()
        with torch.no_grad():
            prob.residuals(tw.z0)  # remembered: the check's one-sided difference starts from it
        prob.jacobian(tw.z0)
        w2, c2 = rec.clock()
        rec.data["jacobian_check_at_first_guess"] = {
            **prob.jacobian_info,
            "wall_s": w2 - w,
            "cpu_s": c2 - c,
            "note": "one run, the batched Jacobian (with the compile of the jvp program) and its check",
        }
        rec.save()
        print(f"[lm] batched Jacobian checked at the first guess: {prob.jacobian_info}", flush=True)
    return prob


def part_lm(
    tw: Twin,
    rec: Recorder,
    runs: int,
    z_start: torch.Tensor | None = None,
    start_label: str = "first guess",
    key: str = "lm",
    lambda0: float = 1e-6,
    jacobian: str = "forward",
    prob: object = None,
    identifiable: list[str] | None = None,
) -> dict:
    """Levenberg–Marquardt with the EXACT Jacobian (pelagos' ``minimize(method="levenberg-marquardt")`` with
    ``VariationalProblem.jacobian``: the 20 tangents of forward mode in one batched run through the compiled
    jvp step), in the prior-whitened control ``v`` (z = μ + s v), from the first guess or from ``z_start``
    (the truth, the ES-MDA mean, an ES-MDA member). Each trial step is one forward run of one column; each
    accepted step adds one batched forward-mode run (the Jacobian there). The last Jacobian gives the Laplace
    posterior at the estimate without another run. ``lambda0``: the first damping (relative to diag(JᵀJ)); a
    rejected trial costs one run of one column, a Jacobian more, so start nearly undamped.
    ``jacobian="bundle"``: central differences of all 20 directions in one batched run of 40 columns instead
    (not exact; for comparison). ``prob``: a ``VariationalProblem`` to reuse (a multi-start shares its
    compiled programs and the Jacobian's one-time guard). Returns the record ``rec.data[key]``."""
    from pelagos.inverse.optim import minimize

    rec.data.setdefault("header", _header(tw))
    log: list = []
    rec.data[key] = {
        "log": log,
        "done": False,
        "start": start_label,
        "method": "Levenberg-Marquardt, exact Jacobian (forward mode, batched)",
    }
    v0 = torch.zeros(tw.p)
    if z_start is not None:
        v0 = (z_start - tw.prior_mean) / tw.prior_std
    rec.data[key]["start_rel_error"] = tw.rel_error(tw.prior_mean + tw.prior_std * v0).tolist()
    if prob is None:
        prob = _validated_problem(tw, rec, jacobian)
    rec.data[key].update(lambda0=lambda0, jacobian=jacobian)
    if jacobian == "bundle":
        rec.data[key]["method"] = "Levenberg-Marquardt, central-difference Jacobian (40 columns, step 1e-5)"
    s = tw.prior_std
    w0, c0 = rec.clock()
    last = {}

    def stamp(kind: str, z: torch.Tensor, cost: float | None, extra: dict | None = None) -> None:
        w, c = rec.clock()
        entry = {"kind": kind, "wall_s": w - w0, "cpu_s": c - c0, "rel_error": tw.rel_error(z).tolist()}
        if cost is not None:
            entry["cost"] = cost
        entry.update(extra or {})
        log.append(entry)
        rec.save()
        print(
            f"[{key}] run {len(log)} ({kind}): J = {cost}, {w - w0:.0f} s wall, {c - c0:.0f} s CPU",
            flush=True,
        )

    def residuals(v: torch.Tensor) -> torch.Tensor:
        if len(log) >= runs or time.time() > STOP_AT[0]:
            raise _BudgetError
        z = tw.prior_mean + s * v
        try:
            r = prob.residuals(z)
        except SolverError:  # also the compiled solve's failure (pelagos.column.compiled types it)
            stamp("trial", z, math.inf)
            raise
        stamp("trial", z, 0.5 * float(r.pow(2).sum()))
        return r

    def jacobian_v(v: torch.Tensor) -> torch.Tensor:
        if len(log) >= runs or time.time() > STOP_AT[0]:
            raise _BudgetError
        z = tw.prior_mean + s * v
        c = time.process_time()
        Jz = prob.jacobian(z)
        info = {"jacobian_cpu_s": time.process_time() - c, "path": prob.jacobian_info.get("path")}
        if prob.jacobian_info.get("reason"):
            info["fallback_reason"] = prob.jacobian_info["reason"]
        stamp("jacobian", z, None, info)
        last.update(v=v.detach().clone(), J=Jz * s)
        return Jz * s

    msg, best_v = "budget of runs spent", v0
    try:
        res = minimize(
            lambda v: 0.5 * residuals(v).pow(2).sum(),
            v0,
            method="levenberg-marquardt",
            residuals=residuals,
            jacobian=jacobian_v,
            max_iter=10 * runs,
            gtol=1e-10,
            ftol=1e-10,
            lm_lambda0=lambda0,
        )
        msg, best_v = res.message, res.z
        rec.data[key]["final_lambda"] = res.damping
    except _BudgetError:
        msg = "budget of runs spent" if len(log) >= runs else "--stop-at reached"
        best_v = last.get("v", v0)  # the last accepted point (Jacobians are formed at accepted points only)
    z = tw.prior_mean + s * best_v
    w, c = rec.clock()
    err = tw.rel_error(z)
    out = {
        "done": True,
        "message": msg,
        "model_runs": len(log),
        "wall_s": w - w0,
        "cpu_s": c - c0,
        "estimate": tw.physical(z).tolist(),
        "rel_error": err.tolist(),
        "z": z.tolist(),
        "jacobian_batched": bool(prob._batched_jac),
        "jacobian_info": {k: v for k, v in prob.jacobian_info.items()},
    }
    costs = [e["cost"] for e in log if "cost" in e and math.isfinite(e["cost"])]
    if costs:
        out["cost"] = min(costs)
    if identifiable:
        ii = [i for i, n in enumerate(tw.names) if n in identifiable]
        out["identifiable_within_10"] = int(sum(float(err[i].abs()) <= 0.1 for i in ii))
        out["identifiable_max_error"] = max(float(err[i].abs()) for i in ii)
        out["identifiable_count"] = len(ii)
    if "J" in last and torch.equal(last["v"], best_v):
        Jz = last["J"] / s
        M = Jz.shape[0] - tw.p
        lap = laplace_from_jacobian(Jz, M)
        theta = tw.physical(z).abs() / tw.dtheta_dz(z).abs()
        out["laplace_std_rel"] = (lap["std"] / theta).tolist()
    rec.data[key].update(out)
    rec.save()
    print(f"[{key}] {msg}: J = {out.get('cost')}, {len(log)} runs, {w - w0:.0f} s wall, {c - c0:.0f} s CPU")
    return rec.data[key]


def part_lm_members(
    tw: Twin, rec: Recorder, esmda_rec: dict, k: int, runs: int, lambda0: float, identifiable: list[str]
) -> None:
    """Multi-start Levenberg–Marquardt (exact Jacobian) from the ``k`` final ES-MDA members of lowest cost J
    (misfit + prior); see :func:`part_lm_multistart`."""
    if "members_z" not in esmda_rec:
        raise SystemExit("the ES-MDA result has no members: run --part esmda again (it keeps them now)")
    Z = torch.tensor(esmda_rec["members_z"], dtype=torch.float64)
    cost = torch.tensor(esmda_rec["member_cost"], dtype=torch.float64)
    order = torch.argsort(cost)[:k].tolist()
    starts = {f"lm_member_{i}": (Z[i], f"ES-MDA member {i} (rank {r + 1} by J)") for r, i in enumerate(order)}
    extra = {"members": order, "member_cost": [float(cost[i]) for i in order]}
    part_lm_multistart(tw, rec, starts, runs, lambda0, identifiable, extra)


def part_lm_line(
    tw: Twin,
    rec: Recorder,
    ts: list[float],
    runs: int,
    lambda0: float,
    identifiable: list[str],
    jacobian: str = "forward",
) -> None:
    """Levenberg–Marquardt (exact Jacobian) from points on the straight line from the first guess to the
    truth, z = z_fg + t (z_true − z_fg): how close to the truth a start must be to reach the minimum near it
    (a probe of the basin's size, knowing the truth; not a method). See :func:`part_lm_multistart`."""
    starts = {
        f"lm_line_{t:g}": (tw.z0 + t * (tw.truth - tw.z0), f"line first guess → truth, t = {t:g}") for t in ts
    }
    part_lm_multistart(tw, rec, starts, runs, lambda0, identifiable, {"t": ts}, jacobian)


def part_lm_multistart(
    tw: Twin,
    rec: Recorder,
    starts: dict[str, tuple[torch.Tensor, str]],
    runs: int,
    lambda0: float,
    identifiable: list[str],
    extra: dict | None = None,
    jacobian: str = "forward",
) -> None:
    """Levenberg–Marquardt (exact Jacobian) from each of ``starts`` (key -> (z, label)), one after the other
    in this process (one problem: the compiled programs are built once), each with a budget of ``runs`` model
    runs and all within ``--stop-at``; records the best J (over these and the earlier starts kept in the same
    file). ``jacobian``: as in :func:`part_lm`."""
    prob = _validated_problem(tw, rec, jacobian)
    kept = [k for k in rec.data.get("multistart", {}).get("runs", []) if k not in starts]  # earlier starts
    rec.data["multistart"] = {**(extra or {}), "runs": kept}
    w0, c0 = rec.clock()
    for key, (z, label) in starts.items():
        if time.time() > STOP_AT[0]:
            break
        part_lm(tw, rec, runs, z, label, key, lambda0, jacobian, prob=prob, identifiable=identifiable)
        rec.data["multistart"]["runs"].append(key)
        done = [rec.data[x] for x in rec.data["multistart"]["runs"] if "cost" in rec.data[x]]
        w, c = rec.clock()
        best = min(done, key=lambda e: e["cost"]) if done else None
        rec.data["multistart"].update(
            wall_s=w - w0, cpu_s=c - c0, best=best and best["start"], best_cost=best and best["cost"]
        )
        rec.save()


def part_lm_continuation(
    tw: Twin,
    rec: Recorder,
    stages: list[str],
    runs: list[int],
    lambda0: float,
    identifiable: list[str],
    jacobian: str = "bundle",
    z_start: torch.Tensor | None = None,
    start_label: str = "the first guess",
    adaptive: tuple[float, float] | None = None,
) -> None:
    """Continuation in the length of the window, from the first guess, without knowing the truth.

    Stage k calibrates (Levenberg–Marquardt, :func:`part_lm`) on the observations up to ``stages[k]`` (a date
    of the model's calendar) with the run stopped at the last of them, starting from the estimate of stage
    k − 1 (stage 1: the first guess, or ``z_start``). The prior term is the same at every stage, and the last
    stage should end at the end of the year: its cost is then the study's year cost, unchanged. After each
    stage the year's cost J at its estimate is recorded too (one run of one column), so the stages compare
    on one scale.
    ``runs``: the budget of model runs of each stage (the last value repeats).
    ``adaptive = (ratio, min_days)``: ``stages`` is a coarse schedule, refined as it goes: before a stage
    (after the first), the new window's cost at the current estimate is computed (one run); while it exceeds
    ``ratio`` × (the last stage's final cost + half the number of values the new window adds: what a fit
    would cost) and the step is longer than ``min_days``, the end is moved to the middle of the step (whole
    hours). The schedule that ran is recorded."""
    import datetime as dt

    from pelagos.inverse.problem import VariationalProblem
    from pelagos.io.build import model_time

    rec.data.setdefault("header", _header(tw))
    full = tw.obs
    year = VariationalProblem(tw.model, full, tw.x0, t0=tw.t0)  # the study's cost (the trials' program)
    z = tw.z0.clone() if z_start is None else z_start.clone()
    rec.data["continuation"] = {"stages": stages, "runs": [], "jacobian": jacobian, "start": start_label,
                                "adaptive": adaptive, "schedule": [], "refusals": []}  # fmt: skip
    w0, c0 = rec.clock()

    def window(stop: str):
        return full.window(-math.inf, model_time(tw.model, stop, "--stages"))

    todo = list(stages)
    prev, prev_cost, k = None, None, 0
    try:
        while todo:
            if time.time() > STOP_AT[0]:
                break
            stop = todo[0]
            if adaptive is not None and prev is not None:
                ratio, min_days = adaptive
                a, b = dt.datetime.fromisoformat(prev), dt.datetime.fromisoformat(stop)
                obs = window(stop)
                with torch.no_grad():
                    j0 = 0.5 * float(
                        VariationalProblem(tw.model, obs, tw.x0, t0=tw.t0).residuals(z).pow(2).sum()
                    )
                expect = prev_cost + 0.5 * (obs.n_obs - window(prev).n_obs)
                if j0 > ratio * expect and (b - a).total_seconds() > min_days * 86400:
                    mid = a + dt.timedelta(hours=max(1, round((b - a).total_seconds() / 3600 / 2)))
                    rec.data["continuation"]["refusals"].append({"end": stop, "cost": j0, "expected": expect})
                    print(
                        f"[continuation] {stop}: J = {j0:.1f} > {ratio:g} x {expect:.1f}; try {mid}",
                        flush=True,
                    )
                    todo.insert(0, mid.strftime("%Y-%m-%d %H:%M:%S"))
                    continue
            todo.pop(0)
            k += 1
            tw.obs = window(stop)
            key = f"stage_{k}"
            label = f"stage {k}: observations up to {stop} ({tw.obs.n_obs} values), from " + (
                start_label if k == 1 else f"stage {k - 1}"
            )
            out = part_lm(
                tw,
                rec,
                runs[min(k - 1, len(runs) - 1)],
                z,
                label,
                key,
                lambda0,
                jacobian,
                identifiable=identifiable,
            )
            z = torch.tensor(out["z"], dtype=torch.float64)
            tw.obs = full
            w, c = rec.clock()
            with torch.no_grad():
                jy = 0.5 * float(year.residuals(z).pow(2).sum())
            w2, c2 = rec.clock()
            out.update(window_end=stop, n_obs=int(window(stop).n_obs), year_cost=jy,
                       year_cost_cpu_s=c2 - c, year_cost_wall_s=w2 - w)  # fmt: skip
            prev, prev_cost = stop, out["cost"]
            rec.data["continuation"]["runs"].append(key)
            rec.data["continuation"]["schedule"].append(stop)
            rec.data["continuation"].update(wall_s=w2 - w0, cpu_s=c2 - c0)
            rec.save()
            print(f"[{key}] up to {stop}: J(window) = {out.get('cost')}, J(year) = {jy:.2f}", flush=True)
    finally:
        tw.obs = full


def plot_continuation(files: dict[str, Path], out: Path = FIGURES / "ecosmo_continuation.png") -> Path:
    """The year's cost J and the identifiable parameters within 10 % at the end of each continuation stage
    (``files``: label -> a ``--lm-start continuation`` result), against the stage's window end."""
    import datetime as dt

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for k, (label, f) in enumerate(files.items()):
        d = json.loads(f.read_text())
        runs = [d[x] for x in d["continuation"]["runs"]]
        if not runs:
            continue
        days = [dt.datetime.fromisoformat(r["window_end"]) for r in runs]
        mark = "os^vDP"[k % 6] + "-"
        ax[0].semilogy(days, [r["year_cost"] for r in runs], mark, label=label, ms=4)
        ax[1].plot(days, [r.get("identifiable_within_10", math.nan) for r in runs], mark, label=label, ms=4)
    ax[0].axhline(349.33, color="k", lw=0.8, ls=":", label="J at the truth (349.33)")
    ax[0].axhline(41040, color="0.5", lw=0.8, ls="--", label="J at the first guess (41 040)")
    ax[0].set_ylabel("cost J of the year at the stage's estimate")
    ax[1].set_ylabel("identifiable parameters within 10 % (of 11)")
    ax[1].axhline(11, color="k", lw=0.8, ls=":")
    for a in ax:
        a.set_xlabel("end of the stage's window (1998)")
        a.legend(fontsize=8)
        a.tick_params(axis="x", labelrotation=30)
    fig.suptitle("continuation in the window length from starts 20 % off (LM, central-difference Jacobian)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def part_line(tw: Twin, rec: Recorder, starts: dict[str, torch.Tensor], points: int = 11) -> None:
    """The cost on the straight lines (in the control z = log θ) from each start to the truth,
    J(z_s + t (z_true − z_s)) for t in [0, 1]: all points of all lines as columns of ONE run. A rise between
    start and truth means a barrier: the start lies in another basin of the cost."""
    rec.data.setdefault("header", _header(tw))
    t = torch.linspace(0.0, 1.0, points, dtype=torch.float64)
    Z = torch.cat([zs + t[:, None] * (tw.truth - zs) for zs in starts.values()])
    w, c = rec.clock()
    with torch.no_grad():
        R = tw.residuals(Z)
    w2, c2 = rec.clock()
    J = 0.5 * R.pow(2).sum(-1)
    Jd = 0.5 * R[:, : tw.n_data].pow(2).sum(-1)
    rec.data["line"] = {
        "t": t.tolist(),
        "columns": int(Z.shape[0]),
        "wall_s": w2 - w,
        "cpu_s": c2 - c,
        "lines": {
            k: {
                "cost": J[i * points : (i + 1) * points].tolist(),
                "misfit": Jd[i * points : (i + 1) * points].tolist(),
            }
            for i, k in enumerate(starts)
        },
    }
    rec.save()
    for k, v in rec.data["line"]["lines"].items():
        print(f"[line] {k}: " + ", ".join(f"{x:.0f}" for x in v["cost"]), flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--part",
        choices=["laplace", "esmda", "fd", "gradient", "lm", "line", "report", "continuation_report", "all"],
        default="all",
    )
    ap.add_argument(
        "--continuation-tags",
        default="ecocont_weekly,ecocont_fewer,ecocont_monthly",
        help="continuation_report: the tags whose <tag>_lm_bundle_continuation[_mirror].json are drawn "
        "(docs/figures/ecosmo_continuation.png)",
    )
    ap.add_argument("--assimilations", type=int, default=3, help="ES-MDA: number of assimilations")
    ap.add_argument("--config", default=str(CONFIG))
    ap.add_argument("--set", action="append", default=[], help="configuration override key=value")
    ap.add_argument("--fd-evals", type=int, default=12)
    ap.add_argument("--grad-evals", type=int, default=12)
    ap.add_argument("--lm-runs", type=int, default=40, help="lm: model runs (trials + Jacobians)")
    ap.add_argument("--lm-lambda0", type=float, default=1e-6, help="lm: first damping (relative to diag JᵀJ)")
    ap.add_argument("--lm-jacobian", choices=["forward", "bundle"], default="forward")
    ap.add_argument(
        "--lm-start",
        choices=["first_guess", "truth", "esmda", "members", "line", "continuation"],
        default=None,
        help="lm part: start at the first guess, the truth (the minimum the noisy data define), the ES-MDA "
        "mean, or (members) multi-start from the --lm-members final ES-MDA members of lowest J, or (line) "
        "from the points --lm-line-t on the line first guess -> truth, or (continuation) from the first "
        "guess "
        "on windows ending at --stages, each stage starting from the last one's estimate; results in "
        "<tag>_lm.json, <tag>_lm_from_{truth,esmda,members,line}.json, <tag>_lm_continuation.json (with "
        "central differences: lm_bundle; default: --grad-start)",
    )
    ap.add_argument(
        "--stages",
        default="1998-04-01,1998-07-01,1999-01-01",
        help="lm --lm-start continuation: the ends of the windows (dates), comma-separated; the last should "
        "be the end of the year (the study's cost)",
    )
    ap.add_argument(
        "--stage-runs",
        default=None,
        help="lm --lm-start continuation: runs per stage, comma-separated "
        "(the last repeats; default: --lm-runs)",
    )
    ap.add_argument(
        "--adaptive",
        default=None,
        help="lm --lm-start continuation: RATIO,MIN_DAYS: refine the --stages schedule as it runs (halve a "
        "step "
        "while the new window's cost at the current estimate exceeds RATIO x what a fit would cost)",
    )
    ap.add_argument(
        "--continuation-from",
        choices=["first_guess", "mirror"],
        default="first_guess",
        help="lm --lm-start continuation: start at the first guess (truth × 1.2 / × 0.8), or at its mirror "
        "image about the truth in ln θ (truth ÷ 1.2 / ÷ 0.8: another start 17–25 %% off; the prior is "
        "unchanged); results of the mirror in <tag>_lm[_bundle]_continuation_mirror.json",
    )
    ap.add_argument(
        "--laplace-tag", default=None, help="read the identifiable parameters from <laplace-tag>_laplace.json"
    )
    ap.add_argument(
        "--lm-line-t", default="0.5,0.8", help="lm --lm-start line: the points t, comma-separated"
    )
    ap.add_argument("--lm-members", type=int, default=6, help="lm --lm-start members: how many starts")
    ap.add_argument("--members", type=int, default=64)
    ap.add_argument("--tag", default="ecosmo_identifiability")
    ap.add_argument("--stop-at", default=None, help="HH:MM UTC: optimisers start no model run after it")
    ap.add_argument(
        "--grad-start",
        choices=["first_guess", "esmda"],
        default="first_guess",
        help="gradient and lm parts: start at the first guess, or at the ES-MDA mean of <tag>_esmda.json "
        "(results then go to <tag>_gradient_from_esmda.json / <tag>_lm_from_esmda.json)",
    )
    ap.add_argument("--esmda-tag", default=None, help="read the ES-MDA mean from <esmda-tag>_esmda.json")
    args = ap.parse_args(argv)
    STOP_AT[0] = _stop_at(args.stop_at)
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    if args.part in ("laplace", "all"):
        part_laplace(Twin(args.config, args.set), Recorder(RESULTS / f"{args.tag}_laplace.json"))
    if args.part in ("esmda", "all"):
        rec = Recorder(RESULTS / f"{args.tag}_esmda.json")
        part_esmda(Twin(args.config, args.set), rec, args.members, args.assimilations)
    if args.part in ("fd", "all"):
        part_fd(Twin(args.config, args.set), Recorder(RESULTS / f"{args.tag}_fd.json"), args.fd_evals)
    if args.part in ("gradient", "all"):
        start, name = None, f"{args.tag}_gradient.json"
        if args.grad_start == "esmda":
            start = json.loads((RESULTS / f"{args.tag}_esmda.json").read_text())["esmda"]
            name = f"{args.tag}_gradient_from_esmda.json"
        part_gradient(Twin(args.config, args.set), Recorder(RESULTS / name), args.grad_evals, start)
    if args.part == "lm":
        lm = "lm" if args.lm_jacobian == "forward" else "lm_bundle"
        start = args.lm_start or args.grad_start
        tw = Twin(args.config, args.set)
        ident = _identifiable(args.laplace_tag or args.tag)
        src = RESULTS / f"{args.esmda_tag or args.tag}_esmda.json"
        if start == "members":
            es = json.loads(src.read_text())["esmda"]
            rec = Recorder(RESULTS / f"{args.tag}_{lm}_from_members.json")
            part_lm_members(tw, rec, es, args.lm_members, args.lm_runs, args.lm_lambda0, ident)
        elif start == "continuation":
            runs = [int(x) for x in (args.stage_runs or str(args.lm_runs)).split(",")]
            stages = [x.strip() for x in args.stages.split(",")]
            z_start, label, name = None, "the first guess", f"{args.tag}_{lm}_continuation.json"
            if args.continuation_from == "mirror":
                z_start = 2 * tw.truth - tw.z0
                label, name = "the mirror of the first guess", f"{args.tag}_{lm}_continuation_mirror.json"
            adaptive = tuple(float(x) for x in args.adaptive.split(",")) if args.adaptive else None
            if adaptive:
                name = name.replace("_continuation", "_continuation_adaptive")
            rec = Recorder(RESULTS / name)
            part_lm_continuation(
                tw, rec, stages, runs, args.lm_lambda0, ident, args.lm_jacobian, z_start, label, adaptive
            )
        elif start == "line":
            rec = Recorder(RESULTS / f"{args.tag}_{lm}_from_line.json")
            ts = [float(t) for t in args.lm_line_t.split(",")]
            part_lm_line(tw, rec, ts, args.lm_runs, args.lm_lambda0, ident, args.lm_jacobian)
        else:
            z_start, label, name = None, "first guess", f"{args.tag}_{lm}.json"
            if start == "esmda":
                es = json.loads(src.read_text())["esmda"]
                z_start = tw.control(torch.tensor(es["estimate"], dtype=torch.float64))
                label, name = "ES-MDA mean", f"{args.tag}_{lm}_from_esmda.json"
            elif start == "truth":
                z_start, label, name = tw.truth.clone(), "truth", f"{args.tag}_{lm}_from_truth.json"
            rec = Recorder(RESULTS / name)
            part_lm(tw, rec, args.lm_runs, z_start, label, "lm", args.lm_lambda0, args.lm_jacobian,
                    identifiable=ident)  # fmt: skip
    if args.part == "line":
        tw = Twin(args.config, args.set)
        es = json.loads((RESULTS / f"{args.esmda_tag or args.tag}_esmda.json").read_text())["esmda"]
        fd = json.loads((RESULTS / f"{args.tag}_fd.json").read_text())["finite_difference"]
        starts = {
            "ES-MDA mean": tw.control(torch.tensor(es["estimate"], dtype=torch.float64)),
            "first guess": tw.z0.clone(),
            "LM (FD) estimate": tw.control(torch.tensor(fd["estimate"], dtype=torch.float64)),
        }
        part_line(tw, Recorder(RESULTS / f"{args.tag}_line.json"), starts)
    if args.part in ("report", "all"):
        report(args.tag)
    if args.part == "continuation_report":
        files = {}
        for t in args.continuation_tags.split(","):
            for suffix, what in (
                ("", "first guess"),
                ("_mirror", "mirror of the first guess"),
                ("_adaptive", "first guess, adaptive"),
                ("_adaptive_mirror", "mirror, adaptive"),
            ):
                f = RESULTS / f"{t}_lm_bundle_continuation{suffix}.json"
                if f.exists():
                    files[f"{t.removeprefix('ecocont_')} stages, from the {what}"] = f
        print(f"wrote {plot_continuation(files)}")


# -- report --------------------------------------------------------------------------------------------------
def report(tag: str = "ecosmo_identifiability") -> dict:
    """Merge the two parts' JSONs, draw the figures and print the markdown tables of the docs page."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = {}
    for part in ("laplace", "esmda", "fd", "gradient", "gradient_from_esmda", "lm", "lm_from_esmda",
                 "lm_from_truth", "lm_bundle_from_truth", "lm_from_members", "lm_from_line",
                 "lm_bundle_from_line"):  # fmt: skip
        f = RESULTS / f"{tag}_{part}.json"
        if f.exists():
            parts[part] = json.loads(f.read_text())
    b = {**parts.get("laplace", {}), **parts.get("esmda", {}), **parts.get("fd", {})}
    g = parts.get("gradient", {})
    ge = (parts.get("gradient_from_esmda") or {}).get("gradient") or {}
    hd = b.get("header") or g.get("header")
    if hd is None:
        raise SystemExit("no results yet: run --part esmda / fd / gradient first")
    names = [n.removeprefix("ECO.") for n in hd["names"]]
    p = len(names)
    lt = b.get("laplace_truth") or {}
    le = g.get("laplace_estimate") or {}
    merged = {"header": hd, **b, **{k: v for k, v in g.items() if k != "header"}}
    if ge:
        merged["gradient_from_esmda"] = ge
    lm = (parts.get("lm") or {}).get("lm") or {}
    lme = (parts.get("lm_from_esmda") or {}).get("lm") or {}
    if lm:
        merged["lm"] = lm
    if lme:
        merged["lm_from_esmda"] = lme
    lmt_exact = (parts.get("lm_from_truth") or {}).get("lm") or {}
    lmt = (parts.get("lm_bundle_from_truth") or {}).get("lm") or {}  # central differences: see the docs
    if lmt_exact:
        merged["lm_from_truth"] = lmt_exact
    if lmt:
        merged["lm_bundle_from_truth"] = lmt
    ms = parts.get("lm_from_members") or {}
    lmm = {}  # the multi-start run that reached the lowest J
    if ms.get("multistart", {}).get("runs"):
        merged["lm_from_members"] = {k: ms[k] for k in ["multistart", *ms["multistart"]["runs"]]}
        done = [ms[k] for k in ms["multistart"]["runs"] if "cost" in ms[k]]
        lmm = min(done, key=lambda e: e["cost"]) if done else {}
    (RESULTS / f"{tag}.json").write_text(json.dumps(merged, indent=1))
    FIGURES.mkdir(parents=True, exist_ok=True)
    out = []
    ident = set(lt.get("identifiable", []))
    order = list(range(p))
    if lt:
        order = sorted(range(p), key=lambda i: -lt["sensitivity"][i])
        fig, ax = plt.subplots(1, 2, figsize=(11, 4.2))
        x = range(p)
        ax[0].bar(x, [lt["sensitivity"][i] for i in order], color="C0")
        ax[0].set_yscale("log")
        ax[0].set_ylabel("‖∂r/∂ln θ‖ (whitened misfit per relative change)")
        ax[0].set_title("sensitivity at the truth (ranked)")
        ax[1].semilogy(x, [lt["posterior_std_rel"][i] for i in order], "o", label="Laplace at the truth")
        if le:
            ax[1].semilogy(
                x, [le["posterior_std_rel"][i] for i in order], "x", label="Laplace at the estimate"
            )
        ax[1].semilogy(
            x,
            [hd["prior_std_rel"][i] * hd["first_guess"][i] / hd["truth"][i] for i in order],
            "_",
            ms=12,
            color="k",
            label="prior std",
        )
        ax[1].axhline(IDENTIFIABLE_STD, color="r", ls="--", lw=1, label="5 % (identifiable)")
        ax[1].set_ylabel("posterior std / value")
        ax[1].set_title("Gauss–Newton Laplace posterior")
        ax[1].legend(fontsize=8)
        for a in ax:
            a.set_xticks(list(x), [names[i] for i in order], rotation=70, fontsize=8)
        fig.tight_layout()
        out.append(FIGURES / "ecosmo_identifiability_laplace.png")
        fig.savefig(out[-1], dpi=110)
        plt.close(fig)
    methods = {
        "first guess": [(f - t) / t for f, t in zip(hd["first_guess"], hd["truth"])],
        "gradient (adjoint)": (g.get("gradient") or {}).get("rel_error"),
        "finite differences": (b.get("finite_difference") or {}).get("rel_error"),
        "ES-MDA": (b.get("esmda") or {}).get("rel_error"),
        "gradient from ES-MDA mean": ge.get("rel_error"),
        "LM, exact Jacobian": lm.get("rel_error"),
        "LM, exact Jacobian, from ES-MDA mean": lme.get("rel_error"),
        "LM, exact Jacobian, best of ES-MDA members": lmm.get("rel_error"),
        "LM, central-difference Jacobian, from the truth": lmt.get("rel_error"),
    }
    fig, ax = plt.subplots(figsize=(11, 5.6))
    for k, (m, e) in enumerate(methods.items()):
        if e:
            ax.plot(
                [j + 0.09 * (k - 4) for j in range(p)], [100 * e[i] for i in order], "os^vDPX*h"[k], label=m
            )
    ax.axhspan(-10, 10, color="0.9", zorder=0)
    ax.set_xticks(
        range(p),
        [names[i] + (" *" if hd["names"][i] in ident else "") for i in order],
        rotation=70,
        fontsize=8,
    )
    ax.set_ylabel("error (% of the true value)")
    ax.set_title("recovery (grey: ±10 %; * identifiable: Laplace std ≤ 5 %)")
    ax.set_ylim(max(ax.get_ylim()[0], -100), min(ax.get_ylim()[1], 300))
    ax.legend(fontsize=8, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.32))
    fig.tight_layout()
    out.append(FIGURES / "ecosmo_identifiability_recovery.png")
    fig.savefig(out[-1], dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    gl = (g.get("gradient") or {}).get("log") or []
    fl = (b.get("finite_difference") or {}).get("log") or []
    if gl:
        ax[0].plot(
            range(1, len(gl) + 1), [e["cost"] for e in gl], "o-", label="gradient: forward+adjoint runs"
        )
        ax[1].plot([e.get("wall_s", math.nan) for e in gl], [e["cost"] for e in gl], "o-", label="gradient")
    if fl:
        ax[0].plot(
            [(k + 1) * (p + 1) for k in range(len(fl))],
            [e["cost"] for e in fl],
            "s-",
            label=f"FD: member runs ({p + 1} per batched run)",
        )
        ax[1].plot([e["wall_s"] for e in fl], [e["cost"] for e in fl], "s-", label="FD (batched)")
    gel = ge.get("log") or []
    es = b.get("esmda") or {}
    if gel and es:  # after the ES-MDA runs: member runs and wall time continue from ES-MDA's
        n0, w0 = es["member_runs"], es["wall_s"]
        ax[0].plot(
            [n0 + k + 1 for k in range(len(gel))],
            [e["cost"] for e in gel],
            "D-",
            label="gradient from the ES-MDA mean (after ES-MDA's runs)",
        )
        ax[1].plot(
            [w0 + e.get("wall_s", math.nan) for e in gel],
            [e["cost"] for e in gel],
            "D-",
            label="gradient from the ES-MDA mean",
        )
    for run, mark, lab in (
        (lm, "P-", "LM, exact Jacobian"),
        (lme, "X-", "LM, exact Jacobian, from ES-MDA mean"),
        (lmm, "*-", "LM, exact Jacobian, best ES-MDA member"),
        (lmt, "h-", "LM, central-difference Jacobian, from the truth"),
    ):
        ll = [e for e in run.get("log") or [] if "cost" in e and math.isfinite(e["cost"])]
        if not ll:
            continue
        n0, w0 = (es["member_runs"], es["wall_s"]) if run in (lme, lmm) and es else (0, 0.0)
        idx = {id(e): k for k, e in enumerate(run["log"])}  # model runs so far: trials and Jacobians
        best = [min(e2["cost"] for e2 in ll[: j + 1]) for j in range(len(ll))]  # the accepted cost
        ax[0].plot([n0 + idx[id(e)] + 1 for e in ll], best, mark, label=lab + " (runs)")
        ax[1].plot([w0 + e["wall_s"] for e in ll], best, mark, label=lab)
    for a in ax:
        a.set_yscale("log")
        a.set_ylabel("cost J (misfit + prior)")
        a.legend(fontsize=8)
    ax[0].set_xscale("log")
    ax[0].set_xlabel("model runs")
    ax[1].set_xlabel("wall time (s, loaded machine)")
    fig.tight_layout()
    out.append(FIGURES / "ecosmo_identifiability_cost.png")
    fig.savefig(out[-1], dpi=110)
    plt.close(fig)
    line = RESULTS / f"{tag}_line.json"
    if line.exists():  # the cost on the straight lines from the starts to the truth (--part line)
        ln = json.loads(line.read_text())["line"]
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for k, v in ln["lines"].items():
            ax.semilogy(ln["t"], v["cost"], "o-", label=f"from the {k}")
        ax.axhline(ln["lines"][next(iter(ln["lines"]))]["cost"][-1], color="k", lw=0.8, ls=":", label="truth")
        ax.set_xlabel("t: z = z_start + t (z_truth − z_start), z = ln θ")
        ax.set_ylabel("cost J (misfit + prior)")
        ax.set_title("cost on the straight line to the truth (one run of 33 columns)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        out.append(FIGURES / "ecosmo_identifiability_line.png")
        fig.savefig(out[-1], dpi=110)
        plt.close(fig)
    # tables
    print(
        "| parameter | truth | sensitivity rank | ‖∂r/∂ln θ‖ | Laplace std (truth) | Laplace std (estimate) |"
        " identifiable | gradient error | FD error | ES-MDA error | gradient from ES-MDA error |"
        " LM (exact J) error | LM (exact J) from ES-MDA error |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")

    def pc(e, i):
        return f"{100 * e[i]:+.1f} %" if e else "—"

    for r, i in enumerate(order):
        pe = f"{100 * le['posterior_std_rel'][i]:.1f} %" if le else "—"
        print(
            f"| {names[i]} | {hd['truth'][i]:g} | {r + 1} | {lt['sensitivity'][i]:.3g} | "
            f"{100 * lt['posterior_std_rel'][i]:.1f} % | "
            f"{pe} | "
            f"{'yes' if hd['names'][i] in ident else 'no'} | {pc(methods['gradient (adjoint)'], i)} | "
            f"{pc(methods['finite differences'], i)} | {pc(methods['ES-MDA'], i)} | "
            f"{pc(methods['gradient from ES-MDA mean'], i)} | {pc(methods['LM, exact Jacobian'], i)} | "
            f"{pc(methods['LM, exact Jacobian, from ES-MDA mean'], i)} |"
        )
    summ = {}
    for m, e in methods.items():
        if e and ident:
            ii = [i for i in range(p) if hd["names"][i] in ident]
            summ[m] = (max(abs(e[i]) for i in ii), sum(abs(e[i]) <= 0.1 for i in ii), len(ii))
            print(
                f"{m}: identifiable max |error| {100 * summ[m][0]:.1f} %, "
                f"{summ[m][1]}/{summ[m][2]} within 10 %"
            )
    merged["summary_identifiable"] = summ
    read = [i for i in range(p) if lt and lt["sensitivity"][i] > 0]  # parameters the model reads
    summ_read = {}
    for m, e in methods.items():
        if e and read:
            rms = math.sqrt(sum(e[i] ** 2 for i in read) / len(read))
            summ_read[m] = (rms, sum(abs(e[i]) <= 0.1 for i in read), len(read))
            print(f"{m}: the {len(read)} read: RMS error {100 * rms:.1f} %, {summ_read[m][1]} within 10 %")
    merged["summary_read"] = summ_read
    lines = []  # the basin probe: starts on the line first guess -> truth (exact, central differences)
    for name in ("lm_from_line", "lm_bundle_from_line"):
        ml = parts.get(name) or {}
        if ml.get("multistart", {}).get("runs"):
            merged[name] = {k: ml[k] for k in ["multistart", *ml["multistart"]["runs"]]}
            lines.append(ml)
    lm_runs = [lm, lme, lmt_exact, lmt] + [
        m[k] for m in (ms, *lines) for k in (m.get("multistart") or {}).get("runs", [])
    ]
    lm_runs = [r for r in lm_runs if r.get("log")]
    if lm_runs:
        print("| LM start | J at the start | model runs (Jacobians) | CPU / wall | J reached | identifiable "
              "within 10 % | max error (identifiable) | stopped because |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|")
        for r in lm_runs:
            c0 = next((e["cost"] for e in r["log"] if "cost" in e), math.nan)
            nj = sum(e["kind"].startswith("jacobian") for e in r["log"])
            ii = [i for i in range(p) if hd["names"][i] in ident]
            e = r.get("rel_error")
            within = sum(abs(e[i]) <= 0.1 for i in ii) if e else "—"
            mx = f"{100 * max(abs(e[i]) for i in ii):.0f} %" if e and ii else "—"
            cw = f"{r.get('cpu_s', math.nan):.0f} s / {r.get('wall_s', math.nan):.0f} s"
            jr = f"{r.get('cost', math.nan):.6g}"
            jac = "central differences" if r.get("jacobian") == "bundle" else "exact"
            print(f"| {r['start']} ({jac}) | {c0:.6g} | {len(r['log'])} ({nj}) | {cw} | {jr} | "
                  f"{within} of {len(ii)} | {mx} | {r.get('message', r.get('note', ''))} |")  # fmt: skip
    (RESULTS / f"{tag}.json").write_text(json.dumps(merged, indent=1))
    for f in out:
        print(f"wrote {f}")
    return merged


if __name__ == "__main__":
    main()

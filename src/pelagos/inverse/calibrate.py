"""Gradient calibration of model parameters (optionally with the initial state) against observations.

Minimises ``J(u, v) = ½ Σ ((H(x(t_i)) − y_i)/σ_i)² + Σ ½((u − μ)/s)² [+ ½‖v‖²]`` over the unconstrained values
``u`` of the free parameters (bounded parameters never leave their range) and, with ``control_state=True``,
the
whitened initial-state increment ``v`` (x0 = x_b + S_B v). Several stations/columns are fitted at once when
the
state and the observation values carry a batch dim: the parameters are shared, the misfits add up.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ..core.covariance import Covariance
from ..core.errors import ConfigError
from ..core.observations import ObservationSet
from .laplace import correlation_from_covariance, laplace_covariance
from .optim import minimize
from .problem import VariationalProblem
from .result import CalibrationResult


def _physical(model: object, name: str, u: torch.Tensor) -> torch.Tensor:
    return model.parameter_spec(name).transform.forward(u)


def summarize(
    model: object,
    problem: VariationalProblem,
    opt,
    *,
    method: str,
    uncertainty: str | None = "hessian",
    covariance: torch.Tensor | None = None,
) -> CalibrationResult:
    """Build a :class:`CalibrationResult` from an optimisation of ``problem`` (shared by calibrate/4D-Var).

    ``covariance``: a precomputed (p, p) posterior covariance of the unconstrained parameters (else Laplace).
    """
    names = problem.param_names
    z = opt.z
    u = z[: problem.p]
    est = {n: float(_physical(model, n, u[i])) for i, n in enumerate(names)}
    res = CalibrationResult(
        names=names,
        estimates=est,
        raw={n: float(u[i]) for i, n in enumerate(names)},
        history=list(opt.history),
        cost=opt.cost,
        n_evals=opt.n_evals,
        n_iter=opt.n_iter,
        wall_time=opt.wall_time,
        converged=opt.converged,
        message=opt.message,
        method=method,
        z=z,
    )
    z0 = opt.z_history[0] if opt.z_history else problem.z0
    res.initial = {n: float(_physical(model, n, z0[i])) for i, n in enumerate(names)}
    res.units = {n: model.parameter_spec(n).units for n in names}
    res.parameter_history = {
        n: [float(_physical(model, n, zz[i])) for zz in opt.z_history] for i, n in enumerate(names)
    }
    for n in names:
        pr = model.parameter_spec(n).prior
        if pr is not None:
            m = torch.tensor(pr.mean, dtype=torch.float64)
            res.prior[n] = {"mean": float(_physical(model, n, m)), "raw_mean": pr.mean, "raw_std": pr.std}
    res.cost_terms = problem.cost_terms(z)
    if problem.control_state:
        res.initial_state = problem.initial_state(z)
    if (uncertainty or covariance is not None) and names:
        C = (
            covariance
            if covariance is not None
            else laplace_covariance(
                problem.cost,
                z,
                method=uncertainty,
                indices=range(problem.p),
                residuals=problem.residuals,
                jacobian=problem.jacobian,
            )
        )
        sd = C.diagonal().clamp(min=0).sqrt()
        for i, n in enumerate(names):
            ui = u[i].detach().clone().requires_grad_(True)
            with torch.enable_grad():
                (dxdu,) = torch.autograd.grad(_physical(model, n, ui), ui)
            res.raw_std[n] = float(sd[i])
            res.std[n] = float(dxdu.abs() * sd[i])  # delta method
            lo = float(_physical(model, n, u[i] - 1.96 * sd[i]))
            hi = float(_physical(model, n, u[i] + 1.96 * sd[i]))
            res.interval95[n] = (min(lo, hi), max(lo, hi))
        res.correlation = correlation_from_covariance(C).tolist()
    return res


def calibrate(
    model: object,
    obs: ObservationSet,
    state: object,
    *,
    free: Iterable[str] | str | None = None,
    t0: float = 0.0,
    dt: float | None = None,
    control_state: bool = False,
    B: Covariance | torch.Tensor | float | dict | None = None,
    optimizer: str = "lbfgs",
    max_iter: int = 100,
    lr: float = 0.05,
    gtol: float = 1e-7,
    ftol: float = 1e-12,
    uncertainty: str | None = "hessian",
    checkpoint: int | None = None,
    progress: bool = False,
    write_back: bool = True,
) -> CalibrationResult:
    """Estimate the free parameters of ``model`` from ``obs`` by gradient descent on the cost above.

    Args:
        state: initial state (the background x_b when ``control_state``), with batch dims as the observations.
        free: parameter names to estimate (default: those already free via ``model.select_free``).
        optimizer: ``"lbfgs"`` (strong Wolfe line search), ``"adam"`` (``lr``, ``max_iter`` steps) or
            ``"gauss-newton"`` (small problems) or ``"levenberg-marquardt"`` (damped Gauss–Newton with the
            exact forward-mode Jacobian, no adjoint runs; ``max_iter`` counts its trial steps).
        uncertainty: Laplace approximation method (``"hessian"``, ``"gauss-newton"``, ``"cg"``) or ``None``.
        write_back: store the estimates in the model's free parameters at the end.
    Returns:
        :class:`CalibrationResult` (estimates, Laplace std/correlations, prior, history, evaluations, wall
        time).
    """
    if free is not None:
        model.select_free(free)
    if not model.free_parameter_names() and not control_state:
        raise ConfigError(
            "nothing to calibrate: no free parameters (pass free=[...] or call model.select_free) and "
            "control_state=False"
        )
    if obs.n_obs == 0:
        raise ConfigError("the observation set holds no (non-missing) values")
    problem = VariationalProblem(
        model, obs, state, t0=t0, dt=dt, control_state=control_state, B=B, checkpoint=checkpoint
    )
    opt = minimize(
        problem.cost,
        problem.z0,
        method=optimizer,
        max_iter=max_iter,
        lr=lr,
        gtol=gtol,
        ftol=ftol,
        residuals=problem.residuals,
        jacobian=problem.jacobian,
        progress=progress,
        desc="calibrate",
        names=problem.param_names,
    )
    predictions = {"initial": problem.predictions(problem.z0), "final": problem.predictions(opt.z)}
    res = summarize(model, problem, opt, method=f"calibrate[{optimizer}]", uncertainty=uncertainty)
    res.predictions = predictions
    if write_back and problem.p:
        model.load_free_vector(opt.z[: problem.p].to(model.free_vector().dtype))
    return res

"""Strong- and weak-constraint 4D-Var, single window and cycled.

Strong constraint (the model is exact), control = initial state (+ optionally the free parameters):

    J(v, u) = ½‖v‖² + ½ Σ_i ‖(H(M_{0→i}(x_b + S_B v; u)) − y_i)/σ_i‖² + priors(u),   S_B S_Bᵀ = B.

Weak constraint (forcing formulation) adds model errors η_j = S_Q w_j to the state after every
``model_error_every`` steps and the term ½‖w‖² (Q = S_Q S_Qᵀ); as Q → 0 it tends to the strong constraint.
Gradients come from autograd through the model (= the adjoint); minimiser L-BFGS by default, or Gauss–Newton
(Jacobian by forward mode, exact in one iteration for a linear model — small controls only).

Cycling: windows of ``lag`` observation times, moved on by ``shift`` observation times; each window
assimilates
the observations not yet seen (the last ``shift`` ones) and its analysed initial state, run ``shift``
observation intervals forward, is the background of the next window. ``shift = lag`` is the usual sequence of
disjoint windows; ``shift = 1`` is DAPPER's Var4D/iEnKS scheme.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..core.covariance import Covariance
from ..core.errors import ConfigError
from ..core.observations import ObservationSet
from .calibrate import summarize
from .forward import predict, propagate, step_function
from .optim import minimize
from .problem import VariationalProblem
from .result import CalibrationResult

try:
    from tqdm.auto import tqdm
except ImportError:  # pragma: no cover
    tqdm = None


@dataclass
class FourDVarResult:
    """Analysis of one 4D-Var window."""

    analysis: object  # analysed initial state x0^a
    final: object  # x^a at the last observation time of the window
    cost: float
    history: list[float]
    n_evals: int
    n_iter: int
    wall_time: float
    converged: bool
    message: str
    cost_terms: dict
    model_error: torch.Tensor | None = None  # η_j (n_blocks, *state.shape) of weak-constraint 4D-Var
    params: CalibrationResult | None = None
    z: torch.Tensor | None = None


def fourdvar(
    model: object,
    obs: ObservationSet,
    xb: torch.Tensor | dict,
    B: Covariance | torch.Tensor | float | dict,
    *,
    t0: float = 0.0,
    dt: float | None = None,
    params: bool = False,
    Q: Covariance | torch.Tensor | float | None = None,
    model_error_every: int = 1,
    method: str = "lbfgs",
    max_iter: int = 200,
    gtol: float = 1e-9,
    ftol: float = 1e-14,
    uncertainty: str | None = None,
    checkpoint: int | None = None,
    jacobian: str = "forward",
    progress: bool = False,
) -> FourDVarResult:
    """Strong- (``Q=None``) or weak-constraint 4D-Var over the window ``[t0, last observation time]``.

    ``xb``: background initial state at ``t0``; ``B``: its error covariance (see covariance.py).
    ``params=True`` adds the model's free parameters to the control (with their priors).
    """
    if obs.n_obs == 0:
        raise ConfigError("4D-Var window without observations: nothing to assimilate")
    problem = VariationalProblem(
        model,
        obs,
        xb,
        t0=t0,
        dt=dt,
        control_params=params,
        control_state=True,
        B=B,
        Q=Q,
        model_error_every=model_error_every,
        checkpoint=checkpoint,
        jacobian=jacobian,
    )
    opt = minimize(
        problem.cost,
        problem.z0,
        method=method,
        max_iter=max_iter,
        gtol=gtol,
        ftol=ftol,
        residuals=problem.residuals,
        jacobian=problem.jacobian,
        progress=progress,
        desc="4D-Var",
        keep_iterates=params,
        names=problem.param_names,
    )
    z = opt.z
    x0 = problem.initial_state(z)
    x0 = x0.detach() if torch.is_tensor(x0) else {k: v.detach() for k, v in x0.items()}
    eta = None
    if problem.Q is not None and problem.n_blocks:
        w = problem.split(z)[2]
        eta = problem.Q.sqrt_apply(w.reshape(problem.n_blocks, *xb.shape)).detach()
    res = FourDVarResult(
        analysis=x0,
        final=problem.final_state(z),
        cost=opt.cost,
        history=opt.history,
        n_evals=opt.n_evals,
        n_iter=opt.n_iter,
        wall_time=opt.wall_time,
        converged=opt.converged,
        message=opt.message,
        cost_terms=problem.cost_terms(z),
        model_error=eta,
        z=z,
    )
    if params and problem.p:
        res.params = summarize(model, problem, opt, method=f"4dvar[{method}]", uncertainty=uncertainty)
    return res


@dataclass
class CycledResult:
    """Filter analyses of cycled 4D-Var at every observation time, and the analysed window starts."""

    times: torch.Tensor  # (K,) observation times
    analyses: (
        torch.Tensor
    )  # (K, *state) analysis at each observation time (from the window that assimilated it)
    window_starts: list = field(default_factory=list)  # (time, analysed initial state) per window
    n_evals: int = 0
    wall_time: float = 0.0
    iterations: list[int] = field(default_factory=list)


def cycled_fourdvar(
    model: object,
    obs: ObservationSet,
    xb: torch.Tensor,
    B: Covariance | torch.Tensor | float,
    *,
    lag: int = 1,
    shift: int | None = None,
    t0: float = 0.0,
    dt: float | None = None,
    method: str = "lbfgs",
    max_iter: int = 100,
    gtol: float = 1e-9,
    ftol: float = 1e-14,
    jacobian: str = "forward",
    progress: bool = False,
) -> CycledResult:
    """Cycled strong-constraint 4D-Var over all of ``obs`` (tensor states; see module docstring)."""
    shift = lag if shift is None else int(shift)
    if lag < 1 or not 1 <= shift <= lag:
        raise ConfigError(f"cycled 4D-Var needs lag >= 1 and 1 <= shift <= lag; got lag={lag}, shift={shift}")
    if not torch.is_tensor(xb):
        raise ConfigError("cycled_fourdvar needs a tensor state")
    _, dt_ = step_function(model, dt)
    K = obs.n_times
    steps = obs.step_indices(dt_, t0).tolist()
    analyses = [None] * K
    out = CycledResult(times=obs.times.clone(), analyses=torch.empty(0))
    t_start = time.perf_counter()

    def time_of(a: int) -> tuple[float, int]:  # (time, step) of window start index a (−1.. → t0)
        return (t0, 0) if a < 0 else (t0 + steps[a] * dt_, steps[a])

    x_bg, a_cur, prev_end = xb.detach(), -1, -1
    ends = list(range(shift - 1, K, shift))
    if not ends or ends[-1] != K - 1:
        ends.append(K - 1)
    bar = tqdm(ends, desc="cycled 4D-Var", leave=False) if (progress and tqdm is not None) else ends
    for e in bar:
        a = max(e - lag, -1)
        if a != a_cur:  # bring the background to this window's start
            (ta, sa), (_, sc) = time_of(a), time_of(a_cur)
            with torch.no_grad():
                x_bg = propagate(model, x_bg, sa - sc, t0=time_of(a_cur)[0], dt=dt_)
            a_cur = a
        first = prev_end + 1  # observations not assimilated by an earlier window
        prev_end = e
        sub = obs.select(range(first, e + 1))
        ta, _ = time_of(a)
        r = fourdvar(
            model,
            sub,
            x_bg,
            B,
            t0=ta,
            dt=dt_,
            method=method,
            max_iter=max_iter,
            gtol=gtol,
            ftol=ftol,
            jacobian=jacobian,
        )
        out.n_evals += r.n_evals
        out.iterations.append(r.n_iter)
        out.window_starts.append((ta, r.analysis))
        with torch.no_grad():
            _, states = predict(model, r.analysis, sub, t0=ta, dt=dt_, return_states=True)
        for j, i in enumerate(range(first, e + 1)):
            analyses[i] = states[j]
        x_bg = r.analysis
    out.analyses = torch.stack(analyses)
    out.wall_time = time.perf_counter() - t_start
    return out


def var3d(
    model: object,
    obs: ObservationSet,
    xb: torch.Tensor,
    B: Covariance | torch.Tensor | float,
    *,
    t0: float = 0.0,
    dt: float | None = None,
    method: str = "gauss-newton",
    max_iter: int = 10,
    jacobian: str = "forward",
    progress: bool = False,
) -> CycledResult:
    """Cycled 3D-Var with a static B: forecast to each observation time, then minimise
    ½‖v‖² + ½‖(H(x_f + S_B v) − y)/σ‖² there (one Gauss–Newton step is exact for a linear H)."""
    if not torch.is_tensor(xb):
        raise ConfigError("var3d needs a tensor state")
    _, dt_ = step_function(model, dt)
    steps = obs.step_indices(dt_, t0).tolist()
    t_start = time.perf_counter()
    x, k, out, n_evals, iters = xb.detach(), 0, [], 0, []
    rng = range(obs.n_times)
    bar = tqdm(rng, desc="3D-Var", leave=False) if (progress and tqdm is not None) else rng
    for i in bar:
        with torch.no_grad():
            x = propagate(model, x, steps[i] - k, t0=t0 + k * dt_, dt=dt_)
        k = steps[i]
        r = fourdvar(
            model,
            obs.select([i]),
            x,
            B,
            t0=t0 + k * dt_,
            dt=dt_,
            method=method,
            max_iter=max_iter,
            ftol=1e-10,
            jacobian=jacobian,
        )
        x = r.analysis
        out.append(x)
        n_evals += r.n_evals
        iters.append(r.n_iter)
    return CycledResult(
        times=obs.times.clone(),
        analyses=torch.stack(out),
        n_evals=n_evals,
        wall_time=time.perf_counter() - t_start,
        iterations=iters,
    )

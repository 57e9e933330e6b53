"""Minimisers for a cost of one flat control vector: L-BFGS, Adam, Gauss–Newton, Levenberg–Marquardt.

All record the cost after each iteration, the iterates, the number of cost evaluations (= forward model
runs; each gradient adds one backward run) and the wall time, and show a tqdm bar with the current cost.

L-BFGS treats a trial point of its line search whose cost or gradient is not finite, or whose model run raises
a numerical error (:class:`~pelagos.core.errors.SolverError`, :class:`~pelagos.core.errors.StabilityError`:
"this parameter value is unusable"), as a failed step: it backtracks from the last good point along the same
direction (step × 0.2, at most 10 times, Armijo decrease) and keeps only finite pairs in its curvature memory;
when every backtracked point fails too it stops there, keeping the last good point, with a message naming the
controls the failing step moved and the last finite cost.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..core._torch_quirks import load_jvp_decompositions
from ..core.errors import ConfigError, SolverError, StabilityError, check_choice

try:  # progress bars are optional at run time
    from tqdm.auto import tqdm
except ImportError:  # pragma: no cover
    tqdm = None


@dataclass
class OptimizeResult:
    z: torch.Tensor
    cost: float
    history: list[float] = field(default_factory=list)
    z_history: list[torch.Tensor] = field(default_factory=list)
    n_evals: int = 0
    n_iter: int = 0
    grad_norm: float = float("nan")
    converged: bool = False
    message: str = ""
    wall_time: float = 0.0
    damping: float = float("nan")  # Levenberg–Marquardt: the final λ


# Errors of a model run that mean "this control value is unusable" (not a mistake of the configuration).
NUMERICAL_ERRORS: tuple[type[Exception], ...] = (SolverError, StabilityError)
_BACKTRACK_SHRINK, _BACKTRACK_TRIES, _ARMIJO_C1 = 0.2, 10, 1e-4


class _TrialFailed(Exception):  # noqa: N818 - internal signal, never escapes minimize
    """A line-search trial point is unusable (non-finite cost/gradient or a numerical error of the model)."""

    def __init__(self, z: torch.Tensor, reason: str) -> None:
        super().__init__(reason)
        self.z, self.reason = z, reason


def _usable(f: _Counter, z: torch.Tensor) -> tuple[float, torch.Tensor]:
    """``f.value_and_grad(z)``; raises :class:`_TrialFailed` for a numerical error or a non-finite value."""
    try:
        J, g = f.value_and_grad(z)
    except NUMERICAL_ERRORS as err:
        raise _TrialFailed(z.detach().clone(), f"{type(err).__name__}: {err}") from err
    if not math.isfinite(J):
        raise _TrialFailed(z.detach().clone(), f"the cost is not finite (J = {J})")
    if not bool(torch.isfinite(g).all()):
        raise _TrialFailed(z.detach().clone(), "the gradient is not finite")
    return J, g


def _backtrack(
    f: _Counter, z_good: torch.Tensor, J_good: float, g_good: torch.Tensor, z_fail: torch.Tensor
) -> tuple[torch.Tensor | None, float, str]:
    """Shrink the failed step ``z_fail − z_good`` until a point is usable with an Armijo decrease.

    Returns ``(z_new, t, "")`` with ``z_new = z_good + t (z_fail − z_good)``, or ``(None, t_last, reason)``.
    """
    dz = z_fail - z_good
    slope = float(g_good.dot(dz))
    t, reason = 1.0, ""
    for _ in range(_BACKTRACK_TRIES):
        t *= _BACKTRACK_SHRINK
        zt = z_good + t * dz
        try:
            Jt, _ = _usable(f, zt)
        except _TrialFailed as fail:
            reason = fail.reason
            continue
        if Jt <= J_good + _ARMIJO_C1 * t * slope:
            return zt, t, ""
        reason = f"no sufficient decrease (J = {Jt:.6g} at step fraction {t:.1e})"
    return None, t, reason


def _lbfgs_snapshot(state: dict) -> dict:
    """The L-BFGS state before a ``step``, cheaply: torch's step appends to/pops from the history lists and
    overwrites ``prev_flat_grad`` in place, but replaces (never modifies) the history tensors and ``d``."""
    snap = dict(state)
    for k in ("old_dirs", "old_stps", "ro"):
        if k in snap:
            snap[k] = list(snap[k])
    if snap.get("prev_flat_grad") is not None:
        snap["prev_flat_grad"] = snap["prev_flat_grad"].clone()
    snap.pop("al", None)  # scratch buffer
    return snap


def _lbfgs_accept(
    opt: torch.optim.LBFGS,
    zp: torch.Tensor,
    snap: dict,
    J_good: float,
    g_good: torch.Tensor,
    dz: torch.Tensor,
    t: float,
    history_size: int,
) -> None:
    """Make torch's L-BFGS state as if its line search had returned the backtracked step ``t·dz``.

    ``snap`` is the state before the failed ``step``: redo torch's own bookkeeping of that step (the curvature
    pair of the previous step, from finite values only), then record ``dz``/``t`` and ``g_good`` so the next
    ``step`` adds the pair of the backtracked step.
    """
    st = snap
    n = int(st.get("n_iter", 0)) + 1
    if n == 1:
        old_dirs, old_stps, ro, H_diag = [], [], [], 1
    else:
        old_dirs, old_stps, ro, H_diag = st["old_dirs"], st["old_stps"], st["ro"], st["H_diag"]
        y = g_good.sub(st["prev_flat_grad"])
        s = st["d"].mul(st["t"])
        ys = y.dot(s)
        if ys > 1e-10:
            if len(old_dirs) == history_size:
                old_dirs.pop(0)
                old_stps.pop(0)
                ro.pop(0)
            old_dirs.append(y)
            old_stps.append(s)
            ro.append(1.0 / ys)
            H_diag = ys / y.dot(y)
    st.update(
        n_iter=n,
        d=dz.clone(),
        t=t,
        old_dirs=old_dirs,
        old_stps=old_stps,
        ro=ro,
        H_diag=H_diag,
        prev_flat_grad=g_good.clone(),
        prev_loss=J_good,
    )
    opt.state[zp] = st


def _failure_message(
    names: Sequence[str], z_good: torch.Tensor, z_fail: torch.Tensor, J_good: float, it: int, reason: str
) -> str:
    dz = (z_fail - z_good).abs()
    order = [int(i) for i in torch.argsort(dz, descending=True)[:3] if float(dz[i]) > 0]
    label = [names[i] if i < len(names) else f"z[{i}]" for i in order]
    moved = ", ".join(
        f"{lab} ({float(z_good[i]):.4g} -> {float(z_fail[i]):.4g})" for lab, i in zip(label, order)
    )
    return (
        f"L-BFGS stopped at iteration {it}: every trial step from the last good point failed "
        f"({_BACKTRACK_TRIES} backtracks, step x{_BACKTRACK_SHRINK} each; last: {reason}). "
        f"The failing step moved mostly {moved} (unconstrained values). Last finite cost J = {J_good:.6g}, "
        "kept as the result; bound the parameters (log/logit transforms), tighten their priors or start "
        "closer"
    )


class _Counter:
    """Cost + gradient with a one-entry cache (L-BFGS re-evaluates the point its line search accepted)."""

    def __init__(self, cost: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.cost, self.n = cost, 0
        self._z: torch.Tensor | None = None
        self._val: tuple[float, torch.Tensor] | None = None

    def value_and_grad(self, z: torch.Tensor) -> tuple[float, torch.Tensor]:
        if self._z is not None and torch.equal(self._z, z):
            return self._val
        zz = z.detach().clone().requires_grad_(True)
        self.n += 1  # a run that raises counts too
        with torch.enable_grad():
            J = self.cost(zz)
            if not torch.isfinite(J):
                g = torch.zeros_like(zz)
            else:
                (g,) = torch.autograd.grad(J, zz)
        self._z, self._val = z.detach().clone(), (float(J.detach()), g.detach())
        return self._val


def _levenberg_marquardt(
    residuals: Callable[[torch.Tensor], torch.Tensor],
    jacobian: Callable[[torch.Tensor], torch.Tensor],
    z0: torch.Tensor,
    *,
    max_iter: int,
    gtol: float,
    ftol: float,
    lambda0: float,
    keep_iterates: bool,
    bar: object,
    t_start: float,
) -> OptimizeResult:
    """Levenberg–Marquardt on J = ½‖r‖² with the Jacobian ``jacobian(z)`` (exact: forward mode by default).

    Each iteration solves ``(JᵀJ + λ diag(JᵀJ)) h = −Jᵀr`` (Marquardt's scaling: invariant to a rescaling of
    the controls) and runs the model once at ``z + h``; the gain ratio ρ = actual / predicted decrease
    accepts the step (ρ > 0; λ ← λ·max(1/3, 1 − (2ρ − 1)³)) or rejects it (λ ← λ·ν, ν ← 2ν; Nielsen 1999).
    A Jacobian is formed only at accepted points. A trial whose run raises a numerical error or gives a
    non-finite cost is a rejected step. ``n_evals`` counts model runs: trial runs plus Jacobian runs (one
    batched forward-mode pass each)."""

    def value(z: torch.Tensor) -> tuple[float, torch.Tensor | None]:
        try:
            with torch.no_grad():
                r = residuals(z).detach()
        except NUMERICAL_ERRORS:
            return math.inf, None
        F = 0.5 * float(r.pow(2).sum())
        return (F, r) if math.isfinite(F) else (math.inf, None)

    z = z0.detach().clone()
    n = 1
    F, r = value(z)
    if r is None:
        raise ConfigError(f"the cost is not finite at the first guess (J = {F}); check the initial values")
    res = OptimizeResult(z=z, cost=F, history=[F], z_history=[z.clone()] if keep_iterates else [])
    Jm = jacobian(z).detach()
    n += 1
    A, g = Jm.T @ Jm, Jm.T @ r
    gscale = max(1.0, float(g.norm()))
    lam, nu = float(lambda0), 2.0
    for it in range(max_iter):
        res.n_iter = it + 1
        if float(g.norm()) <= gtol * gscale:
            res.converged, res.message = True, "gradient norm below gtol"
            break
        D = A.diagonal().clamp(min=1e-12 * float(A.diagonal().max().clamp(min=1.0)))
        h = torch.linalg.solve(A + lam * torch.diag(D), -g)
        predicted = 0.5 * float(h.dot(lam * D * h - g))
        Ft, rt = value(z + h)
        n += 1
        rho = (F - Ft) / predicted if (rt is not None and predicted > 0) else -1.0
        if rho > 0:
            z, small = z + h, F - Ft <= ftol * max(1.0, abs(Ft))
            F, r = Ft, rt
            Jm = jacobian(z).detach()
            n += 1
            A, g = Jm.T @ Jm, Jm.T @ r
            lam *= max(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3)
            nu = 2.0
        else:
            small = False
            lam *= nu
            nu *= 2.0
        res.history.append(F)
        if keep_iterates:
            res.z_history.append(z.clone())
        if bar is not None:
            bar.update(1)
            bar.set_postfix(cost=f"{F:.6g}", lam=f"{lam:.1e}")
        if small:
            res.converged, res.message = True, "cost change below ftol"
            break
        if lam > 1e16:
            res.message = f"damping grew beyond 1e16 (λ = {lam:.1e}): no step decreases the cost"
            break
        if float(h.norm()) <= 1e-14 * (1.0 + float(z.norm())):
            res.converged, res.message = True, "step below tolerance"
            break
    res.z, res.cost, res.grad_norm, res.n_evals = z, F, float(g.norm()), n
    res.damping = lam
    if not res.message:
        res.message = "max_iter reached"
    res.wall_time = time.perf_counter() - t_start
    return res


def minimize(
    cost: Callable[[torch.Tensor], torch.Tensor],
    z0: torch.Tensor,
    *,
    method: str = "lbfgs",
    max_iter: int = 100,
    lr: float = 0.05,
    gtol: float = 1e-8,
    ftol: float = 1e-12,
    history_size: int = 20,
    residuals: Callable[[torch.Tensor], torch.Tensor] | None = None,
    jacobian: Callable[[torch.Tensor], torch.Tensor] | None = None,
    progress: bool = False,
    desc: str = "minimise",
    keep_iterates: bool = True,
    names: Sequence[str] | None = None,
    lm_lambda0: float = 1e-3,
) -> OptimizeResult:
    """Minimise ``cost(z)`` from ``z0``.

    ``gtol``: stop when ‖∇J‖ ≤ gtol·max(1, ‖∇J(z0)‖); ``ftol``: stop when the relative cost change of an
    iteration is below it. ``gauss-newton`` needs ``residuals(z)`` with J = ½‖r‖² (small controls only: it
    forms
    the Jacobian by forward mode, one tangent per control entry). ``names``: labels of the leading control
    entries (e.g. the free parameters) for the message of an L-BFGS stop on failed trial steps.
    ``levenberg-marquardt`` needs ``residuals(z)`` too and uses ``jacobian(z)`` (default: ``jacfwd`` of the
    residuals), never the adjoint: one model run per trial step and one Jacobian per accepted step; ``cost``
    is not called (J = ½‖r‖²); ``lm_lambda0``: the first damping λ (relative to diag(JᵀJ)). ``max_iter``
    counts its trial steps, accepted or not.
    """
    check_choice("optimizer", method, ["lbfgs", "adam", "gauss-newton", "levenberg-marquardt"])
    if max_iter < 0:
        raise ConfigError(f"max_iter must be >= 0; got {max_iter}")
    t_start = time.perf_counter()
    if method == "levenberg-marquardt":
        if residuals is None:
            raise ConfigError("method='levenberg-marquardt' needs the residual function (J = ½‖r‖²)")
        if not lm_lambda0 > 0:
            raise ConfigError(f"lm_lambda0 must be > 0; got {lm_lambda0}")
        if jacobian is None:
            load_jvp_decompositions()
            jacobian = torch.func.jacfwd(residuals)
        bar = tqdm(total=max_iter, desc=desc, leave=False) if (progress and tqdm is not None) else None
        try:
            return _levenberg_marquardt(
                residuals, jacobian, z0, max_iter=max_iter, gtol=gtol, ftol=ftol, lambda0=lm_lambda0,
                keep_iterates=keep_iterates, bar=bar, t_start=t_start,
            )  # fmt: skip
        finally:
            if bar is not None:
                bar.close()
    f = _Counter(cost)
    z = z0.detach().clone()
    J0, g0 = f.value_and_grad(z)
    if not torch.isfinite(torch.tensor(J0)):
        raise ConfigError(f"the cost is not finite at the first guess (J = {J0}); check the initial values")
    res = OptimizeResult(z=z, cost=J0, history=[J0], z_history=[z.clone()] if keep_iterates else [])
    gscale = max(1.0, float(g0.norm()))
    bar = tqdm(total=max_iter, desc=desc, leave=False) if (progress and tqdm is not None) else None

    def record(zn: torch.Tensor, Jn: float) -> None:
        res.history.append(Jn)
        if keep_iterates:
            res.z_history.append(zn.clone())
        if bar is not None:
            bar.update(1)
            bar.set_postfix(cost=f"{Jn:.6g}")

    if method == "lbfgs":
        zp = z.clone().requires_grad_(True)
        opt = torch.optim.LBFGS(
            [zp],
            lr=1.0,
            max_iter=1,
            max_eval=40,
            history_size=history_size,
            line_search_fn="strong_wolfe",
            tolerance_grad=0.0,
            tolerance_change=0.0,
        )

        def closure() -> torch.Tensor:
            J, g = _usable(f, zp.detach())
            zp.grad = g.clone()
            return torch.tensor(J, dtype=zp.dtype)

        J_old, restarted = J0, False
        for it in range(max_iter):
            z_good = zp.detach().clone()
            J_good, g_good = f.value_and_grad(z_good)  # cached: the point the last step ended on
            snap = _lbfgs_snapshot(opt.state[zp])
            try:
                opt.step(closure)
            except _TrialFailed as fail:  # backtrack from the last good point; never keep a failed pair
                z_new, t, reason = _backtrack(f, z_good, J_good, g_good, fail.z)
                with torch.no_grad():
                    zp.copy_(z_good if z_new is None else z_new)
                if z_new is None:
                    res.message = _failure_message(names or [], z_good, fail.z, J_good, it + 1, reason)
                    break
                _lbfgs_accept(opt, zp, snap, J_good, g_good, fail.z - z_good, t, history_size)
            Jn, gn = f.value_and_grad(zp.detach())
            record(zp.detach(), Jn)
            res.n_iter = it + 1
            if float(gn.norm()) <= gtol * gscale:
                res.converged, res.message = True, "gradient norm below gtol"
                break
            if abs(J_old - Jn) <= ftol * max(1.0, abs(Jn)):
                if not restarted:  # a stalled line search: drop the curvature memory once and retry
                    opt.state.clear()
                    restarted = True
                    continue
                res.converged, res.message = True, "cost change below ftol"
                break
            restarted = False
            J_old = Jn
        z = zp.detach()
    elif method == "adam":
        zp = z.clone().requires_grad_(True)
        opt = torch.optim.Adam([zp], lr=lr)
        best = (J0, z.clone())
        for it in range(max_iter):
            J, g = f.value_and_grad(zp.detach())
            if best[0] > J:
                best = (J, zp.detach().clone())
            zp.grad = g.clone()
            opt.step()
            record(zp.detach(), J)
            res.n_iter = it + 1
            if float(g.norm()) <= gtol * gscale:
                res.converged, res.message = True, "gradient norm below gtol"
                break
        Jn, _ = f.value_and_grad(zp.detach())
        z = zp.detach() if Jn <= best[0] else best[1]
    else:  # Gauss–Newton with backtracking
        if residuals is None:
            raise ConfigError("method='gauss-newton' needs the residual function (J = ½‖r‖²)")
        Jc = J0
        load_jvp_decompositions()  # forward-mode Jacobians below: without torch's own jit.script warnings
        for it in range(max_iter):
            # Exact gradient (reverse mode); the Jacobian only shapes the Gauss–Newton metric JᵀJ, so an
            # approximate ("bundle") Jacobian changes the path but not the optimum.
            _, g = f.value_and_grad(z)
            Jm = (jacobian(z) if jacobian is not None else torch.func.jacfwd(residuals)(z)).detach()
            f.n += 1
            H = Jm.T @ Jm
            H = H + 1e-12 * H.diagonal().abs().max().clamp(min=1.0) * torch.eye(H.shape[0], dtype=H.dtype)
            dz = -torch.linalg.solve(H, g)
            step = 1.0
            for _ in range(30):
                Jt, _ = f.value_and_grad(z + step * dz)
                if Jt <= Jc or step < 1e-6:
                    break
                step *= 0.5
            z = z + step * dz
            record(z, Jt)
            res.n_iter = it + 1
            done = abs(Jc - Jt) <= ftol * max(1.0, abs(Jt)) or float((step * dz).norm()) <= 1e-14 * (
                1.0 + float(z.norm())
            )
            Jc = Jt
            if done:
                res.converged, res.message = True, "step or cost change below tolerance"
                break
    if bar is not None:
        bar.close()
    J, g = f.value_and_grad(z)
    res.z, res.cost, res.grad_norm, res.n_evals = z, J, float(g.norm()), f.n
    if not res.message:
        res.message = "max_iter reached"
    res.wall_time = time.perf_counter() - t_start
    return res

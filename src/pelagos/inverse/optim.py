"""Minimisers for a cost of one flat control vector: L-BFGS, Adam, Gauss–Newton.

All three record the cost after each iteration, the iterates, the number of cost evaluations (= forward model
runs; each gradient adds one backward run) and the wall time, and show a tqdm bar with the current cost.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..core._torch_quirks import load_jvp_decompositions
from ..core.errors import ConfigError, check_choice

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
        with torch.enable_grad():
            J = self.cost(zz)
            if not torch.isfinite(J):
                g = torch.zeros_like(zz)
            else:
                (g,) = torch.autograd.grad(J, zz)
        self.n += 1
        self._z, self._val = z.detach().clone(), (float(J.detach()), g.detach())
        return self._val


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
) -> OptimizeResult:
    """Minimise ``cost(z)`` from ``z0``.

    ``gtol``: stop when ‖∇J‖ ≤ gtol·max(1, ‖∇J(z0)‖); ``ftol``: stop when the relative cost change of an
    iteration is below it. ``gauss-newton`` needs ``residuals(z)`` with J = ½‖r‖² (small controls only: it
    forms
    the Jacobian by forward mode, one tangent per control entry).
    """
    check_choice("optimizer", method, ["lbfgs", "adam", "gauss-newton"])
    if max_iter < 0:
        raise ConfigError(f"max_iter must be >= 0; got {max_iter}")
    t_start = time.perf_counter()
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
            J, g = f.value_and_grad(zp.detach())
            zp.grad = g.clone()
            return torch.tensor(J, dtype=zp.dtype)

        J_old, restarted = J0, False
        for it in range(max_iter):
            opt.step(closure)
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

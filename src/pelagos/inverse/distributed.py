"""Calibrate shared parameters over many stations/columns split across processes (``torch.distributed``).

Each process (rank) holds its own stations: an initial state and an ObservationSet. The cost is

    J(u) = Σ_ranks ½ Σ ((H(x) − y)/σ)²  +  Σ ½((u − μ)/s)²        (priors counted once)

and every evaluation all-reduces (sums) the local misfits and their gradients, so all ranks take identical
optimiser steps and end with the same estimates as one process holding all stations. The Laplace covariance
uses the all-reduced Hessian of the misfit plus the prior precision. Launch with ``torchrun``, backend gloo on
CPU; the model parameters are the only shared control (no initial-state control across ranks).

    torchrun --nproc_per_node=4 my_calibration.py      # each rank: distributed_calibrate(model, obs_r, x0_r)
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist

from ..core.errors import ConfigError
from ..core.observations import ObservationSet
from .calibrate import summarize
from .laplace import hessian
from .optim import minimize
from .problem import VariationalProblem
from .result import CalibrationResult


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


class _SummedCost(torch.autograd.Function):
    """Σ_ranks local(z) with gradient Σ_ranks ∇local(z): one all-reduce of [J, ∇J] per evaluation."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, local) -> torch.Tensor:
        with torch.enable_grad():
            zz = z.detach().requires_grad_(True)
            J = local(zz)
            (g,) = torch.autograd.grad(J, zz)
        both = _all_reduce(torch.cat([J.detach().reshape(1), g.detach()]))
        ctx.save_for_backward(both[1:])
        return both[0]

    @staticmethod
    def backward(ctx, gout: torch.Tensor):
        (g,) = ctx.saved_tensors
        return gout * g, None


def distributed_calibrate(
    model: object,
    obs: ObservationSet,
    state: object,
    *,
    free: Iterable[str] | str | None = None,
    t0: float = 0.0,
    dt: float | None = None,
    optimizer: str = "lbfgs",
    max_iter: int = 100,
    lr: float = 0.05,
    gtol: float = 1e-7,
    ftol: float = 1e-12,
    uncertainty: bool = True,
    checkpoint: int | None = None,
    write_back: bool = True,
) -> CalibrationResult:
    """:func:`pelagos.inverse.calibrate` with the stations of each rank (see module docstring).

    Works without an initialised process group too (then it equals ``calibrate`` on the local data).
    ``optimizer``: ``"lbfgs"`` or ``"adam"``.
    """
    if optimizer not in ("lbfgs", "adam"):
        raise ConfigError(f"distributed calibration supports optimizer 'lbfgs' or 'adam'; got {optimizer!r}")
    if free is not None:
        model.select_free(free)
    if not model.free_parameter_names():
        raise ConfigError("nothing to calibrate: no free parameters (pass free=[...])")
    local = VariationalProblem(model, obs, state, t0=t0, dt=dt, checkpoint=checkpoint, include_prior=False)
    full = VariationalProblem(model, obs, state, t0=t0, dt=dt, checkpoint=checkpoint)  # for the prior terms
    prior_idx = [i for i, _, _ in full._prior]
    prior_m = torch.tensor([m for _, m, _ in full._prior], dtype=local.dtype)
    prior_s = torch.tensor([s for _, _, s in full._prior], dtype=local.dtype)

    def prior(z: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((z[prior_idx] - prior_m) / prior_s).pow(2).sum() if prior_idx else z.sum() * 0

    def cost(z: torch.Tensor) -> torch.Tensor:
        return _SummedCost.apply(z, local.cost) + prior(z)

    # Every rank starts from the same point: take rank 0's values.
    z0 = local.z0.clone()
    if dist.is_available() and dist.is_initialized():
        dist.broadcast(z0, src=0)
    opt = minimize(
        cost, z0, method=optimizer, max_iter=max_iter, lr=lr, gtol=gtol, ftol=ftol, desc="calibrate"
    )
    C = None
    if uncertainty:
        H = _all_reduce(hessian(local.cost, opt.z))
        if prior_idx:
            H[prior_idx, prior_idx] += 1.0 / prior_s**2
        C = torch.linalg.inv(H)
    res = summarize(
        model, full, opt, method=f"distributed-calibrate[{optimizer}]", uncertainty=None, covariance=C
    )
    res.cost = opt.cost
    res.cost_terms = {"obs": float(opt.cost - prior(opt.z)), "prior": float(prior(opt.z))}
    if write_back:
        model.load_free_vector(opt.z.to(model.free_vector().dtype))
    return res

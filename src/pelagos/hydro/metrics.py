"""Streamflow skill scores and training losses (NaN-masked), for tensors shaped ``(n_days, n_basins)``.

Scores (per basin, over time; days where the observation is NaN are left out):

- :func:`nse` — Nash–Sutcliffe efficiency ``1 − Σ(Q̂−Q)² / Σ(Q−Q̄)²`` (1 perfect, 0 = the observed mean).
- :func:`kge` — Kling–Gupta efficiency ``1 − √((r−1)² + (α−1)² + (β−1)²)`` with ``r`` the correlation,
  ``α = σ̂/σ`` and ``β = μ̂/μ`` (Gupta et al. 2009).

Losses (scalars over a batch of basins × days, differentiable in the simulation):

- :func:`nse_star_loss` — Kratzert et al. (2019)'s NSE*: ``mean((Q̂−Q)² / (σ_b + ε)²)`` with ``σ_b`` the
  standard deviation of basin ``b``'s observed flow over the *training period* (:func:`basin_std`) and
  ``ε = 0.1`` mm/d, so that every basin weighs alike whatever its flow volume.
- :func:`rmse_comb_loss` — ``(1−α)·RMSE(Q) + α·RMSE(log10(√(Q+1e-6) + 0.1))``, α = 0.25 (the δHBV 1.0
  loss of Feng et al. 2022: the second term gives low flows weight).

All inputs are in the same unit (mm/d for discharge). Functions accept tensors or arrays; scores return a
tensor of shape ``(n_basins,)`` (NaN for a basin without two valid days or with constant observations).
"""

from __future__ import annotations

import numpy as np
import torch

from ..core.errors import ShapeError

__all__ = ["basin_std", "kge", "nse", "nse_star_loss", "rmse", "rmse_comb_loss"]


def _pair(sim, obs) -> tuple[torch.Tensor, torch.Tensor]:
    sim = torch.as_tensor(np.asarray(sim) if not torch.is_tensor(sim) else sim)
    obs = torch.as_tensor(np.asarray(obs) if not torch.is_tensor(obs) else obs)
    if sim.shape != obs.shape:
        raise ShapeError(
            f"simulated and observed discharge must have the same shape (n_days, n_basins); "
            f"got {tuple(sim.shape)} and {tuple(obs.shape)}"
        )
    dtype = torch.promote_types(sim.dtype, obs.dtype)
    if not dtype.is_floating_point:
        dtype = torch.get_default_dtype()
    return sim.to(dtype), obs.to(dtype)


def _masked(sim: torch.Tensor, obs: torch.Tensor):
    mask = ~torch.isnan(obs)
    n = mask.sum(0).to(obs.dtype)
    o = torch.where(mask, obs, torch.zeros_like(obs))
    s = torch.where(mask, sim, torch.zeros_like(sim))
    return s, o, mask, n


def nse(sim, obs) -> torch.Tensor:
    """Nash–Sutcliffe efficiency per basin (dimensionless) of ``sim`` vs ``obs``, both ``(n_days, n_basins)``."""
    sim, obs = _pair(sim, obs)
    s, o, mask, n = _masked(sim, obs)
    mean = o.sum(0) / n
    num = ((s - o) ** 2 * mask).sum(0)
    den = ((o - mean) ** 2 * mask).sum(0)
    out = 1.0 - num / den
    return torch.where((n >= 2) & (den > 0), out, torch.full_like(out, float("nan")))


def kge(sim, obs) -> torch.Tensor:
    """Kling–Gupta efficiency per basin (dimensionless), NaN-masked like :func:`nse`."""
    sim, obs = _pair(sim, obs)
    s, o, mask, n = _masked(sim, obs)
    mo = o.sum(0) / n
    ms = s.sum(0) / n
    do = (o - mo) * mask
    ds = (s - ms) * mask
    so = torch.sqrt((do**2).sum(0) / n)
    ss = torch.sqrt((ds**2).sum(0) / n)
    r = (do * ds).sum(0) / (n * so * ss)
    alpha = ss / so
    beta = ms / mo
    out = 1.0 - torch.sqrt((r - 1) ** 2 + (alpha - 1) ** 2 + (beta - 1) ** 2)
    return torch.where((n >= 2) & (so > 0), out, torch.full_like(out, float("nan")))


def rmse(sim, obs) -> torch.Tensor:
    """Root-mean-square error per basin (unit of the inputs), NaN-masked."""
    sim, obs = _pair(sim, obs)
    s, o, mask, n = _masked(sim, obs)
    return torch.sqrt(((s - o) ** 2 * mask).sum(0) / n)


def basin_std(obs) -> torch.Tensor:
    """Standard deviation (population, ddof 0) of each basin's observed flow over time, NaNs left out: the
    ``σ_b`` of :func:`nse_star_loss`; compute it on the training period only. Shape ``(n_basins,)``."""
    obs = torch.as_tensor(np.asarray(obs) if not torch.is_tensor(obs) else obs)
    mask = ~torch.isnan(obs)
    n = mask.sum(0).to(obs.dtype)
    o = torch.where(mask, obs, torch.zeros_like(obs))
    mean = o.sum(0) / n
    return torch.sqrt((((o - mean) * mask) ** 2).sum(0) / n)


def nse_star_loss(sim: torch.Tensor, obs: torch.Tensor, std: torch.Tensor, eps: float = 0.1,
                  count: torch.Tensor | float | None = None) -> torch.Tensor:  # fmt: skip
    """NSE* batch loss: ``Σ (Q̂−Q)²/(σ_b+ε)² / N`` over the valid (non-NaN) entries, ``N`` their number.

    ``sim``, ``obs``: ``(n_days, n_basins)`` (mm/d); ``std``: ``(n_basins,)`` (mm/d, :func:`basin_std` of the
    training period); ``eps``: mm/d. ``count``: the ``N`` to divide by (default: the valid entries of this
    batch); data-parallel training passes the count of the *global* batch so that the ranks' losses add up to
    the one-process loss.
    """
    if sim.shape != obs.shape or std.shape != sim.shape[-1:]:
        raise ShapeError(
            f"nse_star_loss: sim/obs must be (n_days, n_basins) and std (n_basins,); got "
            f"{tuple(sim.shape)}, {tuple(obs.shape)}, {tuple(std.shape)}"
        )
    mask = ~torch.isnan(obs)
    w = 1.0 / (std + eps) ** 2
    err = torch.where(mask, sim - torch.nan_to_num(obs), torch.zeros_like(sim))
    total = (err**2 * w).sum()
    n = mask.sum() if count is None else count
    return total / n


def rmse_comb_loss(sim: torch.Tensor, obs: torch.Tensor, alpha: float = 0.25) -> torch.Tensor:
    """``(1−α)·RMSE(Q) + α·RMSE(log10(√(Q+1e-6)+0.1))`` over the valid entries (mm/d; Q̂ clamped at 0 in the
    log term). Both RMSEs pool all basins and days of the batch, as in Feng et al. (2022)."""
    mask = ~torch.isnan(obs)
    o = torch.nan_to_num(obs)
    n = mask.sum()

    def _t(q):
        return torch.log10(torch.sqrt(torch.clamp(q, min=0.0) + 1e-6) + 0.1)

    e1 = torch.where(mask, sim - o, torch.zeros_like(sim))
    e2 = torch.where(mask, _t(sim) - _t(o), torch.zeros_like(sim))
    return (1 - alpha) * torch.sqrt((e1**2).sum() / n) + alpha * torch.sqrt((e2**2).sum() / n)

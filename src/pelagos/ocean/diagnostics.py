"""Diagnostics of the ocean state: kinetic energy, meridional overturning (the BSF and the channel transport
are in :mod:`pelagos.ocean.streamfunction`)."""

from __future__ import annotations

import torch

from .grid import Grid
from .momentum import kinetic_energy


def kinetic_energy_mean(g: Grid, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Volume-mean kinetic energy per unit mass ``½⟨u² + v²⟩`` (m² s⁻²), shape ``(...)``."""
    vol = (g.area_t * g.dz3 * g.mask_t).sum()
    return kinetic_energy(g, u, v) / vol


def overturning(g: Grid, v: torch.Tensor) -> torch.Tensor:
    """Meridional overturning streamfunction (Sv) at the bottom of each level and each v latitude,
    ``(..., nz, ny)``: the northward transport above that depth, ``Σ_{k'≤k} Σ_i v Δx Δz``."""
    vt = (v * g.mask_v * g.dxv * g.dz3).sum(-1)
    return torch.cumsum(vt, -2) / 1e6

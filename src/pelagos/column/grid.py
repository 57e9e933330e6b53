"""Vertical grid of a water column in GOTM's layout (index 0 = bottom layer, index nz-1 = surface layer).

Layer thicknesses ``h`` (m) have shape ``(..., nz)``; leading dims are batch dims (columns), and each column
may have its own thicknesses. Interfaces are numbered 0..nz: interface ``k`` lies below layer ``k`` and above
layer ``k-1`` (interface 0 = sea bed, interface nz = sea surface).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch._C._functorch import is_functorch_wrapped_tensor

from ..core.errors import ConfigError, ShapeError, check_finite

__all__ = ["ColumnGrid", "check_thickness", "gotm_sigma_fractions"]


def check_thickness(h: torch.Tensor, name: str = "h") -> None:
    """Raise a clear error unless ``h`` is a finite, strictly positive tensor with at least one layer."""
    if not torch.is_tensor(h) or h.dim() < 1 or h.shape[-1] < 1:
        shape = tuple(h.shape) if torch.is_tensor(h) else type(h).__name__
        raise ShapeError(
            f"{name} (layer thickness) must be a tensor of shape (..., nz) with nz >= 1; got {shape}."
        )
    if is_functorch_wrapped_tensor(h):  # inside vmap/jvp/grad: values are abstract, skip value checks
        return
    check_finite(name, h)
    if bool((h <= 0).any()):
        raise ConfigError(
            f"{name} (layer thickness, m) must be > 0 everywhere; got minimum {float(h.min()):g} "
            f"(shape {tuple(h.shape)}). Remove empty layers or pass thicknesses in metres, bottom first."
        )


def gotm_sigma_fractions(nz: int, ddu: float = 0.0, ddl: float = 0.0) -> list[float]:
    """GOTM's dimensionless interface positions ``ga[0..nz]`` (0 = bottom, 1 = surface), computed in float64.

    Equidistant when ``ddu <= 0`` and ``ddl <= 0`` (accumulated as GOTM does, ``ga_i = ga_{i-1} + 1/nz``),
    otherwise the tanh zooming of Garapon used by GOTM's ``updategrid``:
    ``ga_i = [tanh((ddl+ddu) i/nz - ddl) + tanh(ddl)] / [tanh(ddl) + tanh(ddu)]``
    (``ddu > 0`` refines near the surface, ``ddl > 0`` near the bottom).
    """
    if nz < 1:
        raise ConfigError(f"nz (number of layers) must be >= 1; got {nz}.")
    if ddu < 0 or ddl < 0:
        raise ConfigError(f"zooming factors must be >= 0; got ddu={ddu}, ddl={ddl}.")
    ga = [0.0]
    if ddu <= 0 and ddl <= 0:
        for _ in range(nz):
            ga.append(ga[-1] + 1.0 / nz)
    else:
        den = math.tanh(ddl) + math.tanh(ddu)
        for i in range(1, nz + 1):
            ga.append((math.tanh((ddl + ddu) * i / nz - ddl) + math.tanh(ddl)) / den)
    return ga


@dataclass(frozen=True)
class ColumnGrid:
    """Layer geometry of one or many water columns.

    Attributes:
        h: layer thickness (m), shape ``(..., nz)``, bottom layer first.
    """

    h: torch.Tensor

    def __post_init__(self) -> None:
        check_thickness(self.h)

    # ----------------------------------------------------------------------------------------- constructors
    @classmethod
    def uniform(
        cls,
        depth: float | torch.Tensor,
        nz: int,
        *,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> ColumnGrid:
        """Equidistant grid as GOTM builds it (``ddu = ddl = 0``); ``depth`` (m) may be a tensor (B,)."""
        return cls.zoomed(depth, nz, ddu=0.0, ddl=0.0, dtype=dtype, device=device)

    @classmethod
    def zoomed(
        cls,
        depth: float | torch.Tensor,
        nz: int,
        *,
        ddu: float = 0.0,
        ddl: float = 0.0,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> ColumnGrid:
        """GOTM sigma grid with zooming towards the surface (``ddu``) and/or bottom (``ddl``).

        ``h_i = (ga_i - ga_{i-1}) * depth`` with ``ga`` from :func:`gotm_sigma_fractions`.
        ``depth`` (m, > 0) is a float or a tensor of shape (...,) giving one column per entry.
        """
        ga = torch.tensor(gotm_sigma_fractions(nz, ddu, ddl), dtype=torch.float64, device=device)
        frac = (ga[1:] - ga[:-1]).to(dtype)
        depth_t = torch.as_tensor(depth, dtype=dtype, device=device)
        if bool((depth_t <= 0).any()):
            raise ConfigError(f"depth must be > 0 m; got {depth_t.min().item():g}.")
        return cls(frac * depth_t[..., None])

    # ----------------------------------------------------------------------------------------- geometry
    @property
    def nz(self) -> int:
        """Number of layers."""
        return self.h.shape[-1]

    @property
    def depth(self) -> torch.Tensor:
        """Total water depth (m), shape (...,)."""
        return self.h.sum(-1)

    @property
    def zi(self) -> torch.Tensor:
        """Interface heights relative to the surface (m, negative below it), shape (..., nz+1).

        Built upward from the bed as GOTM does: ``zi_0 = -depth``, ``zi_k = zi_{k-1} + h_k``
        (so ``zi_nz`` is 0 up to round-off).
        """
        zi0 = -self.depth[..., None]
        return torch.cat([zi0, zi0 + torch.cumsum(self.h, -1)], dim=-1)

    @property
    def zc(self) -> torch.Tensor:
        """Centre heights relative to the surface (m, negative), GOTM mean-flow z: ``zi_{k-1} + h_k/2``."""
        zi = self.zi
        return zi[..., :-1] + 0.5 * self.h

    @property
    def z(self) -> torch.Tensor:
        """Centre depth below the surface (m, positive down), GOTM-FABM light convention.

        ``z_N = h_N/2`` and ``z_i = z_{i+1} + (h_i + h_{i+1})/2`` going down (1-based as in GOTM).
        """
        return centre_depth(self.h)

    @property
    def face_distance(self) -> torch.Tensor:
        """Distance between neighbouring centres at the interior interfaces 1..nz-1 (m), shape (..., nz-1)."""
        return 0.5 * (self.h[..., :-1] + self.h[..., 1:])

    def depth_integral(self, c: torch.Tensor) -> torch.Tensor:
        """Column integral ``sum_k h_k c_k`` (units of c times m), over the last dim; broadcasts."""
        return (self.h * c).sum(-1)

    def __repr__(self) -> str:  # short: the tensor itself can be large
        return f"ColumnGrid(nz={self.nz}, batch={tuple(self.h.shape[:-1])}, dtype={self.h.dtype})"


def centre_depth(h: torch.Tensor) -> torch.Tensor:
    """Depth of layer centres below the surface (m, positive), accumulated from the surface as GOTM does."""
    top = 0.5 * h[..., -1:]
    steps = 0.5 * (h[..., :-1] + h[..., 1:])  # distance centre i -> i+1 (0-based, bottom first)
    seq = torch.cat([top, steps.flip(-1)], dim=-1)  # surface first
    return torch.cumsum(seq, -1).flip(-1)

"""Doubly periodic grid and its real-FFT wavenumbers, in pyqg's conventions.

Grid points sit at cell centres ``x_i = (i + ½) L/nx``, ``y_j = (j + ½) W/ny``.
Fields are stored ``(..., ny, nx)``;
their real 2-D FFTs (``torch.fft.rfft2``, unnormalised forward, 1/M inverse — the same as FFTW/numpy) are
``(..., nl, nk)`` with ``nl = ny`` and ``nk = nx//2 + 1``. Wavenumbers in rad m⁻¹:
``k = (2π/L)·[0 … nx/2]`` and ``l = (2π/W)·[0 … ny/2−1, −ny/2 … −1]``.
"""

from __future__ import annotations

import math

import torch

from ..core.errors import ConfigError


class SpectralGrid:
    """Physical and spectral coordinates of an ``ny × nx`` doubly periodic domain ``W × L`` (m).

    All coordinate tensors are float64 (converted where they are used), so geometry never loses precision.
    """

    def __init__(
        self,
        nx: int,
        ny: int | None = None,
        L: float = 1e6,
        W: float | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        ny = nx if ny is None else ny
        W = L if W is None else W
        for name, n in (("nx", nx), ("ny", ny)):
            if not isinstance(n, int) or n < 4 or n % 2:
                raise ConfigError(
                    f"{name} = {n!r}: the spectral grid needs an even integer >= 4; choose e.g. 64"
                )
        for name, v in (("L", L), ("W", W)):
            if not (float(v) > 0 and math.isfinite(float(v))):
                raise ConfigError(f"{name} = {v!r} m: the domain size must be a finite positive length")
        self.nx, self.ny, self.L, self.W = int(nx), int(ny), float(L), float(W)
        self.nk, self.nl = nx // 2 + 1, ny
        self.dx, self.dy = self.L / nx, self.W / ny
        self.M = nx * ny
        f64 = dict(dtype=torch.float64, device=device)
        self.x = ((torch.arange(nx, **f64) + 0.5) * self.dx).expand(ny, nx)
        self.y = ((torch.arange(ny, **f64) + 0.5) * self.dy)[:, None].expand(ny, nx)
        self.kk = 2 * math.pi / self.L * torch.arange(self.nk, **f64)
        half = torch.arange(ny // 2, **f64)
        self.ll = 2 * math.pi / self.W * torch.cat([half, half - ny // 2])
        self.k = self.kk.expand(self.nl, self.nk)
        self.l = self.ll[:, None].expand(self.nl, self.nk)
        self.wv2 = self.k**2 + self.l**2
        self.wv = self.wv2.sqrt()
        self.wv2i = torch.where(self.wv2 == 0, 0.0, 1.0 / torch.where(self.wv2 == 0, 1.0, self.wv2))

    @property
    def device(self) -> torch.device:
        return self.kk.device

    def exp_filter(self, filterfac: torch.Tensor | float, cphi: float = 0.65 * math.pi) -> torch.Tensor:
        """Arbic & Flierl (2003) exponential filter ``exp(−filterfac (κ* − cφ)⁴)`` for κ* > cφ, 1 below.

        κ* = sqrt((k dx)² + (l dy)²) is the non-dimensional wavenumber; ``filterfac`` may be a tensor (with
        gradient, any leading batch shape).
        """
        wvx = ((self.k * self.dx) ** 2 + (self.l * self.dy) ** 2).sqrt()
        ff = torch.as_tensor(filterfac, dtype=torch.float64, device=self.device)
        ff = ff.reshape(*ff.shape, 1, 1)
        above = wvx > cphi
        d4 = torch.where(above, wvx - cphi, 0.0) ** 4
        return torch.where(above, torch.exp(-ff * d4), torch.ones_like(ff * d4))

    def ispec_bins(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Isotropic wavenumber bin centres ``kr`` (rad m⁻¹) and edges as in pyqg's ``calc_ispec``."""
        kmax = min(float(self.kk.max()), float(self.ll.abs().max()))
        dkr = math.sqrt((2 * math.pi / self.L) ** 2 + (2 * math.pi / self.W) ** 2)
        n = int(kmax / dkr)
        edges = dkr * torch.arange(n + 1, dtype=torch.float64, device=self.device) + dkr / 2
        centres = 0.5 * (edges[1:] + edges[:-1])
        return centres, edges

"""Coarse-graining operators and subgrid forcing: (low-res state, subgrid forcing) training pairs.

Three filters ``q̄ = C(q)`` from a high-resolution model (NX × NY) to a low-resolution one (nx × ny, same
domain; the ratio must be an integer), following Ross et al. (2023, pyqg parameterization benchmarks):

The spectral filters also shift the samples by half a fine cell so that, like the block mean, they land
on the low-res model's cell centres (Ross et al. leave this half-cell offset in place).

- ``"spectral"`` (their Operator 1): keep the low-res wavenumbers and multiply by the low-res model's own
  exponential filter (so C(q) is a state the low-res model could hold);
- ``"gaussian"`` (Operator 2): keep the low-res wavenumbers, multiply by exp(−κ² (2Δ)²/24), Δ the low-res dx;
- ``"block"``: grid-space mean over ratio × ratio blocks.

The subgrid PV forcing is ``S_q = C(−J(ψ, q)) − (−J(ψ̄, q̄))`` with J the flux-form advection by the anomaly
velocities (the background terms are linear and commute with the spectral filters), so that
``∂t q̄ = (low-res tendency of q̄) + S_q``. Everything is differentiable.
"""

from __future__ import annotations

import math

import torch

from ..core.errors import ConfigError
from .base import QGState, SpectralQG

KINDS = ("spectral", "gaussian", "block")


class Coarsener:
    """Map fields of ``hires`` onto the grid of ``lores`` with the filter ``kind`` (see module docstring)."""

    def __init__(self, hires: SpectralQG, lores: SpectralQG, kind: str = "spectral") -> None:
        if kind not in KINDS:
            raise ConfigError(f"unknown coarse-graining kind {kind!r}; valid: {', '.join(map(repr, KINDS))}")
        if (hires.grid.L, hires.grid.W) != (lores.grid.L, lores.grid.W) or hires.nz != lores.nz:
            raise ConfigError(
                "hires and lores models must share the domain (L, W) and the number of layers nz"
            )
        rx, ry = hires.nx / lores.nx, hires.ny / lores.ny
        if rx != ry or rx != int(rx) or rx < 1:
            raise ConfigError(
                f"resolution ratio nx {hires.nx}/{lores.nx}, ny {hires.ny}/{lores.ny} must be one integer"
            )
        self.hires, self.lores, self.kind, self.ratio = hires, lores, kind, int(rx)

    # -- spectral pieces -----------------------------------------------------------------------------------
    def _truncate(self, xh: torch.Tensor) -> torch.Tensor:
        """Keep the low-res rFFT coefficients of a high-res spectrum, rescaled for the smaller grid size."""
        ny, nk = self.lores.ny, self.lores.grid.nk
        top, bottom = xh[..., : ny // 2, :nk], xh[..., xh.shape[-2] - ny // 2 :, :nk]
        return torch.cat([top, bottom], dim=-2) * (self.lores.grid.M / self.hires.grid.M) * self._shift()

    def _shift(self) -> torch.Tensor:
        """Phase factor moving samples from the high-res cell-centre offset ½dx_h to the low-res one ½dx_l."""
        g, h = self.lores.grid, self.hires.grid
        dx, dy = 0.5 * (g.dx - h.dx), 0.5 * (g.dy - h.dy)
        return torch.exp(1j * (g.k * dx + g.l * dy)).to(self.lores.cdtype)

    def _spectral_filter(self) -> torch.Tensor:
        g = self.lores.grid
        if self.kind == "spectral":
            return self.lores.coefficients()["filtr"]
        return torch.exp(-g.wv2 * (2 * g.dx) ** 2 / 24).to(self.lores.dtype)

    def coarsen_h(self, xh: torch.Tensor) -> torch.Tensor:
        """Coarse-grain a high-res spectrum (…, NY, NK) to a low-res spectrum (…, ny, nk)."""
        if self.kind == "block":
            return self.lores.fft(self(self.hires.ifft(xh)))
        return self._spectral_filter() * self._truncate(xh)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Coarse-grain a high-res grid field (…, NY, NX) to (…, ny, nx)."""
        if self.kind == "block":
            r = self.ratio
            *lead, NY, NX = x.shape
            return x.reshape(*lead, NY // r, r, NX // r, r).mean(dim=(-3, -1))
        return self.lores.ifft(self.coarsen_h(self.hires.fft(x)))

    # -- training pairs ------------------------------------------------------------------------------------
    def subgrid_forcing(self, state_hr: QGState) -> tuple[torch.Tensor, torch.Tensor]:
        """``(q̄, S_q)`` on the low-res grid, both (B, nz, ny, nx); S_q in s⁻²."""
        hi, lo = self.hires, self.lores
        f_hr = hi.flow(state_hr)
        c_hr = hi.coefficients()
        J_hr = c_hr["ik"] * hi.fft(f_hr.u * f_hr.q) + c_hr["il"] * hi.fft(f_hr.v * f_hr.q)
        q_lr = self(state_hr["q"])
        f_lr = lo.flow(lo.state_from_q(q_lr))
        c_lr = lo.coefficients()
        J_lr = c_lr["ik"] * lo.fft(f_lr.u * f_lr.q) + c_lr["il"] * lo.fft(f_lr.v * f_lr.q)
        Sq = -self(hi.ifft(J_hr)) + lo.ifft(J_lr)
        return q_lr, Sq

    def coarse_state(self, state_hr: QGState) -> QGState:
        """A fresh low-res state (bootstrap level 0) from the coarse-grained high-res PV."""
        return self.lores.state_from_q(self(state_hr["q"]))


def lowres_like(hires: SpectralQG, nx: int, **overrides) -> SpectralQG:
    """A model of the same class and physical parameters as ``hires`` on an ``nx × nx`` grid."""
    kw = {r["name"]: r["value"] for r in hires.parameters_table(as_rows=True) if "." not in r["name"]}
    if hires.__class__.__name__ == "BTModel":
        kd2 = kw.pop("kd2")
        kw["rd"] = 0.0 if kd2 == 0 else 1 / math.sqrt(kd2)
    if hires.__class__.__name__ == "LayeredModel":
        nz = hires.nz
        kw = {
            "nz": nz,
            "beta": kw["beta"],
            "f": kw["f"],
            "rek": kw["rek"],
            "filterfac": kw["filterfac"],
            "H": [kw[f"H_{i}"] for i in range(nz)],
            "rho": [kw[f"rho_{i}"] for i in range(nz)],
            "U": [kw[f"U_{i}"] for i in range(nz)],
            "g": hires.g,
        }
    kw.update(dict(nx=nx, L=hires.L, W=hires.W, dt=hires.dt, dtype=hires.dtype, device=hires.device))
    kw.update(overrides)
    return type(hires)(**kw)

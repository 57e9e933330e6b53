"""Rigid lid: the barotropic (depth-integrated) flow is kept non-divergent; barotropic streamfunction.

**The solve.** After the explicit and implicit momentum updates the tentative velocities ``u*, v*`` have a
depth-integrated transport ``(U, V)`` whose divergence ``D`` is not zero. A surface-pressure correction
``u = u* − ∂x φ, v = v* − ∂y φ`` (the same at every level; ``φ = Δt p_s/ρ₀``, m² s⁻¹) removes it:

    A φ = −D,   A φ = −[δx(h_u Δy/Δx δx φ) + δy(h_v Δx/Δy δy φ)],

a symmetric positive semi-definite five-point operator on the wet surface cells (its null space: constant
φ). It is solved by :func:`pelagos.core.solve_cg` (Jacobi preconditioner; gradients by implicit
differentiation: one adjoint CG solve, no graph of the iterations) with the constant mode pinned by a
rank-one term ``+ s a (aᵀφ)``, which leaves the solution of the consistent singular system unchanged and
makes the operator definite.

This is the rigid-lid condition that Veros imposes through the streamfunction ψ with *island integrals*:
in a multiply connected domain (the re-entrant channel: the southern coast and the northern continent are
two separate boundaries) ψ is constant on each coast and the constant of the second coast, which is the
transport through the channel, is fixed by requiring the pressure to be single-valued around it. Solving for
the (single-valued by construction) surface pressure enforces exactly that condition without a separate
island equation; the channel transport then follows from the dynamics (wind, bottom friction, viscosity),
not from a constraint we impose.

**The streamfunction** is diagnosed from the corrected depth-integrated transport: ``u = −∂y ψ`` with
``ψ = 0`` on the southern boundary, so ``ψ = −∫ U dy`` at the north-east corners of the T cells (Sv).
"""

from __future__ import annotations

import torch

from ..core import solve_cg
from .grid import Grid


def barotropic_transports(g: Grid, u: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Depth-integrated volume transports through east faces ``U`` and north faces ``V`` (m³ s⁻¹),
    ``(..., ny, nx)``."""
    U = (u * g.mask_u * g.dz3).sum(-3) * g.dy
    V = (v * g.mask_v * g.dz3).sum(-3) * g.dxv
    return U, V


class SurfacePressureSolver:
    """Projection of ``(u, v)`` onto depth-integrated non-divergent flow (see module doc).

    Args:
        g: the grid.
        rtol: relative tolerance of the CG solves (forward and adjoint).
        method: ``"cg"`` (:func:`pelagos.core.solve_cg`, implicit-differentiation backward), ``"direct"`` (the
            operator depends on the grid only, so its inverse on the wet cells is formed once and each solve
            is one matrix product: exact, and differentiated as a matrix product), or ``"auto"`` (direct up
            to ``direct_max`` wet cells, CG above).
    """

    def __init__(self, g: Grid, rtol: float = 1e-12, method: str = "auto", direct_max: int = 4000) -> None:
        if method not in ("auto", "cg", "direct"):
            raise ValueError(f"surface-pressure solver method {method!r}: use 'auto', 'cg' or 'direct'")
        self.g = g
        self.rtol = rtol
        wet = g.mask_t[0]
        self.wet = wet
        self.cx = g.h_u * g.dy / g.dxt  # m (coupling through east faces)
        self.cy = g.h_v * g.dxv / g.dy  # m (north faces)
        diag = self.cx + g.west(self.cx) + self.cy + g.south(self.cy)
        n = wet.sum()
        self.pin = float(diag.sum() / n) / float(n)  # s·a aᵀ with a = wet, scaled like one diagonal entry
        self.diag = diag + (1 - wet) + self.pin * wet
        self.iterations = 0
        n_wet = int(wet.sum())
        self.method = method if method != "auto" else ("direct" if n_wet <= direct_max else "cg")
        if self.method == "direct":
            idx = torch.nonzero(wet.reshape(-1) > 0).reshape(-1)
            basis = torch.zeros(n_wet, g.ny * g.nx, dtype=wet.dtype, device=wet.device)
            basis[torch.arange(n_wet), idx] = 1.0
            cols = self.operator(basis.reshape(n_wet, g.ny, g.nx)).reshape(n_wet, -1)[:, idx]
            A = 0.5 * (cols + cols.T)
            self.idx = idx
            self.inverse = torch.cholesky_inverse(torch.linalg.cholesky(A))  # (n_wet, n_wet), SPD

    def operator(self, phi: torch.Tensor) -> torch.Tensor:
        g = self.g
        fx = self.cx * (g.east(phi) - phi)
        fy = self.cy * (g.north(phi) - phi)
        a = -((fx - g.west(fx)) + (fy - g.south(fy)))
        mean = (phi * self.wet).sum((-2, -1), keepdim=True)
        return a + (1 - self.wet) * phi + self.pin * self.wet * mean

    def divergence(self, U: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
        """``δx U + δy V`` at T points (m³ s⁻¹)."""
        g = self.g
        return (U - g.west(U) + V - g.south(V)) * self.wet

    def solve(self, D: torch.Tensor) -> torch.Tensor:
        """``φ`` with ``A φ = −D`` (m² s⁻¹), ``D`` of shape ``(..., ny, nx)``."""
        b = -D * self.wet
        b = b - self.wet * (b.sum((-2, -1), keepdim=True) / self.wet.sum())  # consistent right-hand side
        if self.method == "direct":
            flat = b.reshape(*b.shape[:-2], -1)
            x = flat[..., self.idx] @ self.inverse.to(b)
            out = _scatter(flat, self.idx, x)
            return out.reshape(b.shape)
        diag = self.diag
        phi, info = solve_cg(
            self.operator,
            b,
            M=lambda r: r / diag,
            rtol=self.rtol,
            atol=1e-30,
            batch_dims=b.ndim - 2,
            max_iter=20 * (self.g.nx * self.g.ny) + 100,
            return_info=True,
        )
        self.iterations = info.iterations
        return phi

    def project(self, u: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(u, v, φ)`` with the depth-integrated divergence of ``(u, v)`` removed."""
        g = self.g
        U, V = barotropic_transports(g, u, v)
        phi = self.solve(self.divergence(U, V))
        phi3 = phi.unsqueeze(-3)
        u = u - (g.east(phi3) - phi3) / g.dxt * g.mask_u
        v = v - (g.north(phi3) - phi3) / g.dy * g.mask_v
        return u, v, phi


def _scatter(template: torch.Tensor, idx: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``template``-shaped zeros with ``x`` at positions ``idx`` of the last dim (differentiable)."""
    out = torch.zeros(*x.shape[:-1], template.shape[-1], dtype=x.dtype, device=x.device)
    return out.index_add(-1, idx, x)


def streamfunction(g: Grid, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Barotropic streamfunction ψ (Sv) at the north-east corners of the T cells, ``(..., ny, nx)``:
    ``u = −∂y ψ``, ``ψ = 0`` on the southern boundary (so ψ on the northern continent is minus the channel
    transport)."""
    U, _ = barotropic_transports(g, u, v)
    return -torch.cumsum(U, -2) / 1e6


def channel_transport(g: Grid, u: torch.Tensor) -> torch.Tensor:
    """Zonal transport through a full meridional section (Sv), averaged over the sections ``i`` (for a
    non-divergent depth-integrated flow every section carries the same transport), shape ``(...)``."""
    U = (u * g.mask_u * g.dz3).sum(-3) * g.dy
    return U.sum(-2).mean(-1) / 1e6

"""Background-error covariance of a stacked column state ``(..., V, nz)`` with vertical correlations.

``B = blockdiag_v( D_v C D_v )``: for each variable ``v`` a std per layer ``D_v = diag(σ_v,k)`` and one
vertical correlation ``C_ij = exp(−½ (z_i − z_j)² / L²)`` (Gaussian, ``L`` in m) shared by the variables;
no cross-variable correlation. It is applied through its square root ``S v = σ ⊙ (v Lᶜᵀ)`` with ``Lᶜ`` the
Cholesky factor of ``C`` — the control-variable transform of 4D-Var (``x0 = x_b + S v``), so B is never
inverted. ``n`` is ``nz`` (it acts on the last dim), as the inverse methods expect of tensor states.
"""

from __future__ import annotations

import torch

from ..core.covariance import Covariance, correlation_matrix
from ..core.errors import ConfigError, ShapeError

__all__ = ["ColumnBackground"]


class ColumnBackground(Covariance):
    """Per-variable, per-layer stds ``std (V, nz)`` with a Gaussian vertical correlation of length ``L`` (m).

    ``z``: layer-centre depths (m), ``(nz,)``. ``jitter``: relative diagonal loading of C (keeps the
    Cholesky factor of the Gaussian kernel finite).
    """

    def __init__(
        self, std: torch.Tensor, z: torch.Tensor, length_scale: float, *, jitter: float = 1e-8
    ) -> None:
        std = torch.as_tensor(std, dtype=torch.float64)
        z = torch.as_tensor(z, dtype=torch.float64).flatten()
        if std.ndim != 2 or std.shape[-1] != z.numel():
            raise ShapeError(f"std must have shape (V, nz={z.numel()}); got {tuple(std.shape)}")
        if not bool((std > 0).all()):
            raise ConfigError(f"background std must be > 0 everywhere; got min {float(std.min()):g}")
        C = correlation_matrix(z, length_scale) + jitter * torch.eye(z.numel(), dtype=torch.float64)
        self.Lc = torch.linalg.cholesky(C)
        self.std, self.n, self.V = std, z.numel(), std.shape[0]

    def sqrt_apply(self, v: torch.Tensor) -> torch.Tensor:
        if v.shape[-2:] != (self.V, self.n):
            raise ShapeError(f"increment has shape {tuple(v.shape)}; expected (..., V={self.V}, nz={self.n})")
        return self.std.to(v) * (v @ self.Lc.to(v).T)

    def matrix(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """The full ``(V·nz, V·nz)`` block-diagonal matrix (variables outer, layers inner)."""
        blocks = [(s[:, None] * (self.Lc @ self.Lc.T) * s[None, :]).to(dtype) for s in self.std]
        return torch.block_diag(*blocks)

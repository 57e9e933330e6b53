"""Background-error covariances B, used through a square root S (S Sᵀ = B).

The control-variable transform ``x0 = x_b + S v`` turns the background term ½‖x0 − x_b‖²_{B⁻¹} into ½‖v‖²:
B is never inverted and the Hessian of the cost in v is I + (low rank), which L-BFGS handles well.
Every class acts on the last dimension (n,) of its argument; leading dims broadcast.
"""

from __future__ import annotations

import math

import torch

from .errors import ConfigError, ShapeError, check_choice


class Covariance:
    """Interface: ``sqrt_apply(v) = S v``, ``matrix()``, ``n``."""

    n: int

    def sqrt_apply(self, v: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def matrix(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        eye = torch.eye(self.n, dtype=dtype)
        S = self.sqrt_apply(eye).transpose(-1, -2)  # rows of eye are unit vectors -> columns of S
        return S @ S.transpose(-1, -2)

    def sqrt_matrix(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        return self.sqrt_apply(torch.eye(self.n, dtype=dtype)).transpose(-1, -2)

    def scaled(self, factor: float) -> Covariance:
        """``factor · B`` (DAPPER's ``xB``)."""
        return _Scaled(self, factor)


class _Scaled(Covariance):
    def __init__(self, base: Covariance, factor: float) -> None:
        if factor <= 0:
            raise ConfigError(f"covariance scale factor must be > 0; got {factor}")
        self.base, self.f, self.n = base, math.sqrt(factor), base.n

    def sqrt_apply(self, v: torch.Tensor) -> torch.Tensor:
        return self.f * self.base.sqrt_apply(v)


class DiagonalCovariance(Covariance):
    """``B = diag(std²)``; ``std`` is a scalar or ``(n,)`` (units of the state)."""

    def __init__(self, std: torch.Tensor | float, n: int | None = None) -> None:
        self.std = torch.as_tensor(std, dtype=torch.float64)
        if bool((self.std <= 0).any()):
            raise ConfigError(f"background std must be > 0; got min {float(self.std.min()):g}")
        self.n = int(self.std.numel()) if self.std.ndim else int(n or 1)

    def sqrt_apply(self, v: torch.Tensor) -> torch.Tensor:
        return self.std.to(v) * v


class MatrixCovariance(Covariance):
    """A dense SPD ``B`` (n, n), applied by its Cholesky factor (or symmetric square root)."""

    def __init__(self, B: torch.Tensor, *, sqrt: str = "cholesky", jitter: float = 0.0) -> None:
        B = torch.as_tensor(B, dtype=torch.float64)
        if B.ndim != 2 or B.shape[0] != B.shape[1]:
            raise ShapeError(f"covariance must be square (n, n); got {tuple(B.shape)}")
        check_choice("sqrt", sqrt, ["cholesky", "symmetric"])
        B = 0.5 * (B + B.T) + jitter * torch.eye(B.shape[0], dtype=B.dtype)
        self.B, self.n = B, B.shape[0]
        if sqrt == "cholesky":
            L, info = torch.linalg.cholesky_ex(B)
            if int(info) != 0:
                raise ConfigError(
                    "covariance is not positive definite (Cholesky failed); add jitter=... or use "
                    "sqrt='symmetric'"
                )
            self.S = L
        else:
            lam, V = torch.linalg.eigh(B)
            if float(lam.min()) < -1e-10 * float(lam.max()):
                raise ConfigError(f"covariance has a negative eigenvalue {float(lam.min()):g}")
            self.S = (V * lam.clamp(min=0).sqrt()) @ V.T

    def sqrt_apply(self, v: torch.Tensor) -> torch.Tensor:
        return v @ self.S.to(v).T

    def matrix(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        return self.B.to(dtype)


def correlation_matrix(
    coords: torch.Tensor, length_scale: float, kind: str = "gaussian", period: float | None = None
) -> torch.Tensor:
    """Correlation ρ(d/L) between points ``coords`` (n,) or (n, k): gaussian exp(−d²/2L²) or exponential
    exp(−d/L).

    ``period`` makes distances periodic (e.g. the Lorenz-96 ring).
    """
    check_choice("correlation kind", kind, ["gaussian", "exponential"])
    if length_scale <= 0:
        raise ConfigError(f"correlation length scale must be > 0; got {length_scale}")
    c = torch.as_tensor(coords, dtype=torch.float64)
    c = c.unsqueeze(-1) if c.ndim == 1 else c
    d = (c[:, None, :] - c[None, :, :]).abs()
    if period is not None:
        d = torch.minimum(d, period - d)
    d = d.pow(2).sum(-1).sqrt()
    r = d / length_scale
    return torch.exp(-0.5 * r**2) if kind == "gaussian" else torch.exp(-r)


class CorrelatedCovariance(MatrixCovariance):
    """``B = diag(σ) C diag(σ)`` with a Gaussian or exponential correlation of length scale L.

    ``coords``: positions of the n state entries (e.g. depths in m); ``std``: σ, scalar or (n,).
    A tiny relative jitter keeps the Gaussian kernel's Cholesky factor finite.
    """

    def __init__(
        self,
        coords: torch.Tensor,
        std: torch.Tensor | float,
        length_scale: float,
        kind: str = "gaussian",
        *,
        period: float | None = None,
        jitter: float = 1e-8,
    ) -> None:
        C = correlation_matrix(coords, length_scale, kind, period)
        s = torch.as_tensor(std, dtype=torch.float64).expand(C.shape[0])
        if bool((s <= 0).any()):
            raise ConfigError(f"background std must be > 0; got min {float(s.min()):g}")
        B = s[:, None] * C * s[None, :]
        super().__init__(B, jitter=jitter * float(s.pow(2).max()))


def as_covariance(B: Covariance | torch.Tensor | float, n: int) -> Covariance:
    """Accept a Covariance, a matrix (n, n), a vector of stds (n,) or a scalar std."""
    if isinstance(B, Covariance):
        if B.n != n and not (isinstance(B, DiagonalCovariance) and B.std.ndim == 0):
            raise ShapeError(f"background covariance is for {B.n} entries but the control has {n}")
        return B
    t = torch.as_tensor(B, dtype=torch.float64)
    if t.ndim == 2:
        return MatrixCovariance(t)
    return DiagonalCovariance(t, n=n)

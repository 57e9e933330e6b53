"""Lorenz-63 and Lorenz-96 as pelagos Models (RK4 time stepping; the standard DA test beds).

Lorenz-96 (Lorenz 1996; DAPPER's ``Lorenz96``): ring of ``nx`` variables,

    dx_i/dt = (x_{i+1} − x_{i−2}) x_{i−1} − x_i + F,     indices modulo nx,

with forcing ``F`` (8: chaotic, leading Lyapunov exponent ≈ 1.7 per time unit for nx = 40), dt = 0.05 ("6 h").

Lorenz-63 (Lorenz 1963): dx/dt = σ (y − x), dy/dt = x (ρ − z) − y, dz/dt = x y − β z with σ = 10, ρ = 28,
β = 8/3, dt = 0.01.

States are tensors ``(..., nx)`` / ``(..., 3)`` with any leading batch dims; parameters may carry a batch dim
``(B,)`` matching the first state dim (ensemble members with their own parameter values, via ``model.using``).
Time is nondimensional ("model time units").
"""

from __future__ import annotations

import torch

from ..core.errors import ConfigError, ShapeError
from ..core.model import Model


def rk4_step(f, x: torch.Tensor, dt: float) -> torch.Tensor:
    """One classical Runge–Kutta step of dx/dt = f(x)."""
    k1 = f(x)
    k2 = f(x + 0.5 * dt * k1)
    k3 = f(x + 0.5 * dt * k2)
    k4 = f(x + dt * k3)
    return x + (dt / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


class Lorenz96(Model):
    """Lorenz-96 on a ring of ``nx`` variables (see module docstring)."""

    def __init__(self, nx: int = 40, F: float = 8.0, dt: float = 0.05) -> None:
        super().__init__()
        if nx < 4:
            raise ConfigError(f"Lorenz-96 needs nx >= 4 variables; got {nx}")
        if dt <= 0:
            raise ConfigError(f"time step dt must be > 0; got {dt}")
        self.nx, self.dt = int(nx), float(dt)
        i = torch.arange(self.nx)
        self._shifts = ((i + 1) % self.nx, (i - 1) % self.nx, (i - 2) % self.nx)
        self.declare_parameter("F", F, units="-", description="constant forcing")

    def tendency(self, x: torch.Tensor) -> torch.Tensor:
        F = self.param_b("F", x.ndim)
        # Neighbours by index arrays (cheaper than torch.roll under forward-mode AD).
        ip1, im1, im2 = self._shifts
        return (x[..., ip1] - x[..., im2]) * x[..., im1] - x + F

    def step(self, state: torch.Tensor, t: float | torch.Tensor = 0.0) -> torch.Tensor:
        if state.shape[-1] != self.nx:
            raise ShapeError(f"Lorenz-96 state has shape {tuple(state.shape)}; expected (..., {self.nx})")
        return rk4_step(self.tendency, state, self.dt)

    def initial_state(self, batch: tuple[int, ...] = (), *, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The first unit vector e_0 (DAPPER's x0 for ``Lorenz96/sakov2008``); chaos takes over within ~10
        time
        units, which is why statistics skip a burn-in."""
        x = torch.zeros((*batch, self.nx), dtype=dtype or torch.get_default_dtype())
        x[..., 0] = 1.0
        return x


class Lorenz63(Model):
    """Lorenz-63 with parameters sigma, rho, beta (see module docstring)."""

    def __init__(
        self, sigma: float = 10.0, rho: float = 28.0, beta: float = 8.0 / 3.0, dt: float = 0.01
    ) -> None:
        super().__init__()
        if dt <= 0:
            raise ConfigError(f"time step dt must be > 0; got {dt}")
        self.dt = float(dt)
        self.declare_parameter("sigma", sigma, bounds=(0.0, None), description="Prandtl number")
        self.declare_parameter("rho", rho, bounds=(0.0, None), description="reduced Rayleigh number")
        self.declare_parameter("beta", beta, bounds=(0.0, None), description="aspect-ratio factor")

    def tendency(self, s: torch.Tensor) -> torch.Tensor:
        sig = self.param_b("sigma", s.ndim - 1)
        rho = self.param_b("rho", s.ndim - 1)
        beta = self.param_b("beta", s.ndim - 1)
        x, y, z = s[..., 0], s[..., 1], s[..., 2]
        return torch.stack([sig * (y - x), x * (rho - z) - y, x * y - beta * z], dim=-1)

    def step(self, state: torch.Tensor, t: float | torch.Tensor = 0.0) -> torch.Tensor:
        if state.shape[-1] != 3:
            raise ShapeError(f"Lorenz-63 state has shape {tuple(state.shape)}; expected (..., 3)")
        return rk4_step(self.tendency, state, self.dt)

    def initial_state(self, batch: tuple[int, ...] = (), *, dtype: torch.dtype | None = None) -> torch.Tensor:
        """DAPPER's x0 = (1.509, −1.531, 25.46), close to the attractor for the default parameters."""
        x = torch.tensor([1.509, -1.531, 25.46], dtype=dtype or torch.get_default_dtype())
        return x.expand(*batch, 3).clone()

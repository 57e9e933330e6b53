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

from dataclasses import dataclass

import torch

from ..core.errors import ConfigError, ShapeError
from ..core.model import Coordinate, Model, Variable
from ..core.registry import BuildContext, ModelKind


def _batch_shape(batch: int | tuple[int, ...] | None) -> tuple[int, ...]:
    """``None`` -> no batch dim; ``B`` -> ``(B,)`` (a tuple of dims is accepted too)."""
    if batch is None:
        return ()
    if isinstance(batch, tuple | list):
        return tuple(int(b) for b in batch)
    if isinstance(batch, bool) or int(batch) != batch or batch < 1:
        raise ConfigError(f"initial_state: batch must be None or a positive int; got {batch!r}")
    return (int(batch),)


def rk4_step(f, x: torch.Tensor, dt: float) -> torch.Tensor:
    """One classical Runge–Kutta step of dx/dt = f(x)."""
    k1 = f(x)
    k2 = f(x + 0.5 * dt * k1)
    k3 = f(x + 0.5 * dt * k2)
    k4 = f(x + dt * k3)
    return x + (dt / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


class Lorenz96(Model):
    """Lorenz-96 on a ring of ``nx`` variables (see module docstring)."""

    def __init__(
        self, nx: int = 40, F: float = 8.0, dt: float = 0.05, *, dtype: torch.dtype | None = None
    ) -> None:
        super().__init__()
        if nx < 4:
            raise ConfigError(f"Lorenz-96 needs nx >= 4 variables; got {nx}")
        if dt <= 0:
            raise ConfigError(f"time step dt must be > 0; got {dt}")
        self.nx, self.dt = int(nx), float(dt)
        i = torch.arange(self.nx)
        self._shifts = ((i + 1) % self.nx, (i - 1) % self.nx, (i - 2) % self.nx)
        self.declare_parameter("F", F, units="-", description="constant forcing", dtype=dtype)

    def tendency(self, x: torch.Tensor) -> torch.Tensor:
        F = self.param_b("F", x.ndim)
        # Neighbours by index arrays (cheaper than torch.roll under forward-mode AD).
        ip1, im1, im2 = self._shifts
        return (x[..., ip1] - x[..., im2]) * x[..., im1] - x + F

    def step(self, state: torch.Tensor, t: float | torch.Tensor = 0.0) -> torch.Tensor:
        if state.shape[-1] != self.nx:
            raise ShapeError(f"Lorenz-96 state has shape {tuple(state.shape)}; expected (..., {self.nx})")
        return rk4_step(self.tendency, state, self.dt)

    def initial_state(self, batch: int | None = None, *, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The first unit vector e_0 (DAPPER's x0 for ``Lorenz96/sakov2008``), shape ``(nx,)`` or ``(B, nx)``;
        chaos takes over within ~10 time units, which is why statistics skip a burn-in."""
        x = torch.zeros((*_batch_shape(batch), self.nx), dtype=dtype or self._dtype())
        x[..., 0] = 1.0
        return x

    def _dtype(self) -> torch.dtype:
        return self.params.raw["F"].dtype

    def output_variables(self) -> list[Variable]:
        return [Variable("x", "1", "Lorenz-96 variable", ("i",))]

    def output_coordinates(self) -> dict[str, Coordinate]:
        return {"i": Coordinate(torch.arange(self.nx, dtype=torch.float64), "1", "position on the ring")}


class Lorenz63(Model):
    """Lorenz-63 with parameters sigma, rho, beta (see module docstring)."""

    def __init__(
        self,
        sigma: float = 10.0,
        rho: float = 28.0,
        beta: float = 8.0 / 3.0,
        dt: float = 0.01,
        *,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if dt <= 0:
            raise ConfigError(f"time step dt must be > 0; got {dt}")
        self.dt = float(dt)
        kw = {"bounds": (0.0, None), "dtype": dtype}
        self.declare_parameter("sigma", sigma, description="Prandtl number", **kw)
        self.declare_parameter("rho", rho, description="reduced Rayleigh number", **kw)
        self.declare_parameter("beta", beta, description="aspect-ratio factor", **kw)

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

    def initial_state(self, batch: int | None = None, *, dtype: torch.dtype | None = None) -> torch.Tensor:
        """DAPPER's x0 = (1.509, −1.531, 25.46), close to the attractor for the default parameters; shape
        ``(3,)`` or ``(B, 3)``."""
        x = torch.tensor([1.509, -1.531, 25.46], dtype=dtype or self.params.raw["rho"].dtype)
        return x.expand(*_batch_shape(batch), 3).clone()

    def output_variables(self) -> list[Variable]:
        return [Variable(n, "1", f"Lorenz-63 {n}") for n in ("x", "y", "z")]

    def output(self, state: torch.Tensor, t: float = 0.0) -> dict[str, torch.Tensor]:
        return {"x": state[..., 0], "y": state[..., 1], "z": state[..., 2]}


# -- registration ------------------------------------------------------------------------------------------
@dataclass
class Lorenz96Options:
    """``model:`` options of kind ``lorenz96``: ring size, forcing F, time step (model time units)."""

    nx: int = 40
    F: float = 8.0
    dt: float = 0.05


@dataclass
class Lorenz63Options:
    """``model:`` options of kind ``lorenz63``."""

    sigma: float = 10.0
    rho: float = 28.0
    beta: float = 8.0 / 3.0
    dt: float = 0.01


def _build96(o: Lorenz96Options, ctx: BuildContext) -> Lorenz96:
    dtype = getattr(torch, ctx.dtype)  # parameters declared in it: no float32 rounding carried over
    return Lorenz96(o.nx, o.F, ctx.dt if ctx.dt is not None else o.dt, dtype=dtype).to(dtype)


def _build63(o: Lorenz63Options, ctx: BuildContext) -> Lorenz63:
    dtype = getattr(torch, ctx.dtype)  # 8/3 declared in float64 stays 8/3
    return Lorenz63(o.sigma, o.rho, o.beta, ctx.dt if ctx.dt is not None else o.dt, dtype=dtype).to(dtype)


KIND96 = ModelKind(
    "lorenz96",
    _build96,
    options=Lorenz96Options,
    example=lambda: Lorenz96(nx=8).to(torch.float64),
    description="Lorenz-96 ring (RK4), the standard data-assimilation test bed",
    conformance={"steps": 3},
)
KIND63 = ModelKind(
    "lorenz63",
    _build63,
    options=Lorenz63Options,
    example=lambda: Lorenz63().to(torch.float64),
    description="Lorenz-63 (RK4), three variables x, y, z",
    conformance={"steps": 3},
)

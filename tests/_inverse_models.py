"""Tiny models for the inverse-method tests (linear dynamics with known closed-form answers, decay)."""

from __future__ import annotations

import torch

from pelagos.core import Model


class LinearModel(Model):
    """x_{k+1} = A x_k (batched over leading dims)."""

    def __init__(self, A: torch.Tensor, dt: float = 1.0) -> None:
        super().__init__()
        self.A = A
        self.dt = dt

    def step(self, state: torch.Tensor, t: float) -> torch.Tensor:
        return state @ self.A.T


class DecayModel(Model):
    """Two-box decay with exchange: dc/dt = -k c + s (1 - c), solved exactly per step (c: (..., 2))."""

    def __init__(self, dt: float = 0.5) -> None:
        super().__init__()
        self.dt = dt
        self.declare_parameter("k", 0.3, units="1/d", bounds=(0.0, None), description="decay rate")
        self.declare_parameter("s", 0.2, units="1/d", bounds=(0.0, 2.0), description="supply rate")

    def step(self, state: torch.Tensor, t: float) -> torch.Tensor:
        k = self.param_b("k", state.ndim)
        s = self.param_b("s", state.ndim)
        lam = k + s
        ceq = s / lam
        w = torch.tensor([1.0, 0.5], dtype=state.dtype)
        return ceq + (state - ceq) * torch.exp(-lam * w * self.dt)


class ForcedLinearModel(Model):
    """x_{k+1} = A x_k + θ₁ g₁ + θ₂ g₂: linear in the state and in two unbounded parameters (identity
    transform, so their priors are Gaussian in the physical values too) — a linear-Gaussian calibration case
    with a closed-form posterior."""

    def __init__(self, A: torch.Tensor, G: torch.Tensor, dt: float = 0.5) -> None:
        super().__init__()
        self.A = A
        self.G = G  # (n, 2): columns g₁, g₂
        self.dt = dt
        self.declare_parameter("theta1", 0.0, units="-", description="amplitude of forcing pattern g1")
        self.declare_parameter("theta2", 0.0, units="-", description="amplitude of forcing pattern g2")

    def step(self, state: torch.Tensor, t: float) -> torch.Tensor:
        f = (
            self.param_b("theta1", state.ndim) * self.G[:, 0]
            + self.param_b("theta2", state.ndim) * self.G[:, 1]
        )
        return state @ self.A.T + f

"""Observation operators for the QG models (sparse point values of ψ or q), for pelagos.inverse."""

from __future__ import annotations

import torch

from .base import QGState


class PointObserver:
    """``H(state)``: the streamfunction ψ [m² s⁻¹] (or PV q [s⁻¹]) at fixed grid points, shape (B, m).

    ``points`` are flat indices into (nz, ny, nx); :meth:`random` draws ``m`` distinct ones from a seed.
    Differentiable (ψ comes from the spectral inversion of the state's q̂).
    """

    def __init__(self, model, points: torch.Tensor, field: str = "psi") -> None:
        self.model, self.points, self.field = model, torch.as_tensor(points, dtype=torch.long), field

    @classmethod
    def random(cls, model, m: int, seed: int = 0, field: str = "psi") -> PointObserver:
        n = model.nz * model.ny * model.nx
        return cls(model, torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:m], field)

    def __call__(self, state: QGState | torch.Tensor) -> torch.Tensor:
        """``state``: a QG state dict, or a PV tensor q (B, nz, ny, nx) (e.g. from :class:`QGInterval`)."""
        if torch.is_tensor(state):
            state = {"q": state, "qh": self.model.fft(state)}
        if self.field == "q":
            x = state["q"]
        else:
            x = self.model.ifft(self.model._invert(state["qh"], self.model.coefficients()))
        return x.flatten(1)[:, self.points.to(x.device)]

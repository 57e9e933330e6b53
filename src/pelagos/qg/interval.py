"""A QG model seen through a tensor state: one step = ``n_sub`` pyqg steps from a fresh AB3 bootstrap.

``pelagos.inverse`` (4D-Var, EnKF) works on tensor states; the QG state carries AB3 history. ``QGInterval``
makes q (B, nz, ny, nx) the whole state and advances it by ``n_sub · dt`` per step, restarting pyqg's
forward-Euler/AB2 bootstrap each interval, optionally adding a
learned correction ``dq = correction(q)`` per interval (model-error learning from analysis increments; see
:mod:`pelagos.qg.model_error`). The correction sees the PV at the start of the interval, in the model's dtype,
and its output is added once at the end: the form in which increments x_a(t_k) − M(x_a(t_{k−1})) train it.

What the restart costs (``benchmarks/qg_interval_bootstrap.py``, docs/qg_increments.md): on the 32²
two-layer case with dt = 1 h and 6-h intervals it moves ψ by 1.4·10⁻⁵ of its std after one day and 9·10⁻⁵
after five — 0.3–1.4 % of AB3's own time-step error at that dt — with no extra tendency evaluations (about
18 % more wall time for rebuilding the spectral state each interval).
"""

from __future__ import annotations

from typing import Any

import torch

from ..core.model import Coordinate, Model, Variable
from .base import QGPointOperator, SpectralQG, qg_coordinates, qg_variables


class QGInterval(Model):
    """Wrap ``qg`` so that ``step(q, t)`` returns q after ``n_sub`` steps (+ ``correction(q)`` if given)."""

    def __init__(self, qg: SpectralQG, n_sub: int, correction: torch.nn.Module | None = None) -> None:
        super().__init__()
        self.qg, self.n_sub, self.correction = qg, int(n_sub), correction
        self.dt = qg.dt * self.n_sub

    def step(self, q: torch.Tensor, t: float | torch.Tensor = 0.0) -> torch.Tensor:
        st = self.qg.state_from_q(q)
        for _ in range(self.n_sub):
            st = self.qg.step(st)
        out = st["q"]
        if self.correction is not None:
            out = out + self.correction(q).to(out.dtype)
        return out

    def initial_state(self, batch: int | None = None, *, seed: int = 0) -> torch.Tensor:
        """The QG model's seeded random PV (s-1), ``(B, nz, ny, nx)`` (``batch=None``: B = 1)."""
        return self.qg.random_q(1 if batch is None else int(batch), seed)

    def output_variables(self) -> list[Variable]:
        return qg_variables()

    def output(self, q: torch.Tensor, t: float = 0.0) -> dict[str, torch.Tensor]:
        return self.qg.output(q, t)

    def output_coordinates(self) -> dict[str, Coordinate]:
        return qg_coordinates(self.qg)

    def observation_operator(self, variable: str, at: dict | None = None) -> Any:
        return QGPointOperator(self, self.variable(variable).name, at or {})

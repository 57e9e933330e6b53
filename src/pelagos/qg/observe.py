"""The QG models' observation operator: PV ``q`` [s⁻¹] or streamfunction ``psi`` [m² s⁻¹] at points.

``SpectralQG.observation_operator(variable, at)`` builds a :class:`QGPointOperator` from
``at = {"lev": ..., "y": m, "x": m}`` (one value or a list per coordinate): ``lev`` is a layer of the
model's ``lev`` coordinate (pyqg's 1 … nz unless the model declares others; may be left out for one
layer), ``x``/``y`` positions in metres on the doubly periodic domain, interpolated bilinearly between the
cell centres ``((i + ½) dx, (j + ½) dy)`` (exact at the centres, periodic across the edges). ``psi`` comes
from the spectral inversion of the state's PV, so the operator is differentiable in the state.
:func:`grid_points` / :func:`random_points` give ``at`` for cell centres (by flat index, or drawn from a
seed); observation files use the same hook through :func:`pelagos.core.obsio.read_observations`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from typing import Any

import torch

from ..core.errors import ObservationError
from .base import QGState

__all__ = ["QGPointOperator", "grid_points", "qg_observation_operator", "random_points"]

FIELDS = {"q": "q", "psi": "psi", "p": "psi"}  # pyqg calls the streamfunction p


def _levels(model) -> list[float]:
    c = None
    with contextlib.suppress(NotImplementedError, AttributeError):
        c = model.output_coordinates().get("lev")
    if c is not None:
        return [float(v) for v in torch.as_tensor(c.values).reshape(-1).tolist()]
    return [float(k) for k in range(1, model.nz + 1)]


def _as_list(v: Any) -> list:
    if torch.is_tensor(v):
        return v.reshape(-1).tolist()
    if isinstance(v, (list, tuple)):
        return list(v)
    return [v]


class QGPointOperator:
    """``H(state) -> (B, m)``: a QG field at points (layer index, y [m], x [m]); see the module docstring."""

    def __init__(self, model, field: str, lev_index, y, x) -> None:
        if field not in ("q", "psi"):
            raise ObservationError(f"QG point observations are of 'q' or 'psi'; got {field!r}")
        self.model, self.field = model, field
        self.k = torch.as_tensor(lev_index, dtype=torch.long).reshape(-1)  # layer index 0 … nz-1 per point
        g = model.grid
        fx = torch.as_tensor(x, dtype=torch.float64).reshape(-1) / g.dx - 0.5
        fy = torch.as_tensor(y, dtype=torch.float64).reshape(-1) / g.dy - 0.5
        near_x, near_y = torch.round(fx), torch.round(fy)
        fx = torch.where((fx - near_x).abs() < 1e-9, near_x, fx)  # exactly on a centre: no neighbour weight
        fy = torch.where((fy - near_y).abs() < 1e-9, near_y, fy)
        ix, iy = torch.floor(fx), torch.floor(fy)
        self.wx, self.wy = fx - ix, fy - iy
        ix, iy = ix.long(), iy.long()
        self.ix0, self.ix1 = ix % model.nx, (ix + 1) % model.nx
        self.iy0, self.iy1 = iy % model.ny, (iy + 1) % model.ny
        self._m = int(self.k.numel())

    @property
    def m(self) -> int:
        return self._m

    @property
    def points(self) -> torch.Tensor:
        """Flat indices into (nz, ny, nx) of the nearest cell centres (the exact points for grid points)."""
        iy = torch.where(self.wy < 0.5, self.iy0, self.iy1)
        ix = torch.where(self.wx < 0.5, self.ix0, self.ix1)
        return (self.k * self.model.ny + iy) * self.model.nx + ix

    def _field(self, state: QGState | torch.Tensor) -> torch.Tensor:
        model = self.model
        if torch.is_tensor(state):  # a PV tensor q (B, nz, ny, nx), e.g. from QGInterval
            state = {"q": state, "qh": model.fft(state)}
        if self.field == "q":
            return state["q"]
        return model.ifft(model._invert(state["qh"], model.coefficients()))

    def __call__(self, state: QGState | torch.Tensor) -> torch.Tensor:
        f = self._field(state)  # (B, nz, ny, nx)
        dev = f.device
        k = self.k.to(dev)
        wx, wy = self.wx.to(f), self.wy.to(f)

        def at(iy, ix):
            return f[:, k, iy.to(dev), ix.to(dev)]

        return (1 - wy) * ((1 - wx) * at(self.iy0, self.ix0) + wx * at(self.iy0, self.ix1)) + wy * (
            (1 - wx) * at(self.iy1, self.ix0) + wx * at(self.iy1, self.ix1)
        )


def qg_observation_operator(model, variable: str, at: Mapping[str, Any] | None = None) -> QGPointOperator:
    """The operator of ``variable`` (``q``, ``psi`` or pyqg's ``p``) at ``at = {"lev", "y", "x"}``."""
    field = FIELDS.get(variable)
    if field is None:
        raise ObservationError(f"unknown QG point variable {variable!r}; observe 'q' or 'psi'")
    at = dict(at or {})
    bad = sorted(set(at) - {"lev", "y", "x"})
    if bad:
        raise ObservationError(f"QG observations are located by lev, y and x (m); got {bad}")
    for d in ("y", "x"):
        if d not in at:
            raise ObservationError(f"observing {variable!r}: give its {d} (m) in the domain")
    levels = _levels(model)
    if "lev" not in at:
        if len(levels) > 1:
            raise ObservationError(f"observing {variable!r}: give its layer lev (one of {levels})")
        at["lev"] = levels[0]
    cols = {d: _as_list(at[d]) for d in ("lev", "y", "x")}
    m = max(len(v) for v in cols.values())
    for d, v in cols.items():
        if len(v) not in (1, m):
            raise ObservationError(f"QG observation points along {d!r}: {len(v)} values, expected 1 or {m}")
        cols[d] = v * m if len(v) == 1 else v
    k = []
    for lev in cols["lev"]:
        hits = [i for i, c in enumerate(levels) if math.isclose(float(lev), c, abs_tol=1e-9)]
        if not hits:
            raise ObservationError(f"lev {lev!r} is not a layer of the model (lev: {levels})")
        k.append(hits[0])
    for d, size in (("y", model.W), ("x", model.L)):
        for v in cols[d]:
            if not (math.isfinite(float(v)) and 0.0 <= float(v) <= size):
                raise ObservationError(f"{d} = {v!r} m is outside the domain [0, {size:g}] m")
    return QGPointOperator(model, field, k, cols["y"], cols["x"])


def grid_points(model, index) -> dict[str, list[float]]:
    """``at`` of the cell centres with flat indices ``index`` into (nz, ny, nx): ``{"lev", "y", "x"}``."""
    p = torch.as_tensor(index, dtype=torch.long).reshape(-1)
    k, rest = p // (model.ny * model.nx), p % (model.ny * model.nx)
    iy, ix = rest // model.nx, rest % model.nx
    levels = _levels(model)
    g = model.grid
    return {
        "lev": [levels[i] for i in k.tolist()],
        "y": ((iy + 0.5) * g.dy).tolist(),
        "x": ((ix + 0.5) * g.dx).tolist(),
    }


def random_points(model, m: int, seed: int = 0) -> dict[str, list[float]]:
    """``at`` of ``m`` distinct cell centres drawn from a seed (for ``model.observation_operator``)."""
    n = model.nz * model.ny * model.nx
    return grid_points(model, torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:m])

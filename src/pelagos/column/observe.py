"""The water column's observation operator (what :meth:`ColumnModel.observation_operator` builds).

An observed quantity is a state variable (global FABM name, e.g. ``npzd_phy``) at a point ``at``:

- ``{"depth": d}``: ``d`` m below the surface (positive down): linear interpolation between the layer centres,
  the centres at ``Σ_{j>k} h_j + h_k/2`` (index 0 = bottom); above the top centre the top layer's value, below
  the bottom centre the bottom layer's value (each layer is well mixed at its own scale); deeper than the
  bottom is an error;
- ``{"depth": "surface"}``: the top layer's value;
- ``{"depth": "integral"}``: the column integral ``Σ_k h_k c_k`` (units × m, e.g. mmol m-2);
- ``{"z": z}``: GOTM's vertical coordinate (m, negative down), i.e. ``depth = -z``;
- no ``at`` (an empty depth in an observation file): only for bottom- or surface-attached variables (no
  vertical dimension); a profile needs a depth.

Lists give several points at once (``{"depth": ["surface", 5.0, 25.0]}``). Every operator is a fixed linear
map ``H(x) = W x`` of the stacked state ``(…, V, nz)`` or of the dict state, exact on linear profiles, with
gradient Wᵀ. The layer thicknesses are the forcing's; a forcing whose ``h`` changes in time or between
columns is refused (the operator is handed no time), which holds for GOTM's fixed grids such as the NNS case.
Files and twins use it through :mod:`pelagos.core.obsio` (``read_observations``,
``synthetic_observations``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..core.errors import ObservationError
from ..core.model import unknown_variable_message
from ..core.operators import interpolation_weights

__all__ = ["ColumnObservationOperator", "column_observation_operator", "column_where"]

Where = float | str  # depth in m, "surface" or "integral"


def column_where(depth: Any) -> Where:
    """Normalise a depth entry: a number (m below the surface, >= 0), ``"surface"`` or ``"integral"``."""
    if isinstance(depth, str):
        s = depth.strip().lower()
        if s in ("surface", "integral"):
            return s
        try:
            depth = float(s)
        except ValueError:
            raise ObservationError(
                f"depth {depth!r} is neither a number of metres (positive down) nor 'surface' / 'integral'"
            ) from None
    d = float(depth)
    if not math.isfinite(d) or d < 0:
        raise ObservationError(f"depth must be a finite number of metres >= 0 (positive down); got {depth!r}")
    return d


def _centre_depths(h: torch.Tensor) -> torch.Tensor:
    """Centre depths (m, positive down) of layers ``h`` (nz,), index 0 = bottom."""
    above = torch.flip(torch.cumsum(torch.flip(h, [0]), 0), [0]) - h  # thickness of the layers above
    return above + 0.5 * h


def fixed_h(forcing: Any) -> torch.Tensor:
    """The forcing's layer thickness h (m) ``(nz,)`` (float64), checked equal at every time and in every
    column."""
    h = torch.as_tensor(forcing.fields["h"]).detach().to(torch.float64)
    h0 = h.reshape(-1, h.shape[-1])[0]
    if not torch.allclose(h, h0.expand_as(h), rtol=1e-9, atol=0.0):
        raise ObservationError(
            f"the layer thickness h of forcing {getattr(forcing, 'name', '')!r} changes in time or between "
            "columns; column observation operators need one fixed grid (use a forcing with fixed h)"
        )
    return h0


class ColumnObservationOperator:
    """``H(x) = W x`` for observed columns ``[(variable, where), ...]`` (see module docstring).

    Args:
        columns: pairs ``(variable, depth m | "surface" | "integral")``; variables by their global names.
        variables: the state's interior variable names, in stacked order.
        h: layer thicknesses (m), ``(nz,)``, index 0 = bottom.
    Calling it on a stacked state ``(..., V, nz)`` or a dict ``{name: (..., nz)}`` gives ``(..., m)``.
    """

    def __init__(self, columns: Sequence[tuple[str, Any]], variables: Sequence[str], h: torch.Tensor) -> None:
        self.variables = list(variables)
        h = torch.as_tensor(h, dtype=torch.float64).flatten()
        nz = h.numel()
        if nz < 1 or not bool((h > 0).all()):
            raise ObservationError(f"layer thicknesses must be > 0; got {h.tolist()}")
        self.h, self.nz = h, nz
        self.z = _centre_depths(h)
        total = float(h.sum())
        zs = torch.flip(self.z, [0])  # surface first: increasing depth
        self.columns = []
        W = torch.zeros(len(columns), len(self.variables), nz, dtype=torch.float64)
        for j, (var, where) in enumerate(columns):
            if var not in self.variables:
                raise ObservationError(unknown_variable_message(var, self.variables))
            where = column_where(where)
            self.columns.append((var, where))
            v = self.variables.index(var)
            if where == "surface":
                W[j, v, nz - 1] = 1.0
            elif where == "integral":
                W[j, v] = h
            else:
                if where > total + 1e-9:
                    raise ObservationError(
                        f"observation of {var} at {where:g} m is below the column bottom ({total:g} m)"
                    )
                i0, i1, w = interpolation_weights(zs, torch.tensor([where], dtype=torch.float64))
                W[j, v, nz - 1 - int(i0)] += 1.0 - float(w)
                W[j, v, nz - 1 - int(i1)] += float(w)
        self.W = W.reshape(len(columns), -1)  # (m, V*nz)

    @property
    def m(self) -> int:
        return len(self.columns)

    def __call__(self, state: torch.Tensor | Mapping[str, torch.Tensor]) -> torch.Tensor:
        if isinstance(state, Mapping):
            state = torch.stack([state[n] for n in self.variables], dim=-2)
        if state.shape[-2:] != (len(self.variables), self.nz):
            raise ObservationError(
                f"column state has shape {tuple(state.shape)}; expected (..., V={len(self.variables)}, "
                f"nz={self.nz})"
            )
        x = state.reshape(*state.shape[:-2], -1)
        return x @ self.W.to(x).T


class PoolOperator:
    """A bottom- or surface-attached variable (one value per column, no depth) of a dict state: (..., 1)."""

    def __init__(self, name: str) -> None:
        self.name = name

    m = 1

    def __call__(self, state: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return state[self.name].unsqueeze(-1)


def _as_list(v: Any) -> list:
    if torch.is_tensor(v):
        return v.reshape(-1).tolist()
    if isinstance(v, (list, tuple)):
        return list(v)
    return [v]


def column_observation_operator(model: Any, variable: str, at: Mapping[str, Any] | None = None) -> Any:
    """``H`` of ``variable`` at the points ``at`` on ``model``'s grid (a ColumnModel or a StackedColumn;
    see the module docstring for ``at``)."""
    interior = list(model.interior)
    pools = list(getattr(model, "bottom", []) or []) + list(getattr(model, "surface", []) or [])
    if variable not in interior + pools:
        try:
            declared = [v.name for v in model.output_variables()]
        except (NotImplementedError, AttributeError):
            declared = []
        if variable in declared:
            raise ObservationError(
                f"{variable} is a diagnostic of the column; observation operators are given the state only "
                f"(no time), so only state variables can be observed: {', '.join(interior + pools)}"
            )
        raise ObservationError(unknown_variable_message(variable, interior + pools))
    at = dict(at or {})
    bad = [k for k in at if k not in ("depth", "z")]
    if bad or len(at) > 1:
        raise ObservationError(
            f"the water column locates an observation by 'depth' (m below the surface, 'surface' or "
            f"'integral') or by 'z' (m, negative down); got {sorted(at)}"
        )
    if variable in pools:
        if at:
            raise ObservationError(
                f"{variable} is attached to the {'bottom' if variable in model.bottom else 'surface'} (no "
                "vertical position): leave its depth empty"
            )
        return PoolOperator(variable)
    if not at:
        raise ObservationError(
            f"{variable} is a profile ({model.nz} layers): give a depth (m below the surface), 'surface' or "
            "'integral'"
        )
    if "z" in at:
        wheres = []
        for z in _as_list(at["z"]):
            z = float(z)
            if not math.isfinite(z) or z > 0:
                raise ObservationError(f"z = {z!r} m is not a height below the surface (z is negative down)")
            wheres.append(-z + 0.0)
    else:
        wheres = [column_where(d) for d in _as_list(at["depth"])]
    return ColumnObservationOperator([(variable, w) for w in wheres], interior, fixed_h(model.forcing))

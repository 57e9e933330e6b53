"""A :class:`ColumnModel` seen with a single-tensor state, for the inverse methods.

The column's state is a dict ``{name: (B, nz)}``; several inverse tools (batched forward-mode Jacobians,
ensembles of initial states, vertical-correlation B matrices) want one tensor. :class:`StackedColumn` wraps a
column model whose state has only interior variables (no running means, no bottom/surface pools) and steps a
tensor ``x`` of shape ``(..., V, nz)`` — ``V`` interior variables in ``variables`` order, index 0 = bottom.
All leading dims are flattened into the model's column batch for the step, so an ensemble ``(Ne, V, nz)``
with parameters of shape ``(Ne,)`` runs as ``Ne`` columns in one call; a single column ``(V, nz)`` stepped
with parameters of shape ``(Ne,)`` comes back as ``(Ne, V, nz)``. Everything else (parameters,
``using``, ``select_free``, ``dt``, ``forcing``, ...) is the wrapped model's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..core.errors import ConfigError, ShapeError
from ..core.model import Model
from .model import ColumnModel

__all__ = ["StackedColumn"]


class StackedColumn(Model):
    """Tensor-state view ``(..., V, nz)`` of a :class:`ColumnModel` (see module docstring).

    A :class:`~pelagos.core.model.Model` itself (so ``rollout``, checkpointing and ``using`` treat it as one);
    the wrapped column is a transparent sub-model: parameter names stay ``"npzd.rmax"``, ``"nuh_scale"``.
    """

    def __init__(self, model: ColumnModel) -> None:
        super().__init__()
        if model.means or model.bottom or model.surface:
            raise ConfigError(
                "StackedColumn needs a biology with interior variables only and no running means; it has "
                f"bottom={model.bottom}, surface={model.surface}, means={list(model.means)} — use the dict "
                "state of the ColumnModel directly"
            )
        model._transparent_name = True  # "npzd.rmax", not "model.npzd.rmax"
        self.model = model
        self.dt = model.dt
        self.variables = list(model.interior)
        self._param_stores = list(model._stores().values())

    def __getattr__(self, name: str) -> Any:  # nn.Module lookup first, then the column (forcing, nz, ...)
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "model" or "model" not in self.__dict__.get("_modules", {}):
                raise
            return getattr(self._modules["model"], name)

    @property
    def V(self) -> int:
        return len(self.variables)

    def stack(self, state: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """dict state ``{name: (B, nz)}`` -> ``(B, V, nz)``."""
        missing = [n for n in self.variables if n not in state]
        if missing:
            raise ConfigError(f"state lacks variables {missing}; expected {self.variables}")
        return torch.stack([state[n] for n in self.variables], dim=-2)

    def unstack(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(..., V, nz)`` -> dict ``{name: (..., nz)}``."""
        if x.ndim < 2 or x.shape[-2] != self.V:
            raise ShapeError(
                f"stacked column state has shape {tuple(x.shape)}; expected (..., V={self.V}, nz)"
            )
        return {n: x[..., i, :] for i, n in enumerate(self.variables)}

    @property
    def epoch(self):  # -> datetime | None
        return self.model.epoch

    def initial_state(self, batch: int | None = None, **options: Any) -> torch.Tensor:
        """The column's initial state (same ``batch`` and options) stacked to ``(B, V, nz)``."""
        return self.stack(self.model.initial_state(batch, **options))

    def output_variables(self) -> list:
        return self.model.output_variables()

    def output_coordinates(self) -> dict:
        return self.model.output_coordinates()

    def _flat(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(..., V, nz)`` -> the column's dict state ``{name: (B, nz)}`` (a single column is repeated for
        the members of a parameter batch set by ``using``)."""
        flat = x.reshape(-1, *x.shape[-2:])
        if flat.shape[0] == 1:  # one column, maybe parameters batched by `using`: run one column per value
            nb = self._parameter_batch()
            if nb > 1:
                flat = flat.expand(nb, *flat.shape[1:])
        return self.unstack(flat)

    def _shaped(self, new: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        out = self.stack(new)
        if out.shape[0] != x.reshape(-1, *x.shape[-2:]).shape[0]:  # parameter batch: members lead
            return out
        return out.reshape(*x.shape[:-2], *x.shape[-2:])

    def step(self, x: torch.Tensor, t: float) -> torch.Tensor:
        return self._shaped(self.model.step(self._flat(x), t), x)

    def step_block(self, x: torch.Tensor, times: Any, means: Any = ()) -> tuple | None:
        """The column's multi-step hook (:meth:`ColumnModel.step_block`) on the stacked state
        ``(..., V, nz)``: the steps starting at ``times`` (model s) in compiled blocks inside
        :func:`~pelagos.core.rollout.rollout`; ``None`` when the column cannot (the loop then calls
        :meth:`step`)."""
        if means:
            return None
        res = self.model.step_block(self._flat(x), times)
        if res is None:
            return None
        return (self._shaped(res[0], x), *res[1:])

    def _parameter_batch(self) -> int:
        nb = 1
        for st in self._param_stores:
            for v in st.overrides.values():
                if torch.is_tensor(v) and v.ndim >= 1:
                    nb = max(nb, int(v.shape[0]))
        return nb

    def observation_operator(self, variable: str | list, at: Mapping[str, Any] | None = None) -> Any:
        """The column's operator (:mod:`pelagos.column.observe`), which takes the stacked state
        ``(..., V, nz)`` as well as the dict state. A list ``[(variable, depth | "surface" | "integral"),
        ...]`` (the older form) gives the same :class:`~pelagos.column.observe.ColumnObservationOperator`."""
        from .observe import ColumnObservationOperator, column_observation_operator, fixed_h

        if not isinstance(variable, str):
            return ColumnObservationOperator(variable, self.variables, fixed_h(self.forcing))
        return column_observation_operator(self, variable, at)

    def output(self, x: torch.Tensor, t: float, names: Any = None) -> dict[str, torch.Tensor]:
        """The column's :meth:`ColumnModel.output` of the stacked state (``names``: only those fields)."""
        return self.model.output(self.unstack(x.reshape(-1, *x.shape[-2:])), t, names)

"""Observation operators H: state -> predicted observations, shape ``(*batch, m)``.

An operator is any callable ``H(state) -> Tensor`` whose last dimension indexes the ``m`` observed quantities.
Here are the generic, differentiable ones; a model builds the operator of a named variable at given points
with :meth:`pelagos.core.Model.observation_operator` (default: :class:`GridPointOperator`, linear
interpolation with :func:`interpolation_weights`, the one interpolation stencil the models share).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .errors import ObservationError, ShapeError

Operator = Callable[[object], torch.Tensor]


class IndexOperator:
    """Pick entries of the last state dimension: ``H(x) = x[..., index]`` (``index`` may be a boolean
    mask)."""

    def __init__(self, index: Sequence[int] | torch.Tensor) -> None:
        idx = torch.as_tensor(index)
        self.index = torch.nonzero(idx).flatten() if idx.dtype == torch.bool else idx.long().flatten()

    def __call__(self, state: torch.Tensor) -> torch.Tensor:
        return state[..., self.index.to(state.device)]

    @property
    def m(self) -> int:
        return int(self.index.numel())


class IdentityOperator:
    """``H(x) = x`` for a tensor state whose last dimension is observed entirely."""

    def __call__(self, state: torch.Tensor) -> torch.Tensor:
        return state


class LinearOperator:
    """``H(x) = x @ Hᵀ`` with a matrix ``H`` of shape ``(m, n)``."""

    def __init__(self, H: torch.Tensor) -> None:
        self.H = H

    def __call__(self, state: torch.Tensor) -> torch.Tensor:
        return state @ self.H.to(state).transpose(-1, -2)


def interpolation_weights(
    z: torch.Tensor, depths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Linear-interpolation stencil from cell centres ``z`` (m, increasing) to ``depths`` (m).

    Returns ``(i0, i1, w)`` with value = ``p[i0] (1 - w) + p[i1] w``. Depths above the first / below the last
    centre
    take the nearest centre value (the surface and bottom cells are well mixed at their own scale).
    """
    z = torch.as_tensor(z, dtype=torch.float64).flatten()
    d = torch.as_tensor(depths, dtype=torch.float64).flatten()
    if z.numel() < 1:
        raise ShapeError("interpolation needs at least one cell centre depth")
    if z.numel() > 1 and not bool((z[1:] > z[:-1]).all()):
        raise ShapeError(f"cell centre depths must increase downwards; got {z.tolist()[:6]}...")
    if z.numel() == 1:
        zeros = torch.zeros_like(d, dtype=torch.long)
        return zeros, zeros, torch.zeros_like(d)
    dc = d.clamp(float(z[0]), float(z[-1]))
    i1 = torch.searchsorted(z, dc).clamp(1, z.numel() - 1)
    i0 = i1 - 1
    w = (dc - z[i0]) / (z[i1] - z[i0])
    return i0, i1, w


def interpolate_profile(profile: torch.Tensor, z: torch.Tensor, depths: torch.Tensor) -> torch.Tensor:
    """Values of ``profile`` (..., nz) defined at centre depths ``z`` (nz,) [m, positive down] at ``depths``
    (m,)."""
    i0, i1, w = interpolation_weights(z, depths)
    w = w.to(profile)
    return profile[..., i0] * (1 - w) + profile[..., i1] * w


class StackedOperator:
    """Several operators side by side: ``H(state) = cat([H_1(state), H_2(state), ...], -1)``."""

    def __init__(self, parts: Sequence[Callable[[object], torch.Tensor]]) -> None:
        self.parts = list(parts)

    @property
    def m(self) -> int:
        return sum(int(p.m) for p in self.parts)

    def __call__(self, state: object) -> torch.Tensor:
        outs = [p(state) for p in self.parts]
        lead = torch.broadcast_shapes(*[o.shape[:-1] for o in outs])
        return torch.cat([o.expand(*lead, o.shape[-1]) for o in outs], dim=-1)


class GridPointOperator:
    """A model variable at points: linear interpolation along each named dim of the variable.

    The default of :meth:`pelagos.core.Model.observation_operator`. ``at`` maps dim names to the points'
    coordinates (all of length m, or scalars broadcast to m); dims not in ``at`` must have size 1. Coordinates
    come from :meth:`Model.output_coordinates` (integer positions for a dim without one).
    """

    def __init__(self, model: object, variable: object, at: dict) -> None:
        self.model, self.variable = model, variable
        dims = tuple(variable.dims)
        unknown = [d for d in at if d not in dims]
        if unknown:
            raise ObservationError(
                f"variable {variable.name!r} has dims {dims}; cannot locate it along {unknown}"
            )
        pts = {d: torch.as_tensor(v, dtype=torch.float64).reshape(-1) for d, v in at.items()}
        m = max([p.numel() for p in pts.values()] or [1])
        for d, p in pts.items():
            if p.numel() not in (1, m):
                raise ShapeError(f"observation points along {d!r}: {p.numel()} values, expected 1 or {m}")
        self.points = {d: p.expand(m) for d, p in pts.items()}
        self._m = m
        self._coords = model.output_coordinates()
        self._stencils: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    @property
    def m(self) -> int:
        return self._m

    def _stencil(self, d: str, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The interpolation stencil along ``d`` (fixed grid and points: computed once, not at every call)."""
        key = (d, size)
        if key not in self._stencils:
            c = self._coords.get(d)
            grid = (
                torch.arange(size, dtype=torch.float64)
                if c is None
                else torch.as_tensor(c.values, dtype=torch.float64).reshape(-1)
            )
            self._stencils[key] = interpolation_weights(grid, self.points[d])
        return self._stencils[key]

    def __call__(self, state: object) -> torch.Tensor:
        x = self.model.output(state, 0.0)[self.variable.name]
        nd = len(self.variable.dims)
        lead = x.shape[: x.ndim - nd]
        # gather along each dim in turn; after the first located dim the points axis is kept last
        out = x.reshape(*lead, *x.shape[x.ndim - nd :], 1).expand(*lead, *x.shape[x.ndim - nd :], self._m)
        for d in self.variable.dims:
            axis = len(lead)  # located dims are removed, so the current one is always first after the batch
            size = out.shape[axis]
            if d not in self.points:
                if size != 1:
                    raise ObservationError(
                        f"observing {self.variable.name!r}: give a coordinate for dim {d!r} (size {size})"
                    )
                out = out.squeeze(axis)
                continue
            i0, i1, w = self._stencil(d, size)
            w = w.to(out)
            idx0 = i0.reshape(*([1] * axis), 1, *([1] * (out.ndim - axis - 2)), self._m)
            idx1 = i1.reshape(idx0.shape)
            shape = list(out.shape)
            shape[axis] = 1
            a = torch.gather(out, axis, idx0.expand(shape))
            b = torch.gather(out, axis, idx1.expand(shape))
            out = (a * (1 - w) + b * w).squeeze(axis)
        return out

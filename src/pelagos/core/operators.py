"""Observation operators H: state -> predicted observations, shape ``(*batch, m)``.

An operator is any callable ``H(state) -> Tensor`` whose last dimension indexes the ``m`` observed quantities.
Here are the generic, differentiable ones; a model supplies the model-specific piece (how to pull the profile
of a
named variable out of its state) as a plain function ``extract(state, variable) -> Tensor (..., nz)``.
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


class ProfileOperator:
    """Observe named variables at given depths of a column: columns ``[(variable, depth_m), ...]``.

    ``extract(state, variable) -> (..., nz)`` returns the profile of an output variable (e.g. ``"npzd_phy"``)
    from the model state; ``z`` are the cell-centre depths [m, positive down]. Depths are interpolated
    linearly.
    A depth of ``nan`` means a depth-independent quantity (``extract`` then returns ``(...,)`` or ``(...,
    1)``).
    """

    def __init__(
        self,
        columns: Sequence[tuple[str, float]],
        extract: Callable[[object, str], torch.Tensor],
        z: torch.Tensor | Sequence[float] | None,
    ) -> None:
        self.columns = [(str(v), float(d)) for v, d in columns]
        self.extract = extract
        self.z = None if z is None else torch.as_tensor(z, dtype=torch.float64)
        # Group columns by variable so each profile is extracted once per call.
        self._groups: dict[str, tuple[list[int], torch.Tensor]] = {}
        for j, (v, d) in enumerate(self.columns):
            self._groups.setdefault(v, ([], []))[0].append(j)
            self._groups[v][1].append(d)
        self._groups = {
            v: (idx, torch.tensor(ds, dtype=torch.float64)) for v, (idx, ds) in self._groups.items()
        }
        for v, (_, ds) in self._groups.items():
            if self.z is None and bool(torch.isfinite(ds).any()):
                raise ObservationError(
                    f"variable {v!r} is observed at depths but no cell depths z were given"
                )

    @property
    def m(self) -> int:
        return len(self.columns)

    def __call__(self, state: object) -> torch.Tensor:
        parts, order = [], []
        for v, (idx, ds) in self._groups.items():
            prof = self.extract(state, v)
            if bool(torch.isnan(ds).all()):
                vals = prof if prof.shape[-1:] == (1,) else prof.unsqueeze(-1)
                vals = vals.expand(*vals.shape[:-1], len(idx))
            else:
                vals = interpolate_profile(prof, self.z, ds.nan_to_num(float(self.z[0])))
            parts.append(vals)
            order.extend(idx)
        out = torch.cat(parts, dim=-1)
        inv = torch.empty(len(order), dtype=torch.long)
        inv[torch.tensor(order)] = torch.arange(len(order))
        return out[..., inv]

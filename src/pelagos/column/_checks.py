"""Input checks shared by the column numerics (skipped inside torch.func transforms: values are abstract)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch._C._functorch import is_functorch_wrapped_tensor

from ..core.errors import ConfigError, ShapeError, check_finite

BCSpec = tuple[str, "float | torch.Tensor"]


def concrete(*xs: object) -> bool:
    """True when no tensor among ``xs`` is wrapped by vmap/jvp/grad (value checks need concrete data).

    False while ``torch.compile`` traces (the compiled column step, :mod:`pelagos.column.compiled`): values
    are symbolic there, so value checks and value-dependent shortcuts are skipped (the inputs were checked on
    the plain path / when the forcing was read)."""
    if torch.compiler.is_compiling():
        return False
    return not any(torch.is_tensor(x) and is_functorch_wrapped_tensor(x) for x in xs)


def as_tensor(x: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``x`` as a tensor with the dtype/device of ``like`` (tensors keep their graph)."""
    if torch.is_tensor(x):
        return x.to(dtype=like.dtype, device=like.device) if x.dtype != like.dtype else x
    return torch.as_tensor(x, dtype=like.dtype, device=like.device)


def check_nonneg(name: str, x: torch.Tensor, fix: str) -> None:
    if concrete(x):
        check_finite(name, x)
        if bool((x < 0).any()):
            raise ConfigError(f"{name} must be >= 0 everywhere; got minimum {float(x.min()):g}. {fix}")


def check_pos(name: str, x: torch.Tensor, fix: str) -> None:
    if concrete(x):
        check_finite(name, x)
        if bool((x <= 0).any()):
            raise ConfigError(f"{name} must be > 0; got minimum {float(x.min()):g}. {fix}")


def check_last(name: str, x: torch.Tensor, n: int, what: str) -> None:
    if x.dim() < 1 or x.shape[-1] != n:
        raise ShapeError(f"{name} has shape {tuple(x.shape)}; expected (..., {n}) ({what}).")


def batch_shape(names: Sequence[str], shapes: Sequence[tuple[int, ...]]) -> tuple[int, ...]:
    """Broadcast the leading (batch) shapes, naming the inputs when they do not fit together."""
    try:
        return tuple(torch.broadcast_shapes(*shapes))
    except RuntimeError:
        listed = ", ".join(f"{n}{tuple(s)}" for n, s in zip(names, shapes))
        raise ShapeError(
            f"batch dims do not broadcast: {listed}. Give every input the same leading dims "
            "(or size-1 dims, e.g. h as (B, 1, nz) for Y as (B, V, nz))."
        ) from None


def parse_bc(name: str, bc: BCSpec, valid: Sequence[str]) -> tuple[str, float | torch.Tensor]:
    """Split a boundary condition ``(kind, value)``; ``kind`` is case-insensitive and must be in ``valid``."""
    if not (isinstance(bc, tuple | list) and len(bc) == 2 and isinstance(bc[0], str)):
        raise ConfigError(f"{name} must be a pair (kind, value) with kind in {list(valid)}; got {bc!r}.")
    kind = bc[0].strip().lower()
    if kind not in valid:
        raise ConfigError(f"unknown {name} type {bc[0]!r}; valid: {', '.join(map(repr, valid))}.")
    return kind, bc[1]

"""Helpers for states that are a tensor or a dict of tensors (the ``State`` of the Model contract)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..core.errors import ConfigError


def tree_map(fn: Callable[..., torch.Tensor], state: object, *rest: object) -> object:
    """Apply ``fn`` leaf-wise to a tensor or a dict of tensors (and matching ``rest``)."""
    if torch.is_tensor(state):
        return fn(state, *rest)
    if isinstance(state, dict):
        return {k: fn(v, *(r[k] for r in rest)) for k, v in state.items()}
    raise ConfigError(f"state must be a tensor or a dict of tensors; got {type(state).__name__}")


def leaves(state: object) -> list[torch.Tensor]:
    if torch.is_tensor(state):
        return [state]
    if isinstance(state, dict):
        return list(state.values())
    raise ConfigError(f"state must be a tensor or a dict of tensors; got {type(state).__name__}")


def numel(state: object) -> int:
    return sum(t.numel() for t in leaves(state))


def flatten(state: object) -> torch.Tensor:
    """All entries of the state in one vector (dict keys in insertion order)."""
    return torch.cat([t.reshape(-1) for t in leaves(state)])


def unflatten(vec: torch.Tensor, like: object) -> object:
    """Inverse of :func:`flatten` with the shapes of ``like``."""
    out, k = [], 0
    for t in leaves(like):
        out.append(vec[k : k + t.numel()].reshape(t.shape))
        k += t.numel()
    if torch.is_tensor(like):
        return out[0]
    return dict(zip(like.keys(), out))


def flatten_batched(state: object, batch_dims: int = 1) -> torch.Tensor:
    """``(B, n)``: each member's entries in one row (the first ``batch_dims`` dims are kept as rows)."""
    ls = leaves(state)
    B = ls[0].shape[:batch_dims]
    return torch.cat([t.reshape(*B, -1) for t in ls], dim=-1).reshape(-1, sum(t[0].numel() for t in ls))


def unflatten_batched(mat: torch.Tensor, like: object) -> object:
    """Inverse of :func:`flatten_batched` for one batch dim."""
    out, k = [], 0
    for t in leaves(like):
        n = t[0].numel()
        out.append(mat[:, k : k + n].reshape(mat.shape[0], *t.shape[1:]))
        k += n
    if torch.is_tensor(like):
        return out[0]
    return dict(zip(like.keys(), out))

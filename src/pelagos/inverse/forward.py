"""Run a model and sample it at observation times — the one forward map every inverse method differentiates.

Only the ``Model`` contract is used: ``model.step(state, t)`` (pure) and ``model.dt``. Memory: the graph of
every
step is kept for the backward pass unless ``checkpoint`` is given, in which case the steps between two
observation
times are recomputed in the backward pass in segments of ``checkpoint`` steps (memory O(T/checkpoint +
checkpoint)).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint as _ckpt

from ..core.errors import ConfigError
from .observations import ObservationSet

StepFn = Callable[[object, float], object]


def step_function(model: object, dt: float | None = None) -> tuple[StepFn, float]:
    """``(step, dt)`` of a pelagos Model (its ``step``/``dt``) or of a bare ``step(state, t)`` with ``dt``."""
    step = getattr(model, "step", model)
    if not callable(step):
        raise ConfigError(f"{model!r} is neither a Model nor a step(state, t) function")
    dt = dt if dt is not None else getattr(model, "dt", None)
    if dt is None:
        raise ConfigError("a bare step function needs dt=...")
    return step, float(dt)


def propagate(
    model: object,
    state: object,
    n_steps: int,
    *,
    t0: float = 0.0,
    dt: float | None = None,
    checkpoint: int | None = None,
) -> object:
    """State after ``n_steps`` steps from time ``t0``."""
    step, dt = step_function(model, dt)
    k = 0
    while k < n_steps:
        n = n_steps - k if not checkpoint else min(int(checkpoint), n_steps - k)
        if checkpoint and torch.is_grad_enabled():
            state = _ckpt(_segment, step, state, t0 + k * dt, dt, n, use_reentrant=False)
        else:
            state = _segment(step, state, t0 + k * dt, dt, n)
        k += n
    return state


def _segment(step: StepFn, state: object, t: float, dt: float, n: int) -> object:
    for i in range(n):
        state = step(state, t + i * dt)
    return state


def predict(
    model: object,
    state: object,
    obs: ObservationSet,
    *,
    t0: float = 0.0,
    dt: float | None = None,
    checkpoint: int | None = None,
    return_final: bool = False,
    return_states: bool = False,
) -> torch.Tensor | tuple:
    """``H(x(t_i))`` for every observation time: shape ``(n_t, *batch, m)``.

    The run starts from ``state`` at time ``t0`` and stops at the last observation time. With
    ``return_states=True`` the states at the observation times are returned too (stacked if tensors).
    """
    _, dt_ = step_function(model, dt)
    idx = obs.step_indices(dt_, t0).tolist()
    preds, states = [], []
    k = 0
    x = state
    for ki in idx:
        x = propagate(model, x, ki - k, t0=t0 + k * dt_, dt=dt_, checkpoint=checkpoint)
        k = ki
        preds.append(obs.operator(x))
        if return_states:
            states.append(x)
    pred = torch.stack(preds) if preds else torch.zeros(0, obs.m)
    out: tuple = (pred,)
    if return_final:
        out += (x,)
    if return_states:
        out += (torch.stack(states) if states and torch.is_tensor(states[0]) else states,)
    return out if len(out) > 1 else pred

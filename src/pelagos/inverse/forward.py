"""Run a model and sample it at observation times — the forward map every inverse method differentiates.

Only the ``Model`` contract is used: ``model.step(state, t)`` (pure) and ``model.dt``, through
:func:`pelagos.core.rollout`. Memory: the graph of every step is kept for the backward pass unless
``checkpoint`` is given (an int segment length or ``"sqrt"``: segments of ⌈√T⌉ steps for the T steps of the
whole window, cut at the observation times); then the steps between two observation times are recomputed in
the backward pass segment by segment, as ``rollout`` does: about one extra forward run.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..core.errors import ConfigError
from ..core.observations import ObservationSet
from ..core.rollout import rollout, segment_length, split_segment

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
    checkpoint: int | str | None = None,
) -> object:
    """State after ``n_steps`` steps from time ``t0`` (:func:`pelagos.core.rollout`, nothing saved on the
    way)."""
    if n_steps == 0:
        return state
    step, dt = step_function(model, dt)
    target = model if hasattr(model, "step") else step
    traj = rollout(
        target,
        state,
        int(n_steps),
        t0=t0,
        dt=dt,
        save_every=int(n_steps),
        checkpoint=checkpoint,
        include_initial=False,
        observe=lambda s: torch.zeros(()),
    )
    return traj.final


def predict(
    model: object,
    state: object,
    obs: ObservationSet,
    *,
    t0: float = 0.0,
    dt: float | None = None,
    checkpoint: int | str | None = None,
    return_final: bool = False,
    return_states: bool = False,
) -> torch.Tensor | tuple:
    """``H(x(t_i))`` for every observation time: shape ``(n_t, *batch, m)``.

    The run starts from ``state`` at time ``t0`` and stops at the last observation time. With
    ``return_states=True`` the states at the observation times are returned too (stacked if tensors).
    """
    _, dt_ = step_function(model, dt)
    idx = obs.step_indices(dt_, t0).tolist()
    if checkpoint == "sqrt" and idx:  # √T of the whole window (the runs between observations are shorter)
        checkpoint = segment_length("sqrt", max(idx), model)
    preds, states = [], []
    k = 0
    x = state
    for ki in idx:
        # rollout checkpoints only runs longer than one segment: a run between two observations that is not
        # gets two segments (whole blocks of a block model, else its last step alone), so it is still
        # recomputed rather than kept
        seg = checkpoint if checkpoint is None or ki - k > checkpoint else split_segment(ki - k, model)
        x = propagate(model, x, ki - k, t0=t0 + k * dt_, dt=dt_, checkpoint=seg)
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

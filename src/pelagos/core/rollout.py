"""The one time loop of pelagos: ``rollout(model, state, n_steps, ...)``.

Every model, inverse method and demo advances time through :func:`rollout`. It calls a *pure*
``step(state, t) -> state`` ``n_steps`` times at model times ``t_k = t0 + k·dt`` (``k = 0 … n_steps-1``; the
step taken at ``t_k`` produces the state at ``t_{k+1}``), saves every ``save_every``-th state (or an
``observe(state)`` of it) stacked along a new leading time dimension, and returns a :class:`Trajectory`.

Gradients. The loop is plain PyTorch, so autograd, ``torch.func.jvp`` and ``torch.func.vmap`` pass through it.
With ``checkpoint=`` the loop is cut into segments: only the states at segment boundaries are kept for the
backward pass and each segment is recomputed once when its gradient is needed. With segments of length ``s``
the memory of a ``T``-step gradient is ``O(T/s + s)`` states, ``O(√T)`` for ``s = √T``
(``checkpoint="sqrt"``), at the price of about one extra forward pass. For a Model a segment is one
``autograd.Function`` (:mod:`pelagos.core.segment`: forward without a graph, the model's overrides and
parameters as explicit inputs); a bare step function may close over any tensor, so its segments are wrapped
in ``torch.utils.checkpoint`` (non-reentrant), whose saved-tensor hooks find them. Checkpointing only matters
for reverse mode; when gradients are off, or inside a ``torch.func`` transform (``jvp``, ``vmap``, ``grad``),
the plain loop runs instead and gives the same numbers.

Multi-step calls. Without checkpointing, a :class:`~pelagos.core.Model` with a method
``step_block(state, times)`` is asked to advance the steps starting at ``times`` (never past a save point) in
one call; it returns ``(state, ...)`` (same result as ``step`` at each of ``times``), or ``None`` to have the
loop call ``step`` instead (e.g. the column's compiled block, :meth:`~pelagos.column.ColumnModel.step_block`).

State. A tensor or a pytree of tensors: dict, list, tuple, namedtuple or dataclass (dataclass types are
registered with ``torch.utils._pytree`` on first use, which also lets ``torch.func.vmap`` map over them).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch.utils.checkpoint import checkpoint as _checkpoint

from .errors import ConfigError, ShapeError
from .model import Model
from .segment import run_segment

State = Any
StepFn = Callable[[State, float], State]

__all__ = ["Trajectory", "rollout"]


@dataclasses.dataclass
class Trajectory:
    """Result of :func:`rollout`.

    Attributes:
        states: the saved states (or ``observe(state)`` values), each leaf stacked along a new leading time
            dim of length ``len(times)``; ``None`` when nothing was saved.
        times: float64 tensor of the model times of the saved entries (same units as ``dt``).
        final: the state after the last step (always the full state, never the observation).
        steps: step index ``k`` of each saved entry (0 = the initial state).
    """

    states: State
    times: torch.Tensor
    final: State
    steps: list[int]

    def __len__(self) -> int:
        return len(self.steps)

    def at(self, i: int) -> State:
        """The ``i``-th saved entry (negative ``i`` counts from the end), with the structure of the state."""
        if self.states is None:
            raise IndexError("rollout saved nothing (include_initial=False and no save_every step reached)")
        return pytree.tree_map(lambda x: x[i], self.states)


# -- pytree helpers ------------------------------------------------------------------------------------------
def _register_dataclasses(tree: Any) -> None:
    """Register (once) each dataclass type met in ``tree`` as a pytree node, so tree_map reaches inside."""
    if dataclasses.is_dataclass(tree) and not isinstance(tree, type):
        cls = type(tree)
        if cls not in pytree.SUPPORTED_NODES:
            with contextlib.suppress(ValueError):  # already registered elsewhere
                pytree.register_dataclass(cls)
        for f in dataclasses.fields(tree):
            _register_dataclasses(getattr(tree, f.name))
    elif isinstance(tree, dict):
        for v in tree.values():
            _register_dataclasses(v)
    elif isinstance(tree, (list, tuple)):
        for v in tree:
            _register_dataclasses(v)


def _stack(items: list[State]) -> State:
    """Stack a list of identically structured pytrees leaf by leaf along a new dim 0."""
    leaves0, spec = pytree.tree_flatten(items[0])
    columns: list[list[torch.Tensor]] = [[leaf] for leaf in leaves0]
    for i, item in enumerate(items[1:], start=1):
        leaves, spec_i = pytree.tree_flatten(item)
        if spec_i != spec:
            raise ConfigError(
                f"rollout: saved entry {i} has a different structure than entry 0 ({spec_i} vs {spec}); "
                "step() and observe() must return the same pytree structure at every step"
            )
        for col, leaf in zip(columns, leaves):
            col.append(leaf)
    stacked = []
    for j, col in enumerate(columns):
        shapes = {tuple(torch.as_tensor(x).shape) for x in col}
        if len(shapes) > 1:
            raise ShapeError(
                f"rollout: saved leaf {j} changes shape during the run ({sorted(shapes)}); step() must keep "
                "the state's shape — e.g. with a parameter batch (B,), give the initial state its batch dim B"
            )
        stacked.append(torch.stack([torch.as_tensor(x) for x in col]))
    return pytree.tree_unflatten(stacked, spec)


# -- the step function --------------------------------------------------------------------------------------
def _resolve_step(model_or_step: Model | StepFn, dt: float | None) -> tuple[StepFn, float]:
    if isinstance(model_or_step, Model):
        step = model_or_step.step
        dt = float(model_or_step.dt) if dt is None else float(dt)
    elif callable(model_or_step):
        step = model_or_step
        if dt is None:
            raise ConfigError(
                "rollout: dt is required when a step function (not a Model) is given; pass dt=..."
            )
        dt = float(dt)
    else:
        raise ConfigError(
            f"rollout: expected a pelagos.core.Model or a callable step(state, t); got {type(model_or_step)}"
        )
    if not math.isfinite(dt) or dt <= 0:
        raise ConfigError(f"rollout: dt must be a finite positive number; got {dt!r}")
    return step, dt


def segment_length(checkpoint: int | str | None, n_steps: int, model: Any = None) -> int | None:
    """Steps per checkpointed segment of an ``n_steps`` run (``None``: no checkpointing). ``"sqrt"``:
    ``⌈√n_steps⌉``, rounded up to whole multi-step calls of ``model`` (a Model with ``step_block`` and
    ``block_steps`` > 1), so that every call of a segment is a full block: a compiled block is one program
    per length, and a segment that ended mid-block would build (and compile) another for the remainder."""
    if checkpoint is None or checkpoint is False:
        return None
    if checkpoint == "sqrt":
        s = max(1, math.ceil(math.sqrt(n_steps)))
        block = _block_steps(model)
        return max(1, min(n_steps, -(-s // block) * block)) if block > 1 else s
    if isinstance(checkpoint, bool) or not isinstance(checkpoint, int) or checkpoint < 1:
        raise ConfigError(
            f"rollout: checkpoint must be None, a positive int (segment length in steps) or 'sqrt'; "
            f"got {checkpoint!r}"
        )
    return checkpoint


def split_segment(n_steps: int, model: Any = None) -> int:
    """A segment length that makes :func:`rollout` checkpoint a run of ``n_steps`` (≥ 2) that is no longer
    than one segment (it checkpoints only runs longer than one): the largest whole number of ``model``'s
    blocks below ``n_steps`` (24 steps in blocks of 12: 12 + 12), else ``n_steps - 1`` (the last step
    alone). ``1`` for a one-step run, which is then kept."""
    block = _block_steps(model)
    whole = (n_steps - 1) // block * block
    return whole if block > 1 and whole >= block else max(1, n_steps - 1)


def _block_steps(model: Any) -> int:
    """The steps of one multi-step call a Model with ``step_block`` prefers (its ``block_steps``), else 1."""
    if not isinstance(model, Model) or getattr(model, "step_block", None) is None:
        return 1
    k = getattr(model, "block_steps", 1)
    return k if isinstance(k, int) and not isinstance(k, bool) and k > 1 else 1


def _needs_grad(state: State, model_or_step: Model | StepFn) -> bool:
    if not torch.is_grad_enabled():
        return False
    if any(torch.is_tensor(x) and x.requires_grad for x in pytree.tree_leaves(state)):
        return True
    if isinstance(model_or_step, torch.nn.Module):
        if any(p.requires_grad for p in model_or_step.parameters()):
            return True
        if isinstance(model_or_step, Model) and any(
            torch.is_tensor(v) and v.requires_grad for v in model_or_step.parameter_overrides().values()
        ):
            return True
    # A plain step function may close over tensors that require grad: we cannot see them, so assume yes.
    return not isinstance(model_or_step, torch.nn.Module)


# -- the loop ----------------------------------------------------------------------------------------------
def rollout(
    model_or_step: Model | StepFn,
    state: State,
    n_steps: int,
    *,
    t0: float = 0.0,
    dt: float | None = None,
    save_every: int = 1,
    checkpoint: int | str | None = None,
    observe: Callable[[State], Any] | None = None,
    include_initial: bool = True,
    progress: bool = False,
) -> Trajectory:
    """Advance ``state`` by ``n_steps`` steps and return the saved trajectory.

    Args:
        model_or_step: a :class:`~pelagos.core.Model` (``model.step`` and ``model.dt`` are used) or a pure
            callable ``step(state, t) -> state``.
        state: initial state, a tensor or pytree of tensors (dict/list/tuple/namedtuple/dataclass).
        n_steps: number of steps (``>= 0``).
        t0: model time of ``state`` (same units as ``dt``, usually seconds).
        dt: time step; defaults to ``model.dt`` for a Model, required for a step function.
        save_every: save the state after every ``save_every``-th step (steps ``save_every, 2·save_every, …``).
        checkpoint: ``None`` (keep every intermediate for backward), an int segment length, or ``"sqrt"``
            (segments of ``⌈√n_steps⌉`` steps, rounded up to whole blocks of a model's ``block_steps``: O(√T)
            memory for the gradient; :func:`segment_length`). See the module docstring.
        observe: if given, save ``observe(state)`` (any pytree of tensors) instead of the whole state; use
            it to keep only what a loss needs.
        include_initial: also save the initial state (entry 0, time ``t0``).
        progress: show a tqdm progress bar.

    Returns:
        :class:`Trajectory` with ``states`` (each leaf of shape ``(n_saved, *leaf.shape)``), ``times``
        (float64, ``t0 + k·dt``), ``final`` (state after ``n_steps`` steps) and ``steps`` (the ``k``'s).

    Raises:
        ConfigError: invalid ``n_steps``, ``dt``, ``save_every`` or ``checkpoint``.
    """
    step, dt = _resolve_step(model_or_step, dt)
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 0:
        raise ConfigError(f"rollout: n_steps must be a non-negative int; got {n_steps!r}")
    if isinstance(save_every, bool) or not isinstance(save_every, int) or save_every < 1:
        raise ConfigError(f"rollout: save_every must be a positive int; got {save_every!r}")
    # a Model may advance several steps per call: ``step_block(state, times) -> (state, ...)``, or ``None``
    # (not this time); called up to the next save point at most
    block = getattr(model_or_step, "step_block", None) if isinstance(model_or_step, Model) else None
    seg = segment_length(checkpoint, n_steps, model_or_step)
    t0 = float(t0)
    _register_dataclasses(state)
    obs = observe if observe is not None else (lambda s: s)

    saved: list[Any] = []
    saved_steps: list[int] = []
    if include_initial:
        saved.append(obs(state))
        saved_steps.append(0)

    def advance(s: State, k0: int, k1: int, bar: Any = None) -> tuple[State, list[Any]]:
        """Steps k0 … k1-1 (the whole run, or a checkpointed segment): the state at k1 and the entries saved
        on the way; a progress ``bar`` is updated as steps are taken."""
        out = []
        k = k0
        while k < k1:
            n = min(save_every - k % save_every, k1 - k)
            res = block(s, [t0 + j * dt for j in range(k, k + n)]) if block is not None and n > 1 else None
            if res is not None:
                s = res[0]
            else:
                for j in range(k, k + n):
                    s = step(s, t0 + j * dt)
            k += n
            if k % save_every == 0:
                out.append(obs(s))
            if bar is not None:
                bar.update(n)
        return s, out

    use_ckpt = (
        seg is not None
        and seg < n_steps
        and not torch._C._are_functorch_transforms_active()
        and _needs_grad(state, model_or_step)
    )
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_steps, desc="rollout", unit="step")
    try:
        if not use_ckpt:
            state, out = advance(state, 0, n_steps, bar)
            saved.extend(out)
            saved_steps.extend(range(save_every, n_steps + 1, save_every))
        else:
            guard: dict = {}  # shared by the segments of this rollout (see core/segment.py)
            for k0 in range(0, n_steps, seg):
                k1 = min(k0 + seg, n_steps)
                if isinstance(model_or_step, Model):  # explicit inputs: state, overrides, parameters
                    # (the overrides active now are re-installed for the recomputation in backward)
                    state, out = run_segment(model_or_step, advance, state, k0, k1, guard)
                else:  # a bare step may close over any tensor: torch.utils.checkpoint finds them
                    state, out = _checkpoint(advance, state, k0, k1, use_reentrant=False)
                saved.extend(out)
                saved_steps.extend(k for k in range(k0 + 1, k1 + 1) if k % save_every == 0)
                if bar is not None:
                    bar.update(k1 - k0)
    finally:
        if bar is not None:
            bar.close()

    times = torch.tensor([t0 + k * dt for k in saved_steps], dtype=torch.float64)
    states = _stack(saved) if saved else None
    return Trajectory(states=states, times=times, final=state, steps=saved_steps)

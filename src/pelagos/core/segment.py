"""One checkpointed segment of :func:`pelagos.core.rollout` as a ``torch.autograd.Function``.

Why not ``torch.utils.checkpoint``: its non-reentrant form records the segment's graph in the forward pass
and drops each saved tensor through a hook, then recomputes the segment through hooks again in the backward
pass. A water-column step saves hundreds of small tensors, so those hooks cost more than a forward run
(≈ 1.6 forwards for the 110-layer column), and its forward runs the graph-recording step rather than the
faster no-grad one. :class:`SegmentFunction` instead

- **forward**: runs the segment without a graph (``no_grad``: a compiled model takes its inference program)
  and saves only the segment's inputs — the state at the segment start, the parameter overrides installed
  by :meth:`~pelagos.core.model.Model.using`, the model's ``nn.Parameter``\\ s that require grad;
- **backward**: runs the segment again from those inputs with gradients on and back-propagates the incoming
  cotangents (of the final state and of every entry saved on the way, ``observe(state)``) to them with one
  ``torch.autograd.grad`` call.

The overrides and parameters are explicit inputs of the Function, so their gradients reach the caller with
``.backward()`` (accumulated into ``.grad``) and with ``torch.autograd.grad(loss, inputs)`` alike. This needs
to know every tensor the step uses that requires grad, so it is only used for a :class:`Model` (its
parameters and overrides are all there is); a bare ``step`` callable may close over any tensor and keeps
``torch.utils.checkpoint``. A Model whose step reads some *other* tensor that requires grad (an attribute
that is not an ``nn.Parameter``, a closure) is caught when its first segment is recomputed: a clear error
names the way out (``checkpoint=None``, or make it a parameter or an override).

Second derivatives (``create_graph=True``: Hessian-vector products, the Laplace covariance) work: under
``create_graph`` the recomputation starts from views of the true inputs (the parameters swapped for views
of themselves for the duration), so the gradient it returns is itself differentiable.

Randomness: the step is pure (the Model contract). As ``torch.utils.checkpoint`` does, the CPU generator's
state at the segment start is restored for the recomputation (CUDA generators are not: a model that draws
random numbers on a GPU inside its step gets inconsistent gradients).

Results: the same operations on the same numbers as the plain loop, so the forward values are those of the
plain loop and the gradients those of the recorded graph (tests/test_rollout_segment.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.utils._pytree as pytree

from .errors import ConfigError

__all__ = ["SegmentFunction", "run_segment", "run_segment_torch_checkpoint"]

Advance = Callable[[Any, int, int], tuple[Any, list[Any]]]


def _differentiable(x: torch.Tensor) -> bool:
    return x.is_floating_point() or x.is_complex()


class _Out(int):
    """Index of an output tensor among the Function's outputs (not a leaf value)."""


class _Segment:
    """What one segment needs besides its tensor inputs (held by the Function's ``ctx``)."""

    def __init__(
        self,
        model: Any,
        advance: Advance,
        k0: int,
        k1: int,
        state_leaves: list[Any],
        state_spec: Any,
        override_names: list[str],
        override_consts: dict[str, Any],
        params: list[tuple[str, torch.nn.Parameter]],
        guard: dict,
    ) -> None:
        self.model = model
        self.advance = advance
        self.k0, self.k1 = k0, k1
        self.state_leaves = state_leaves  # tensor slots are None (they come in as Function inputs)
        self.state_spec = state_spec
        self.tensor_slots = [i for i, x in enumerate(state_leaves) if x is None]
        self.override_names = override_names
        self.override_consts = override_consts
        self.params = params
        self.guard = guard  # shared by the segments of one rollout: the input check runs once
        self.out_spec: Any = None
        self.out_leaves: list[Any] = []  # non-tensor output leaves; tensor slots hold their output index
        self.rng: torch.Tensor | None = None

    def split(self, inputs: Sequence[torch.Tensor]) -> tuple[list, list, list]:
        ns, no = len(self.tensor_slots), len(self.override_names)
        return list(inputs[:ns]), list(inputs[ns : ns + no]), list(inputs[ns + no :])

    def run(self, state_tensors: list, override_tensors: list, install: bool = True) -> tuple[Any, list[Any]]:
        """The segment's steps from these inputs; ``install``: put the overrides in place first (the forward
        runs inside rollout, where they are in place already)."""
        leaves = list(self.state_leaves)
        for i, x in zip(self.tensor_slots, state_tensors):
            leaves[i] = x
        state = pytree.tree_unflatten(leaves, self.state_spec)
        if not install:
            return self.advance(state, self.k0, self.k1)
        raw = dict(self.override_consts)
        raw.update(zip(self.override_names, override_tensors))
        with self.model.using_only(raw):
            return self.advance(state, self.k0, self.k1)

    def outputs(self, result: Any) -> tuple[list[torch.Tensor], list[int], Any, list[Any]]:
        """Unique output tensors, the output index of each tensor leaf, the spec and the leaves."""
        leaves, spec = pytree.tree_flatten(result)
        unique: list[torch.Tensor] = []
        where: dict[int, int] = {}
        index: list[int] = []
        for x in leaves:
            if torch.is_tensor(x):
                j = where.setdefault(id(x), len(unique))
                if j == len(unique):
                    unique.append(x)
                index.append(j)
        return unique, index, spec, leaves


class SegmentFunction(torch.autograd.Function):
    """``apply(seg, *state_tensors, *override_tensors, *parameters) -> unique output tensors`` (see the module
    doc); the outputs are the tensor leaves of ``(final_state, saved_entries)``, each distinct tensor once."""

    @staticmethod
    def forward(ctx: Any, seg: _Segment, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        seg.rng = torch.get_rng_state()
        state_t, over_t, _ = seg.split(inputs)
        result = seg.run(state_t, over_t, install=False)  # autograd.Function.forward runs without a graph
        unique, index, spec, leaves = seg.outputs(result)
        seg.out_spec = spec
        k = iter(index)
        seg.out_leaves = [_Out(next(k)) if torch.is_tensor(x) else x for x in leaves]
        ctx.seg = seg
        ctx.save_for_backward(*inputs)
        ctx.set_materialize_grads(False)
        constant = {id(x) for x in inputs if not x.requires_grad}  # inputs passed through unchanged
        ctx.mark_non_differentiable(*[u for u in unique if not _differentiable(u) or id(u) in constant])
        return tuple(unique)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        seg: _Segment = ctx.seg
        inputs = ctx.saved_tensors
        need = ctx.needs_input_grad[1:]
        none = (None,) * (1 + len(inputs))
        if not any(need) or all(g is None for g in grads):
            return none
        create_graph = torch.is_grad_enabled()
        state_t, over_t, _ = seg.split(inputs)
        ns, no = len(state_t), len(over_t)

        def leaf(x: torch.Tensor, wanted: bool) -> torch.Tensor:
            if not (wanted and _differentiable(x)):
                return x.detach()
            # create_graph: a view keeps the way back to the true input for the second derivative; the
            # capture of autograd.grad at the view stops the inner backward pass there
            return x.view_as(x) if create_graph else x.detach().requires_grad_(True)

        state_r = [leaf(x, w) for x, w in zip(state_t, need[:ns])]
        over_r = [leaf(x, w) for x, w in zip(over_t, need[ns : ns + no])]
        swapped = {}
        if create_graph:  # parameters as views too (a captured leaf would pull the outer graph in)
            swapped = {n: p.view_as(p) for (n, p), w in zip(seg.params, need[ns + no :]) if w}
        param_r = [swapped.get(n, p) for n, p in seg.params]
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.random.fork_rng(devices=[]))
            torch.set_rng_state(seg.rng)
            stack.enter_context(torch.enable_grad())
            if swapped:
                from torch.nn.utils.stateless import _reparametrize_module

                stack.enter_context(_reparametrize_module(seg.model, swapped))
            result = seg.run(state_r, over_r)
            unique, _, spec, _ = seg.outputs(result)
            if spec != seg.out_spec or len(unique) != len(grads):
                raise RuntimeError(
                    "rollout(checkpoint=...): the recomputed segment returned a different structure than its "
                    "forward run; the step must be pure (same inputs, same outputs)"
                )
            roots = [(o, g) for o, g in zip(unique, grads) if g is not None and o.requires_grad]
            wrt = [x for x, w in zip(state_r + over_r + param_r, need) if w and x.requires_grad]
            if not seg.guard.get("checked"):
                _check_inputs([o for o, _ in roots], wrt, seg)
                seg.guard["checked"] = True
            got = iter(())
            if roots and wrt:
                got = iter(
                    torch.autograd.grad(
                        [o for o, _ in roots],
                        wrt,
                        [g for _, g in roots],
                        allow_unused=True,
                        create_graph=create_graph,
                    )
                )
        out = [next(got) if w and x.requires_grad else None for x, w in zip(state_r + over_r + param_r, need)]
        return (None, *out)


def _check_inputs(roots: list[torch.Tensor], wrt: list[torch.Tensor], seg: _Segment) -> None:
    """Raise when the recomputed graph reaches a leaf that requires grad and is not one of the inputs (a
    tensor the step reads from elsewhere, or one computed outside the step from such a leaf)."""
    own = {id(x.grad_fn) for x in wrt if x.grad_fn is not None}
    own_leaves = {id(x) for x in wrt if x.grad_fn is None}
    seen: set[int] = set()
    todo = [r.grad_fn for r in roots if r.grad_fn is not None]
    while todo:
        fn = todo.pop()
        if id(fn) in seen or id(fn) in own:
            continue
        seen.add(id(fn))
        var = getattr(fn, "variable", None)
        if var is not None:  # AccumulateGrad of a leaf
            if id(var) not in own_leaves:
                _raise_external(seg, tuple(var.shape))
            continue
        todo.extend(f for f, _ in fn.next_functions if f is not None)


def _raise_external(seg: _Segment, shape: tuple) -> None:
    what = f"a tensor (or one computed from a leaf tensor of shape {shape})"
    raise ConfigError(
        f"rollout(checkpoint=...): the step of {type(seg.model).__name__} uses {what} that requires grad but "
        "is neither one of its nn.Parameters, nor a parameter override (Model.using), nor part of the state; "
        "its gradient cannot be delivered by the checkpointed segment. Register it as an nn.Parameter, pass "
        "it through Model.using or the state, or run with checkpoint=None"
    )


def run_segment(model: Any, advance: Advance, state: Any, k0: int, k1: int, guard: dict) -> tuple[Any, list]:
    """Steps ``k0 … k1-1`` of ``advance`` on ``model`` as one :class:`SegmentFunction`: ``(state, saved)``.

    ``guard`` is a dict shared by the segments of one rollout: the overrides and parameters are read at its
    first segment (they cannot change during a rollout), and the check for tensors outside the inputs runs in
    the first recomputation only.
    """
    leaves, spec = pytree.tree_flatten(state)
    state_tensors = [x for x in leaves if torch.is_tensor(x)]
    slots = [None if torch.is_tensor(x) else x for x in leaves]
    if "overrides" not in guard:
        guard["overrides"] = model.parameter_overrides()
        guard["params"] = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    overrides, params = guard["overrides"], guard["params"]
    names = [n for n, v in overrides.items() if torch.is_tensor(v)]
    consts = {n: v for n, v in overrides.items() if not torch.is_tensor(v)}
    seg = _Segment(model, advance, k0, k1, slots, spec, names, consts, params, guard)
    outs = SegmentFunction.apply(seg, *state_tensors, *[overrides[n] for n in names], *[p for _, p in params])
    if torch.is_tensor(outs):
        outs = (outs,)
    leaves_out = [outs[j] if type(j) is _Out else j for j in seg.out_leaves]
    return pytree.tree_unflatten(leaves_out, seg.out_spec)


def run_segment_torch_checkpoint(
    model: Any, advance: Advance, state: Any, k0: int, k1: int, guard: dict
) -> tuple[Any, list]:
    """:func:`run_segment`'s reference: the same segment through ``torch.utils.checkpoint`` (non-reentrant)
    with the parameter overrides active now re-installed at the recomputation (rollout's path before the
    segment Function). Kept for comparisons (tests/test_rollout_segment.py, benchmarks/column_adjoint.py);
    ``guard`` is unused."""
    from torch.utils.checkpoint import checkpoint

    snap = model.parameter_overrides()

    def segment(s: Any, k0: int, k1: int) -> tuple[Any, list]:
        with model.using_only(snap):
            return advance(s, k0, k1)

    return checkpoint(segment, state, k0, k1, use_reentrant=False)

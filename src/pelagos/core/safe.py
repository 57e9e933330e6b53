"""Safe operations: exact forward values, bounded and documented gradients.

Ocean codes are full of functions whose derivative blows up where the model spends time: ``sqrt(k)`` of a
turbulent kinetic energy that sits at its floor, ``N²/S²`` when the shear vanishes, ``x**p`` with ``p < 1`` at
an empty nutrient pool, ``max(x, 0)`` used to keep a concentration positive. One infinite or NaN partial
derivative anywhere poisons the whole gradient of a long rollout. Two families live here:

**Safe versions** (:func:`safe_sqrt`, :func:`safe_pow`, :func:`safe_div`, :func:`positive_part`,
:func:`clamp_st`): the *forward value is bit-for-bit the plain one* (on the documented domain); only the
derivative is replaced near the singular point by a bounded surrogate, stated in each docstring. Away from
the singular region (``|x| ≥ eps``) the derivative is the exact one. They are implemented as one
``torch.autograd.Function`` with ``backward`` (differentiable, so double backward works), ``jvp`` (forward
mode) and an automatic vmap rule, so autograd, ``torch.func.jvp``, ``torch.func.grad`` and ``torch.func.vmap``
all pass through.

**Smooth replacements** (:func:`smooth_max`, :func:`smooth_min`, :func:`softclamp`, :func:`smooth_step`):
C∞ functions that *differ* from the hard ones by at most ``log(2)/sharpness`` (``smooth_step``: by a sigmoid
of width ``1/sharpness``). ``sharpness`` has units of 1/[x]; larger = closer to the hard function but steeper
gradients (the derivative of ``smooth_step`` peaks at ``sharpness/4``). They are plain PyTorch compositions.

``eps`` defaults to ``1e-12`` (in the units of ``x``); choose it near the smallest physically meaningful
magnitude of the argument (e.g. the TKE floor ``k_min``) — the surrogate gradient is then bounded by the
true gradient at ``eps``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Tensorish = torch.Tensor | float

__all__ = [
    "clamp_st",
    "positive_part",
    "safe_div",
    "safe_pow",
    "safe_sqrt",
    "smooth_max",
    "smooth_min",
    "smooth_step",
    "softclamp",
]

DEFAULT_EPS = 1e-12


class _Surrogate(torch.autograd.Function):
    """y = value_fn(*xs) with partial derivatives ∂y/∂x_i = partials_fn(*xs)[i] (same shape as y).

    ``xs`` are tensors already broadcast to one shape (the reduction of broadcast dims is then done by the
    ``expand`` in front of this Function). ``partials_fn`` is written with differentiable ops so that
    double backward works.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(value_fn: Callable, partials_fn: Callable, *xs: torch.Tensor) -> torch.Tensor:
        return value_fn(*xs)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        _, partials_fn, *xs = inputs
        ctx.partials_fn = partials_fn
        ctx.save_for_backward(*xs)
        ctx.save_for_forward(*xs)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        xs = ctx.saved_tensors
        partials = ctx.partials_fn(*xs)
        grads = [grad_out * p if need else None for p, need in zip(partials, ctx.needs_input_grad[2:])]
        return (None, None, *grads)

    @staticmethod
    def jvp(ctx, _value_tangent, _partials_tangent, *tangents: torch.Tensor | None) -> torch.Tensor:
        xs = ctx.saved_tensors
        partials = ctx.partials_fn(*xs)
        out = None
        for p, t in zip(partials, tangents):
            if t is not None:
                out = p * t if out is None else out + p * t
        return out if out is not None else torch.zeros_like(xs[0])


def _apply(value_fn: Callable, partials_fn: Callable, *args: Tensorish) -> torch.Tensor:
    ref = next((a for a in args if torch.is_tensor(a)), None)
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.get_default_dtype()
    device = ref.device if ref is not None else None
    ts = [a if torch.is_tensor(a) else torch.as_tensor(a, dtype=dtype, device=device) for a in args]
    ts = torch.broadcast_tensors(*ts)
    return _Surrogate.apply(value_fn, partials_fn, *ts)


# -- safe versions: exact values, bounded derivatives ------------------------------------------------------
def safe_sqrt(x: torch.Tensor, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """√x with derivative ``1 / (2 √max(x, eps))`` (≤ ``1/(2√eps)``) instead of ∞ at 0.

    Value: ``torch.sqrt(x)`` for ``x ≥ 0``; ``0`` for ``x < 0`` (where ``torch.sqrt`` gives NaN), with
    derivative 0 there. Exact derivative for ``x ≥ eps``.
    """

    def value(x):
        return torch.sqrt(torch.clamp(x, min=0))

    def partials(x):
        d = 0.5 / torch.sqrt(torch.clamp(x, min=eps))
        return (torch.where(x >= 0, d, torch.zeros_like(d)),)

    return _apply(value, partials, x)


def safe_pow(x: torch.Tensor, p: Tensorish, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """``x**p`` for ``x ≥ 0`` with bounded derivatives at ``x = 0`` (for ``p < 1`` the true one is ∞).

    Value: ``torch.pow(x, p)`` for ``x ≥ 0``, ``pow(0, p)`` for ``x < 0`` (no NaN for fractional p).
    ``∂/∂x = p·max(x, eps)^(p-1)`` for ``x ≥ 0``, 0 for ``x < 0``; exact for ``x ≥ eps``.
    ``∂/∂p = x^p·log(max(x, eps))`` (0 at x = 0 instead of 0·(−∞) = NaN), so ``p`` may be learnable.
    """

    if not torch.is_tensor(p):  # keep a Python exponent as is: torch.pow(x, 0.5) takes a different kernel
        p = float(p)

        def value1(x):
            return torch.pow(torch.clamp(x, min=0), p)

        def partials1(x):
            dx = p * torch.pow(torch.clamp(x, min=eps), p - 1)
            return (torch.where(x >= 0, dx, torch.zeros_like(x)),)

        return _apply(value1, partials1, x)

    def value(x, p):
        return torch.pow(torch.clamp(x, min=0), p)

    def partials(x, p):
        xs = torch.clamp(x, min=eps)
        dx = torch.where(x >= 0, p * torch.pow(xs, p - 1), torch.zeros_like(x))
        dp = value(x, p) * torch.log(xs)
        return dx, dp

    return _apply(value, partials, x, p)


def safe_div(a: Tensorish, b: Tensorish, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """``a / b`` with derivatives computed with ``b`` moved away from 0 to ``b_s = sign(b)·max(|b|, eps)``.

    Value: ``a / b`` exactly (including ±inf/NaN at ``b = 0``: guard the value yourself, e.g. with
    ``b = b + eps`` or :func:`torch.where`, if ``b`` can be exactly 0). Derivatives: ``∂/∂a = 1/b_s`` and
    ``∂/∂b = −a/b_s²``, bounded by ``1/eps`` and ``|a|/eps²``; exact for ``|b| ≥ eps``.
    """

    def value(a, b):
        return a / b

    def partials(a, b):
        sign = torch.where(b < 0, -torch.ones_like(b), torch.ones_like(b))
        bs = sign * torch.clamp(b.abs(), min=eps)
        return 1.0 / bs, -a / (bs * bs)

    return _apply(value, partials, a, b)


def positive_part(x: torch.Tensor, leak: float = 0.0) -> torch.Tensor:
    """``max(x, 0)`` (value exact) with derivative 1 for ``x > 0`` and ``leak`` for ``x ≤ 0``.

    ``leak = 0`` is the plain derivative (a clipped concentration gets no gradient); ``leak = 1`` is the
    straight-through estimator (the gradient passes as if no clipping happened, so an optimiser can pull a
    clipped value back); values in between interpolate. Derivative ∈ [min(leak,1), max(leak,1)].
    """

    def value(x):
        return torch.clamp(x, min=0)

    def partials(x):
        return (torch.where(x > 0, torch.ones_like(x), torch.full_like(x, leak)),)

    return _apply(value, partials, x)


def clamp_st(x: torch.Tensor, lo: float | None = None, hi: float | None = None) -> torch.Tensor:
    """``torch.clamp(x, lo, hi)`` (value exact) with the straight-through derivative 1 everywhere."""

    def value(x):
        return torch.clamp(x, min=lo, max=hi)

    def partials(x):
        return (torch.ones_like(x),)

    return _apply(value, partials, x)


# -- smooth replacements -----------------------------------------------------------------------------------
def smooth_max(a: Tensorish, b: Tensorish, sharpness: float) -> torch.Tensor:
    """Smooth ``max(a, b) = b + softplus(a − b)`` with softplus of slope ``sharpness`` (units 1/[a]).

    ``max(a, b) ≤ smooth_max ≤ max(a, b) + log(2)/sharpness`` (the gap is largest at a = b); derivatives in
    [0, 1] and summing to 1.
    """
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    # Written around max(a, b) rather than b + softplus(a − b), so that an infinite argument gives the other
    # argument or ±inf instead of inf − inf = NaN (e.g. a Chl:C ratio that is infinite at night).
    return torch.maximum(a, b) + F.softplus(-torch.abs(a - b), beta=sharpness)


def smooth_min(a: Tensorish, b: Tensorish, sharpness: float) -> torch.Tensor:
    """Smooth ``min(a, b) = −smooth_max(−a, −b)``: ``min − log(2)/sharpness ≤ smooth_min ≤ min``."""
    return -smooth_max(-torch.as_tensor(a), -torch.as_tensor(b), sharpness)


def softclamp(x: torch.Tensor, lo: float, hi: float, sharpness: float) -> torch.Tensor:
    """Smooth clamp to ``(lo, hi)``: ``lo + softplus(x − lo) − softplus(x − hi)`` (slope ``sharpness``).

    Strictly increasing, strictly inside ``(lo, hi)``, derivative in (0, 1); differs from
    ``torch.clamp(x, lo, hi)`` by at most ``log(2)/sharpness`` (at the corners) and by an exponentially
    small amount ``~exp(−sharpness·d)/sharpness`` at distance ``d`` from both bounds.
    """
    if not hi > lo:
        from .errors import ConfigError

        raise ConfigError(f"softclamp: need lo < hi; got lo={lo!r}, hi={hi!r}")
    y = (
        lo
        + F.softplus(x - lo, beta=sharpness, threshold=30.0)
        - F.softplus(x - hi, beta=sharpness, threshold=30.0)
    )
    return torch.clamp(y, lo, hi)  # only removes round-off excursions (e.g. hi + 2⁻⁵²) for large sharpness


def smooth_step(x: torch.Tensor, sharpness: float, x0: float = 0.0) -> torch.Tensor:
    """Smooth Heaviside ``H(x − x0)``: ``sigmoid(sharpness·(x − x0))``; 10–90 % rise over ``4.4/sharpness``.

    Derivative ≤ ``sharpness/4`` (at ``x0``).
    """
    return torch.sigmoid(sharpness * (x - x0))

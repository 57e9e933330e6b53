"""Gradient checks for users and tests: is the gradient of *this* function, model or rollout right?

- :func:`check_directional`: reverse-mode directional derivative ``∇f·d`` against central finite
  differences ``(f(x + h d) − f(x − h d)) / 2h`` along random directions ``d``, in float64.
- :func:`check_jvp_vjp`: forward mode against reverse mode, ``wᵀ(J v)`` vs ``(Jᵀw)ᵀ v`` — both exact, so
  they must agree to round-off (1e-10), which also catches a wrong custom ``jvp`` or ``backward`` rule.
- :func:`rollout_gradient_report`: the directional check of a loss on a rollout of 1, 2, 4, … steps with
  respect to the free parameters (unconstrained values) and/or the initial state; a relative error that
  grows with the number of steps points at a step whose gradient is slightly wrong (or at chaos).

Vector-valued outputs are reduced to a scalar with fixed random weights ``Σ w ⊙ f(x)``. Each input gets a
direction scaled to its own root-mean-square size (so ``h`` is a relative step); the default ``h = 1e-5``
balances the O(h²) truncation error of central differences against the O(ε|f|/h) round-off. Relative
errors ~1e-8…1e-6 are normal; ~1e-3 or worse means a wrong gradient.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.utils._pytree as pytree

from ._torch_quirks import load_jvp_decompositions
from .errors import ConfigError
from .model import Model
from .rollout import rollout

__all__ = ["GradCheckReport", "check_directional", "check_jvp_vjp", "rollout_gradient_report"]

Inputs = torch.Tensor | Sequence[torch.Tensor]


@dataclasses.dataclass
class GradCheckReport:
    """Rows of (derivative by one method, by another, relative error); prints as a table.

    Attributes:
        title: what was checked.
        rows: one dict per check with keys ``label``, ``a``, ``b``, ``abs_error``, ``rel_error``.
        names: column titles for ``a`` and ``b`` (e.g. ``("reverse-mode", "finite-diff")``).
        tol: relative tolerance; a row passes if ``abs_error ≤ tol·max(|a|, |b|) + atol``.
        atol: absolute floor for derivatives that are zero along a direction.
    """

    title: str
    rows: list[dict[str, Any]]
    names: tuple[str, str]
    tol: float
    atol: float = 0.0

    def row_ok(self, r: dict[str, Any]) -> bool:
        return bool(r["abs_error"] <= self.tol * max(abs(r["a"]), abs(r["b"])) + self.atol)

    @property
    def max_rel_error(self) -> float:
        return max((r["rel_error"] for r in self.rows), default=0.0)

    @property
    def passed(self) -> bool:
        return all(self.row_ok(r) for r in self.rows)

    def __str__(self) -> str:
        head = ["", self.names[0], self.names[1], "rel. error", "ok"]
        cells = [
            [
                str(r["label"]),
                f"{r['a']: .12e}",
                f"{r['b']: .12e}",
                f"{r['rel_error']:.2e}",
                "yes" if self.row_ok(r) else "NO",
            ]
            for r in self.rows
        ]
        widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(head)]
        lines = [self.title, "  ".join(h.rjust(w) for h, w in zip(head, widths))]
        lines.append("  ".join("-" * w for w in widths))
        lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
        verdict = "PASSED" if self.passed else "FAILED"
        lines.append(f"max relative error {self.max_rel_error:.2e} (tolerance {self.tol:g}): {verdict}")
        return "\n".join(lines)


# -- helpers ----------------------------------------------------------------------------------------------
def promote64(t: Any) -> Any:
    """Detached double-precision copy of a tensor (float64, or complex128 for complex); others unchanged."""
    if not torch.is_tensor(t):
        return t
    if t.is_complex():
        return t.detach().to(torch.complex128)
    return t.detach().to(torch.float64) if t.is_floating_point() else t.detach()


def _as_tuple(x: Inputs) -> tuple[torch.Tensor, ...]:
    xs = (x,) if torch.is_tensor(x) else tuple(x)
    for i, t in enumerate(xs):
        if not torch.is_tensor(t) or not t.is_floating_point():
            raise ConfigError(
                f"gradient check: input {i} must be a floating-point tensor; got {type(t).__name__}"
            )
    return tuple(t.detach().to(torch.float64) for t in xs)


def _scalarizer(out: Any, gen: torch.Generator) -> Callable[[Any], torch.Tensor]:
    """Fixed random weights for every leaf of ``out`` (scalar outputs are used as they are)."""
    leaves = pytree.tree_leaves(out)
    if len(leaves) == 1 and leaves[0].numel() == 1:
        return lambda o: pytree.tree_leaves(o)[0].reshape(())
    ws = [torch.randn(leaf.shape, generator=gen, dtype=torch.float64) for leaf in leaves]
    return lambda o: sum((w * leaf).sum() for w, leaf in zip(ws, pytree.tree_leaves(o)))


def _directions(xs: tuple[torch.Tensor, ...], gen: torch.Generator) -> list[torch.Tensor]:
    out = []
    for x in xs:
        d = torch.randn(x.shape, generator=gen, dtype=torch.float64)
        rms = float(x.pow(2).mean().sqrt()) if x.numel() else 0.0
        out.append(d * (rms if rms > 0 else 1.0))
    return out


def _rel(a: float, b: float) -> float:
    scale = max(abs(a), abs(b))
    return abs(a - b) / scale if scale > 0 else 0.0


# -- public checks ----------------------------------------------------------------------------------------
def check_directional(
    fn: Callable[..., Any],
    x: Inputs,
    *,
    n_directions: int = 3,
    h: float = 1e-5,
    seed: int = 0,
    tol: float = 1e-6,
    atol: float = 0.0,
    richardson: bool = False,
    title: str | None = None,
) -> GradCheckReport:
    """Reverse-mode directional derivatives of ``fn(*x)`` vs central finite differences, in float64.

    Args:
        fn: ``fn(*x)`` returning a tensor or pytree of tensors (reduced with fixed random weights).
        x: a tensor or a sequence of tensors (cast to float64; the caller's tensors are not modified).
        n_directions: random directions to test.
        h: relative finite-difference step (each input's direction is scaled to its RMS size).
        seed: seed of the directions and output weights.
        tol, atol: pass if ``|ad − fd| ≤ tol·max(|ad|, |fd|) + atol``.
        richardson: use the O(h⁴) Richardson combination ``(4 D(h/2) − D(h))/3`` (two more calls).

    Returns:
        :class:`GradCheckReport` with columns reverse-mode / finite-diff; ``report.passed`` is the verdict.
    """
    xs = _as_tuple(x)
    gen = torch.Generator().manual_seed(seed)
    xg = tuple(t.clone().requires_grad_() for t in xs)
    out = fn(*xg)
    scal = _scalarizer(out, gen)
    grads = torch.autograd.grad(scal(out), xg, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, xs)]

    def f(step: float, ds: list[torch.Tensor]) -> float:
        with torch.no_grad():
            return float(scal(fn(*(t + step * d for t, d in zip(xs, ds)))))

    rows = []
    for k in range(n_directions):
        ds = _directions(xs, gen)
        ad = float(sum((g * d).sum() for g, d in zip(grads, ds)))
        fd = (f(h, ds) - f(-h, ds)) / (2 * h)
        if richardson:
            fd2 = (f(h / 2, ds) - f(-h / 2, ds)) / h
            fd = (4 * fd2 - fd) / 3
        rows.append(
            {"label": f"dir {k}", "a": ad, "b": fd, "abs_error": abs(ad - fd), "rel_error": _rel(ad, fd)}
        )
    return GradCheckReport(
        title or f"directional derivative: reverse mode vs central differences (float64, h={h:g})",
        rows,
        ("reverse-mode", "finite-diff"),
        tol,
        atol,
    )


def check_jvp_vjp(
    fn: Callable[..., Any],
    x: Inputs,
    *,
    n_directions: int = 3,
    seed: int = 0,
    tol: float = 1e-10,
    title: str | None = None,
) -> GradCheckReport:
    """Forward mode (``torch.func.jvp``) against reverse mode (``torch.func.vjp``): ``wᵀ(Jv) = (Jᵀw)ᵀv``.

    Both sides are exact derivatives, so they agree to round-off; ``tol`` defaults to 1e-10 (float64).
    """
    load_jvp_decompositions()
    xs = _as_tuple(x)
    gen = torch.Generator().manual_seed(seed)
    out, vjp_fn = torch.func.vjp(fn, *xs)
    leaves, spec = pytree.tree_flatten(out)
    rows = []
    for k in range(n_directions):
        vs = tuple(_directions(xs, gen))
        # random real weights on real leaves; complex and integer outputs get zero weight (real pairing only)
        ws = [
            torch.randn(leaf.shape, generator=gen, dtype=leaf.dtype)
            if leaf.is_floating_point()
            else torch.zeros_like(leaf)
            for leaf in leaves
        ]
        _, jv = torch.func.jvp(fn, xs, vs)
        fwd = float(sum((w * t).sum() for w, t in zip(ws, pytree.tree_leaves(jv)) if t.is_floating_point()))
        cot = vjp_fn(pytree.tree_unflatten(ws, spec))
        rev = float(sum((c * v).sum() for c, v in zip(cot, vs) if c is not None))
        rows.append(
            {
                "label": f"dir {k}",
                "a": fwd,
                "b": rev,
                "abs_error": abs(fwd - rev),
                "rel_error": _rel(fwd, rev),
            }
        )
    return GradCheckReport(
        title or "forward mode (jvp) vs reverse mode (vjp), float64",
        rows,
        ("forward wᵀJv", "reverse (Jᵀw)ᵀv"),
        tol,
    )


def _default_loss(traj: Any) -> torch.Tensor:
    """½ Σ over every saved entry and leaf of the squared state (|z|² for complex leaves; integer leaves,
    such as step counters, are left out)."""
    total = 0.0
    for leaf in pytree.tree_leaves(traj.states):
        if leaf.is_complex():
            total = total + (leaf.real**2 + leaf.imag**2).sum()
        elif leaf.is_floating_point():
            total = total + (leaf**2).sum()
    return 0.5 * total


def rollout_gradient_report(
    model: Model,
    state: Any,
    steps: Sequence[int] = (1, 2, 4, 8, 16),
    *,
    loss: Callable[[Any], torch.Tensor] | None = None,
    wrt: str = "params",
    n_directions: int = 1,
    h: float = 1e-5,
    seed: int = 0,
    tol: float = 1e-6,
    checkpoint: int | str | None = None,
    save_every: int = 1,
) -> GradCheckReport:
    """Gradient of ``loss(rollout(model, state, T))`` vs central differences for each ``T`` in ``steps``.

    Runs on a float64 deep copy of ``model`` (the caller's model is untouched).

    Args:
        model: a :class:`Model`; its free parameters (:meth:`Model.select_free`) are checked in their
            unconstrained space when ``wrt`` includes ``"params"``.
        state: initial state (tensor or pytree of tensors).
        steps: rollout lengths to test.
        loss: ``loss(trajectory) -> scalar``; default ``½ Σ states²`` over all saved entries.
        wrt: ``"params"``, ``"state"`` or ``"both"``.
        n_directions: random directions per length.
        h, seed, tol: as in :func:`check_directional`.
        checkpoint, save_every: passed to :func:`rollout`.
    """
    if wrt not in ("params", "state", "both"):
        raise ConfigError(f"rollout_gradient_report: wrt must be 'params', 'state' or 'both'; got {wrt!r}")
    m = copy.deepcopy(model).to(torch.float64)
    names = m.free_parameter_names()
    if wrt in ("params", "both") and not names:
        raise ConfigError(
            "rollout_gradient_report: the model has no free parameters; call model.select_free([...]) "
            f"with some of {m.parameter_names()} or use wrt='state'"
        )
    leaves, spec = pytree.tree_flatten(state)
    leaves = [promote64(t) for t in leaves]
    u0 = m.free_vector().to(torch.float64)
    loss = loss or _default_loss
    use_p, use_s = wrt in ("params", "both"), wrt in ("state", "both")
    if use_s and not all(torch.is_tensor(t) and t.is_floating_point() for t in leaves):
        raise ConfigError(
            "rollout_gradient_report: the state has complex or integer leaves (e.g. spectral fields, step "
            "counters), which finite differences cannot perturb; use wrt='params'"
        )

    rows: list[dict[str, Any]] = []
    for T in steps:
        if isinstance(T, bool) or not isinstance(T, int) or T < 1:
            raise ConfigError(f"rollout_gradient_report: steps must be positive ints; got {T!r}")

        def f(*xs: torch.Tensor, T: int = T) -> torch.Tensor:
            u = xs[0] if use_p else u0
            s_leaves = xs[1 if use_p else 0 :] if use_s else leaves
            with m.using(u):
                tr = rollout(
                    m,
                    pytree.tree_unflatten(list(s_leaves), spec),
                    T,
                    checkpoint=checkpoint,
                    save_every=save_every,
                )
            return loss(tr)

        xs = ([u0] if use_p else []) + (leaves if use_s else [])
        rep = check_directional(f, xs, n_directions=n_directions, h=h, seed=seed + T, tol=tol)
        for r in rep.rows:
            r["label"] = f"T={T}" + (f" {r['label']}" if n_directions > 1 else "")
            r["steps"] = T
        rows += rep.rows
    what = {
        "params": f"free parameters {names}",
        "state": "the initial state",
        "both": f"{names} and the state",
    }
    title = (
        f"rollout gradient vs central differences (float64, h={h:g}) w.r.t. {what[wrt]}"
        f"{'' if loss is not _default_loss else ', loss = ½Σ states²'}"
    )
    return GradCheckReport(title, rows, ("reverse-mode", "finite-diff"), tol)


def default_steps(n_max: int) -> list[int]:
    """1, 2, 4, … up to ``n_max`` (inclusive when ``n_max`` is a power of two)."""
    return [2**k for k in range(int(math.log2(max(n_max, 1))) + 1)]

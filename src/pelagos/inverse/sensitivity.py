"""Sensitivity map: the misfit on a grid of two free parameters, with forward-mode gradients at every node.

For a :class:`~pelagos.inverse.problem.VariationalProblem` built without priors (the loss is the observation
misfit ``L = ½ Σ ((H(x(t_i)) − y_i)/σ_i)²``, dimensionless), :func:`loss_map` evaluates ``L`` and its gradient
``∂L/∂u`` with respect to the two *unconstrained* parameters ``u`` (log space for positive parameters, see
:mod:`pelagos.core.params`) on the tensor grid ``u_a × u_b``. The gradient comes from forward mode (one
Jacobian-vector product per parameter, both in one vmapped pass when the model allows it), the same quantity
the optimisers of ``pelagos calibrate`` follow. ``pelagos sensitivity CONFIG``
(:func:`pelagos.io.inverse_run.run_sensitivity`) builds the problem from a calibrate configuration and writes
the map, JSON and a quiver plot.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..core._torch_quirks import load_jvp_decompositions
from ..core.errors import ConfigError

__all__ = ["SensitivityMap", "loss_and_gradient", "loss_map"]


@dataclass
class SensitivityMap:
    """The map: ``loss[i, j]`` at ``(u_a[i], u_b[j])`` (unconstrained values) and ``grad[i, j] = (∂L/∂u_a,
    ∂L/∂u_b)``; ``values_a/values_b`` the physical values of the axes."""

    names: list[str]
    u_a: torch.Tensor
    u_b: torch.Tensor
    values_a: torch.Tensor
    values_b: torch.Tensor
    loss: torch.Tensor
    grad: torch.Tensor
    wall_time: float = 0.0
    mode: str = "forward"
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "names": self.names,
            "unconstrained": {self.names[0]: self.u_a.tolist(), self.names[1]: self.u_b.tolist()},
            "values": {self.names[0]: self.values_a.tolist(), self.names[1]: self.values_b.tolist()},
            "loss": self.loss.tolist(),
            "grad_unconstrained": self.grad.tolist(),
            "gradient_mode": self.mode,
            "wall_time": self.wall_time,
            **self.extra,
        }


def loss_and_gradient(
    cost: Callable[[torch.Tensor], torch.Tensor], u: torch.Tensor
) -> tuple[float, torch.Tensor]:
    """``(L(u), ∂L/∂u)`` by forward mode: ``torch.func.jacfwd`` (all tangents in one vmapped pass), or, for a
    model that cannot be vmapped, one dual-number pass per entry of ``u``."""
    import torch.autograd.forward_ad as fwAD

    load_jvp_decompositions()
    u = u.detach()

    def with_value(z: torch.Tensor):
        c = cost(z)
        return c, c

    try:
        g, val = torch.func.jacfwd(with_value, has_aux=True)(u)
        return float(val), g.detach()
    except (RuntimeError, NotImplementedError, TypeError, ValueError):
        pass
    grads, val = [], float("nan")
    for i in range(u.numel()):
        e = torch.zeros_like(u)
        e[i] = 1.0
        with fwAD.dual_level():
            out = cost(fwAD.make_dual(u, e))
            p, t = fwAD.unpack_dual(out)
        val = float(p.detach())
        grads.append(float(t) if t is not None else 0.0)
    return val, torch.tensor(grads, dtype=u.dtype)


def loss_map(
    cost: Callable[[torch.Tensor], torch.Tensor],
    u_a: Sequence[float] | torch.Tensor,
    u_b: Sequence[float] | torch.Tensor,
    *,
    names: Sequence[str] = ("a", "b"),
    to_physical: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
    dtype: torch.dtype = torch.float64,
    progress: bool = False,
) -> SensitivityMap:
    """``cost`` (a function of the 2-vector of unconstrained parameters) and its forward-mode gradient on the
    grid ``u_a × u_b``; ``to_physical(i, u)`` maps axis ``i`` to physical values (for the record)."""
    ua = torch.as_tensor(u_a, dtype=dtype).reshape(-1)
    ub = torch.as_tensor(u_b, dtype=dtype).reshape(-1)
    if len(names) != 2:
        raise ConfigError(f"a sensitivity map needs exactly two parameters; got {list(names)}")
    t0 = time.perf_counter()
    loss = torch.empty(len(ua), len(ub), dtype=dtype)
    grad = torch.empty(len(ua), len(ub), 2, dtype=dtype)
    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(ua) * len(ub), desc="sensitivity map", leave=False)
        except ImportError:  # pragma: no cover
            bar = None
    for i, a in enumerate(ua):
        for j, b in enumerate(ub):
            val, g = loss_and_gradient(cost, torch.stack([a, b]))
            loss[i, j], grad[i, j] = val, g
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    phys = to_physical or (lambda i, u: u)
    return SensitivityMap(
        list(names),
        ua,
        ub,
        phys(0, ua).detach(),
        phys(1, ub).detach(),
        loss,
        grad,
        wall_time=time.perf_counter() - t0,
    )

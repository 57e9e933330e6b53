"""Gamma unit hydrograph: the routing of HBV runoff inside a basin.

The unrouted runoff of day ``t`` reaches the outlet spread over the following days with weights

    w_k ∝ τ_k^(a−1) exp(−τ_k / θ) / (Γ(a) θ^a),    τ_k = k + 1/2,   k = 0 … L−1   (days)

normalised so that Σ_k w_k = 1 (the volume is conserved exactly), with the shape ``a = max(route_a, 0) + 0.1``
and the scale ``θ = max(route_b, 0) + 0.5`` days, ``L = 15`` days (the δHBV convention). The routed discharge
is the causal convolution

    Q_routed(t) = Σ_k w_k · Q(t − k),

where days before the first one come from a *history* of the last ``L − 1`` days of unrouted runoff (zeros at
a cold start). Everything is batched over basins and differentiable in ``route_a``, ``route_b`` and ``Q``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core.errors import ShapeError

UH_LENGTH = 15  # days
SHAPE_OFFSET = 0.1  # a = relu(route_a) + 0.1
SCALE_OFFSET = 0.5  # θ = relu(route_b) + 0.5 (days)


def gamma_weights(route_a: Tensor, route_b: Tensor, length: int = UH_LENGTH) -> Tensor:
    """Unit-hydrograph weights, shape ``(*route_a.shape, length)``, summing to 1 along the last dim.

    Args:
        route_a: shape parameter before the offset (dimensionless, published range [0, 2.9]).
        route_b: scale parameter before the offset (days, published range [0, 6.5]).
        length: number of daily ordinates.
    """
    route_a, route_b = torch.broadcast_tensors(torch.as_tensor(route_a), torch.as_tensor(route_b))
    a = torch.relu(route_a)[..., None] + SHAPE_OFFSET
    theta = torch.relu(route_b)[..., None] + SCALE_OFFSET
    tau = torch.arange(length, dtype=a.dtype, device=a.device) + 0.5
    log_w = (a - 1.0) * torch.log(tau) - tau / theta - torch.lgamma(a) - a * torch.log(theta)
    w = torch.exp(log_w)
    return w / w.sum(-1, keepdim=True)


def route(q: Tensor, weights: Tensor, history: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Convolve daily runoff with per-basin unit hydrographs.

    Args:
        q: unrouted runoff, ``(n_days, n_basins)`` (mm/d).
        weights: ``(n_basins, L)`` from :func:`gamma_weights`.
        history: the ``L − 1`` days of unrouted runoff before ``q[0]``, oldest first, ``(n_basins, L − 1)``;
            ``None``: zeros (cold start).

    Returns:
        ``(routed (n_days, n_basins) mm/d, new history (n_basins, L − 1))``.
    """
    if q.ndim != 2 or weights.ndim != 2 or weights.shape[0] != q.shape[1]:
        raise ShapeError(
            f"route: q must be (n_days, n_basins) and weights (n_basins, L); got {tuple(q.shape)} and "
            f"{tuple(weights.shape)}"
        )
    n_basins, L = weights.shape
    if history is None:
        history = q.new_zeros(n_basins, L - 1)
    if history.shape != (n_basins, L - 1):
        raise ShapeError(f"route: history must be ({n_basins}, {L - 1}); got {tuple(history.shape)}")
    x = torch.cat([history, q.transpose(0, 1)], dim=1)  # (n_basins, L-1+n_days), oldest first
    # conv1d computes a correlation: y[j] = Σ_m kernel[m] x[j+m]; with the kernel flipped, kernel[m] =
    # w[L-1-m], y[j] = Σ_k w[k] x[j+L-1-k] = Σ_k w_k Q(t − k) for t = j.
    y = F.conv1d(x[None], weights.flip(-1)[:, None, :].to(x.dtype), groups=n_basins)[0]
    return y.transpose(0, 1), x[:, x.shape[1] - (L - 1) :]


def route_step(q_today: Tensor, weights: Tensor, history: Tensor) -> tuple[Tensor, Tensor]:
    """One day of :func:`route`: ``q_today (..., n_basins)``, ``history (..., n_basins, L − 1)``.

    Returns ``(routed today (..., n_basins), new history)``; the same numbers as :func:`route` day by day.
    """
    x = torch.cat([history, q_today[..., None]], dim=-1)  # (..., n_basins, L) oldest first
    routed = (x * weights.flip(-1)).sum(-1)
    return routed, x[..., 1:]

"""Batched tridiagonal solve (Thomas algorithm). PLACEHOLDER: autograd through the sweep.

To be replaced by the implicit-differentiation version (see issue 2). Signature is final:
``solve_tridiagonal(lower, diag, upper, rhs)``; all broadcast over leading dims, last dim N;
``lower[..., 0]`` and ``upper[..., N-1]`` are ignored.
"""

from __future__ import annotations

import torch


def solve_tridiagonal(lower: torch.Tensor, diag: torch.Tensor, upper: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    shape = torch.broadcast_shapes(lower.shape, diag.shape, upper.shape, rhs.shape)
    a, b, c, d = (x.expand(shape) for x in (lower, diag, upper, rhs))
    n = shape[-1]
    cp = [c[..., 0] / b[..., 0]]
    dp = [d[..., 0] / b[..., 0]]
    for i in range(1, n):
        m = b[..., i] - a[..., i] * cp[-1]
        cp.append(c[..., i] / m)
        dp.append((d[..., i] - a[..., i] * dp[-1]) / m)
    x = [dp[-1]]
    for i in range(n - 2, -1, -1):
        x.append(dp[i] - cp[i] * x[-1])
    return torch.stack(x[::-1], dim=-1)

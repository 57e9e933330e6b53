"""Pure-torch batched Thomas sweep: the always-available path of ``solve_tridiagonal``.

Works on any device and floating dtype. Arrays are transposed to a level-major layout ((N, P) for the
matrix, (N, K, P) for the right-hand sides) so that each level of the sweep is a handful of contiguous
vectorised ops writing into preallocated rows (no allocation per level). Cost: about 6 small kernel
launches per level, so it is fast for large batches and launch-bound for small ones.
Canonical inputs as in :mod:`pelagos.core._thomas_c`: a, b, c (P, N); d (P, K, N).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def _factor(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Level-major 1/pivot and upper/pivot, both (N, P), for level-major a, b, c."""
    n = b.shape[0]
    inv = torch.empty_like(b)
    cp = torch.empty_like(b)
    torch.reciprocal(b[0], out=inv[0])
    for i in range(1, n):
        torch.mul(c[i - 1], inv[i - 1], out=cp[i - 1])
        torch.addcmul(b[i], a[i], cp[i - 1], value=-1, out=inv[i])
        inv[i].reciprocal_()
    return inv, cp


def _sweep(a: torch.Tensor, inv: torch.Tensor, cp: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Forward elimination and back substitution for level-major d (N, K, P); a, inv, cp (N, P)."""
    n = d.shape[0]
    x = torch.empty_like(d)
    torch.mul(d[0], inv[0], out=x[0])
    for i in range(1, n):
        torch.addcmul(d[i], a[i], x[i - 1], value=-1, out=x[i])
        x[i].mul_(inv[i])
    for i in range(n - 2, -1, -1):
        x[i].addcmul_(cp[i], x[i + 1], value=-1)
    return x


def solve(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, None]:
    """x with A x = d; a, b, c: (P, N), d: (P, K, N). Returns (x (P, K, N), None: finiteness not known)."""
    at, bt, ct = (t.t().contiguous() for t in (a, b, c))
    inv, cp = _factor(at, bt, ct)
    x = _sweep(at, inv, cp, d.permute(2, 1, 0).contiguous())
    return x.permute(2, 1, 0).contiguous(), None


def transpose_diagonals(a: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sub- and super-diagonal of A^T: (c_{i-1}, a_{i+1}), zero-padded at the ignored ends."""
    return F.pad(c[..., :-1], (1, 0)), F.pad(a[..., 1:], (0, 1))


def shifted(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_{i-1}, x_{i+1}) along the last dim, zero outside the column."""
    return F.pad(x[..., :-1], (1, 0)), F.pad(x[..., 1:], (0, 1))


def adjoint(
    a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    x: torch.Tensor,
    g: torch.Tensor,
    matrix_grads: bool | tuple[bool, bool, bool],
    kernel: Callable[..., torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """lam = A^-T g and (optionally) the cotangents of a, b, c summed over K; canonical shapes.

    ``kernel(a, b, c, d) -> x`` is the forward solve to reuse (default: this module's sweep).
    """
    at, ct = transpose_diagonals(a, c)
    at, ct = at.contiguous(), ct.contiguous()
    lam = kernel(at, b, ct, g) if kernel is not None else solve(at, b, ct, g)[0]
    need = (matrix_grads,) * 3 if isinstance(matrix_grads, bool) else tuple(matrix_grads)
    xm, xp = shifted(x) if need[0] or need[2] else (None, None)
    return (
        lam,
        -(lam * xm).sum(1) if need[0] else None,
        -(lam * x).sum(1) if need[1] else None,
        -(lam * xp).sum(1) if need[2] else None,
    )

"""CUDA path of ``solve_tridiagonal``: one Triton kernel per sweep instead of ~6 launches per level.

Each GPU thread owns one system (one right-hand side) and runs the whole Thomas recurrence over the
N levels, so a solve is a single launch whatever N is. The factor ``c'`` is kept in a scratch array
for the back substitution. Shared-matrix right-hand sides recompute the (cheap) factorisation per
right-hand side here. The adjoint reuses the same kernel on the transposed diagonals.

UNVERIFIED ON GPU: written and checked with Triton's CPU interpreter only (see docs/tridiagonal.md).
As a guard, the first CUDA call compares the kernel with the pure-torch sweep on a small system and
falls back to the torch sweep (with a warning) if they disagree or the kernel fails to compile.
"""

from __future__ import annotations

import warnings

import torch

from . import _thomas_torch

try:
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - triton is optional
    triton = None

_BLOCK = 128
_state: dict[str, bool] = {}


if triton is not None:

    @triton.jit
    def _thomas_kernel(a_ptr, b_ptr, c_ptr, d_ptr, x_ptr, cp_ptr, S, K, N, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        s = pid * BLOCK + tl.arange(0, BLOCK)
        live = s < S
        mrow = (s // K).to(tl.int64) * N  # start of this system's matrix row
        rrow = s.to(tl.int64) * N  # start of this system's rhs / solution row
        b0 = tl.load(b_ptr + mrow, mask=live, other=1.0)
        cprev = tl.load(c_ptr + mrow, mask=live, other=0.0) / b0
        dprev = tl.load(d_ptr + rrow, mask=live, other=0.0) / b0
        tl.store(cp_ptr + rrow, cprev, mask=live)
        tl.store(x_ptr + rrow, dprev, mask=live)
        for i in range(1, N):
            ai = tl.load(a_ptr + mrow + i, mask=live, other=0.0)
            bi = tl.load(b_ptr + mrow + i, mask=live, other=1.0)
            ci = tl.load(c_ptr + mrow + i, mask=live, other=0.0)
            di = tl.load(d_ptr + rrow + i, mask=live, other=0.0)
            inv = 1.0 / (bi - ai * cprev)
            cprev = ci * inv
            dprev = (di - ai * dprev) * inv
            tl.store(cp_ptr + rrow + i, cprev, mask=live)
            tl.store(x_ptr + rrow + i, dprev, mask=live)
        xnext = dprev
        for j in range(1, N):
            i = N - 1 - j
            cpi = tl.load(cp_ptr + rrow + i, mask=live, other=0.0)
            xi = tl.load(x_ptr + rrow + i, mask=live, other=0.0) - cpi * xnext
            tl.store(x_ptr + rrow + i, xi, mask=live)
            xnext = xi


def _launch(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    P, K, N = d.shape
    x = torch.empty_like(d)
    S = P * K
    if S == 0:
        return x
    cp = torch.empty_like(d)
    grid = (triton.cdiv(S, _BLOCK),)
    _thomas_kernel[grid](a, b, c, d, x, cp, S, K, N, BLOCK=_BLOCK)
    return x


def _self_check(device: torch.device) -> bool:
    """Compare the kernel with the torch sweep once per process on a small dominant system."""
    g = torch.Generator(device="cpu").manual_seed(0)
    a, c = (torch.randn(37, 9, generator=g, dtype=torch.float64) for _ in range(2))
    b = a.abs() + c.abs() + 1
    d = torch.randn(37, 2, 9, generator=g, dtype=torch.float64)
    a, b, c, d = (t.to(device) for t in (a, b, c, d))
    try:
        got = _launch(a, b, c, d)
    except Exception as exc:
        warnings.warn(
            f"pelagos: Triton tridiagonal kernel failed ({exc}); using the torch sweep", stacklevel=3
        )
        return False
    ref = _thomas_torch.solve(a, b, c, d)[0]
    if not torch.allclose(got, ref, rtol=1e-10, atol=1e-12):
        warnings.warn(
            "pelagos: Triton tridiagonal kernel disagrees with the torch sweep; using the latter",
            stacklevel=3,
        )
        return False
    return True


def available() -> bool:
    return triton is not None and torch.cuda.is_available()


def supports(t: torch.Tensor) -> bool:
    if not (available() and t.is_cuda and t.dtype in (torch.float32, torch.float64)):
        return False
    key = str(t.device)
    if key not in _state:
        _state[key] = _self_check(t.device)
    return _state[key]


def solve(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, None]:
    """x with A x = d; canonical contiguous a, b, c (P, N) and d (P, K, N) on one CUDA device."""
    return _launch(a, b, c, d), None


def adjoint(
    a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    x: torch.Tensor,
    g: torch.Tensor,
    matrix_grads: bool | tuple[bool, bool, bool],
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    return _thomas_torch.adjoint(a, b, c, x, g, matrix_grads, kernel=_launch)

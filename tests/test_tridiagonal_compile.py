"""The tridiagonal solve as a ``torch.library`` custom op (``torch.ops.pelagos.solve_tridiagonal``): its
fake-tensor rule and backward, float64 gradients against finite differences, and ``torch.compile``
(``fullgraph=True``) of a function that calls ``solve_tridiagonal``, forward and backward, equal to eager."""

from __future__ import annotations

import pytest
import torch

from pelagos.core import SolverError, solve_tridiagonal

F64 = torch.float64
OP = torch.ops.pelagos.solve_tridiagonal

# (lower, diag, upper, rhs) shapes: plain batch, broadcast matrix parts, shared matrix with 3 rhs
SHAPES = [
    ((3, 6), (3, 6), (3, 6), (3, 6)),
    ((6,), (2, 6), (1, 6), (2, 6)),
    ((2, 1, 5), (2, 1, 5), (2, 1, 5), (2, 3, 5)),
]


def _inputs(shapes, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(shapes[0], dtype=F64, generator=g)
    c = torch.randn(shapes[2], dtype=F64, generator=g)
    b = torch.randn(shapes[1], dtype=F64, generator=g)
    b = torch.sign(b) * (a.abs().amax() + c.abs().amax() + 0.5 + b.abs())
    d = torch.randn(shapes[3], dtype=F64, generator=g)
    return [t.to(dtype).requires_grad_() for t in (a, b, c, d)]


@pytest.mark.parametrize("shapes", SHAPES)
def test_custom_op_matches_solve_and_passes_opcheck(shapes):
    args = _inputs(shapes)
    x = OP(*args, True)
    torch.testing.assert_close(x, solve_tridiagonal(*args), rtol=0, atol=0)  # same kernel, same bits
    assert x.is_contiguous()
    # schema, fake-tensor rule, autograd registration, AOT dispatch (static and dynamic shapes)
    torch.library.opcheck(OP, (*args, True))


def test_custom_op_fake_tensor_rule_gives_shape_and_promoted_dtype():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        a = torch.empty(4, 1, 7, dtype=torch.float32)
        d = torch.empty(4, 3, 7, dtype=F64)
        x = OP(a, a, a, d, True)
    assert x.shape == (4, 3, 7) and x.dtype == F64


@pytest.mark.parametrize("shapes", SHAPES)
def test_custom_op_gradients_against_finite_differences(shapes):
    """float64: torch.autograd.gradcheck, and dL/dθ·v against a central difference along a random
    direction v of all four arguments at once."""
    args = _inputs(shapes, seed=1)
    assert torch.autograd.gradcheck(lambda *t: OP(*t, False), args, eps=1e-6, atol=1e-8, rtol=1e-6)
    w = torch.randn(torch.broadcast_shapes(*(t.shape for t in args)), dtype=F64)
    grads = torch.autograd.grad((OP(*args, True) * w).sum(), args)
    vs = [torch.randn_like(t) for t in args]
    eps = 1e-6
    with torch.no_grad():
        plus = (OP(*(t + eps * v for t, v in zip(args, vs)), True) * w).sum()
        minus = (OP(*(t - eps * v for t, v in zip(args, vs)), True) * w).sum()
    fd = float((plus - minus) / (2 * eps))
    ad = float(sum((g * v).sum() for g, v in zip(grads, vs)))
    assert abs(fd - ad) <= 1e-7 * abs(ad) + 1e-9
    # and the op's gradients are those of the eager solve
    for u, v in zip(grads, torch.autograd.grad((solve_tridiagonal(*args) * w).sum(), args)):
        torch.testing.assert_close(u, v, rtol=1e-13, atol=1e-14)


def test_custom_op_checks_the_solution():
    a, b, c, d = (t.detach() for t in _inputs(SHAPES[0]))
    b = b.clone()
    b[1, 0] = 0.0  # zero first pivot
    a = a.clone()
    a[1, 0] = 0.0
    with pytest.raises(SolverError, match="pivot"):
        OP(a, b, torch.zeros_like(c), d, True)


def _column_step(lower, diag, upper, rhs):
    """What a compiled column step does around the solve: build the matrix, solve, use the result."""
    x = solve_tridiagonal(lower, 2.0 * diag, upper, rhs + 1.0)
    y = solve_tridiagonal(
        lower[..., None, :], diag[..., None, :], upper[..., None, :], torch.stack([x, rhs], -2)
    )
    return (y * y).sum() + x.sum()


def _compiled_equals_eager(backend: str, dtype=F64, tol=1e-13):
    torch._dynamo.reset()
    args = _inputs(((5, 9),) * 4, seed=2, dtype=dtype)
    f = torch.compile(_column_step, backend=backend, fullgraph=True)
    loss = f(*args)
    grads = torch.autograd.grad(loss, args)
    ref = _column_step(*args)
    ref_grads = torch.autograd.grad(ref, args)
    torch.testing.assert_close(loss, ref, rtol=tol, atol=tol)
    for u, v in zip(grads, ref_grads):
        torch.testing.assert_close(u, v, rtol=tol, atol=tol)
    # bad input still raises the library's error under compile (checked while tracing)
    with pytest.raises(Exception, match="last dimension"):
        torch.compile(lambda a, d: solve_tridiagonal(a, a, a, d), backend=backend, fullgraph=True)(
            args[0].detach(), torch.ones(5, 4, dtype=dtype)
        )


def test_compile_fullgraph_forward_and_backward_equal_eager_aot_eager():
    """Dynamo + AOTAutograd with the op's fake rule and backward (no code generation: quick)."""
    _compiled_equals_eager("aot_eager")


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_compile_fullgraph_forward_and_backward_equal_eager_inductor(dtype):
    """The Inductor backend (generated C++ around the op); ~20-60 s of compilation on a loaded machine."""
    _compiled_equals_eager("inductor", dtype, 1e-12 if dtype == F64 else 1e-5)

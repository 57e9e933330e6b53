"""The C++ registration of ``torch.ops.pelagos.solve_tridiagonal`` (``core/_thomas_op.cpp``): the same bits
as the Python kernels (forward, fused adjoint, threaded large batches, broadcast layouts, float32/float64),
pelagos' errors from the C++ kernels, the dtypes/backends it hands to Python, no Python running in its
kernels (eager, and under Inductor's C++ wrapper), and the fallback to the Python registration with one
warning when the build fails."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from pelagos.core import ConfigError, ShapeError, SolverError, _thomas_op, solve_tridiagonal
from pelagos.core import tridiagonal as T
from test_tridiagonal_compile import _inputs as _dominant

F64 = torch.float64
OP = torch.ops.pelagos.solve_tridiagonal
BWD = torch.ops.pelagos.solve_tridiagonal_adjoint
ROOT = Path(__file__).resolve().parents[1]
PACKAGE = str(Path(T.__file__).resolve().parents[1])  # .../pelagos

cpp_only = pytest.mark.skipif(
    T.op_registration() != "c++",
    reason=f"C++ operator not in use here: {_thomas_op.build_error() or 'PELAGOS_TRIDIAGONAL_OP=python'}",
)

# (lower, diag, upper, rhs) shapes: plain, broadcast matrix, shared matrix with K rhs, matrix broadcast
# along a leading dim (rhs permuted internally), one system, scalar-path remainder of a vector block
SHAPES = [
    ((3, 6), (3, 6), (3, 6), (3, 6)),
    ((6,), (2, 6), (1, 6), (2, 6)),
    ((2, 1, 5), (2, 1, 5), (2, 1, 5), (2, 3, 5)),
    ((4, 7), (4, 7), (4, 7), (3, 4, 7)),
    ((1, 9), (1, 9), (1, 9), (1, 9)),
    ((21, 1, 13), (21, 1, 13), (21, 1, 13), (21, 2, 13)),
    # one matrix, 61 right-hand sides: pairs of vector blocks, a single block and a scalar remainder
    # (8 float64 / 16 float32 lanes)
    ((1, 1, 11), (1, 1, 11), (1, 1, 11), (1, 61, 11)),
    ((11,), (11,), (11,), (61, 11)),
]


def _inputs(shapes, dtype=F64, seed=0):
    """Diagonally dominant systems (test_tridiagonal_compile's), without gradients."""
    return [t.detach() for t in _dominant(shapes, seed=seed, dtype=dtype)]


def _python_kernels(a, b, c, d, gx):
    """Forward and fused adjoint through the Python kernels (ctypes, today's Python registration)."""
    x = T._py_solve(a, b, c, d, True)
    return x, T._py_adjoint(a, b, c, x, gx, True, True, True, True)


def _bits_equal(u: torch.Tensor, v: torch.Tensor) -> bool:
    return u.dtype == v.dtype and u.shape == v.shape and torch.equal(u, v)


@cpp_only
@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("shapes", SHAPES)
def test_cpp_kernels_are_bitwise_the_python_kernels(shapes, dtype):
    a, b, c, d = _inputs(shapes, dtype)
    gx = torch.randn(torch.broadcast_shapes(*(t.shape for t in (a, b, c, d))), dtype=dtype)
    x, grads = _python_kernels(a, b, c, d, gx)
    assert _bits_equal(OP(a, b, c, d, True), x)
    for u, v in zip(BWD(a, b, c, x, gx, True, True, True, True), grads):
        assert _bits_equal(u, v)
    # what is not needed comes back empty
    empty = BWD(a, b, c, x, gx, False, True, False, False)
    assert empty[0].numel() == empty[2].numel() == empty[3].numel() == 0
    assert _bits_equal(empty[1], grads[1])


@cpp_only
@pytest.mark.parametrize("shapes", SHAPES[:4])
def test_eager_gradients_are_bitwise_those_of_the_python_autograd_function(shapes):
    """The C++ autograd node (summing cotangents to broadcast inputs) against _FastSolve, the lean Python
    autograd.Function of the Python registration; also non-contiguous and mixed-dtype arguments."""
    args = [t.requires_grad_() for t in _inputs(shapes, seed=3)]
    x = solve_tridiagonal(*args)
    g = torch.randn_like(x)
    ours = torch.autograd.grad(x, args, g)
    (a, b, c, d), lay = T._validate(tuple(args))
    xr = T._fast_apply(a, b, c, d, True, lay, T._backend(d))
    assert _bits_equal(x, xr.contiguous())
    for u, v in zip(ours, torch.autograd.grad(xr, args, g)):
        assert _bits_equal(u, v)
    # non-contiguous rhs (a transposed view) and a float32 diagonal promoted to float64
    a, b, c, d = (t.detach() for t in args)
    dt = d.transpose(-1, -2).contiguous().transpose(-1, -2).requires_grad_()
    b32 = b.float().requires_grad_()
    x2 = solve_tridiagonal(a, b32, c, dt)
    gb, gd = torch.autograd.grad(x2, (b32, dt), g)
    with torch.no_grad():
        (a2, _b, c2, _d), lay2 = T._validate((a, b32, c, dt))
    assert x2.dtype == F64 and gb.dtype == torch.float32
    b64 = b32.double().detach().requires_grad_()
    xr2 = T._fast_apply(a2, b64, c2, dt, True, lay2, T._backend(dt))
    rb, rd = torch.autograd.grad(xr2, (b64, dt), g)
    assert _bits_equal(x2, xr2.contiguous()) and _bits_equal(gb, rb.float()) and _bits_equal(gd, rd)


@cpp_only
@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_threaded_large_batch_is_bitwise_the_single_threaded_one(dtype):
    """Enough systems to split over torch's threads (at::parallel_for, chunks of whole vector blocks, as
    the ctypes path splits them); an odd count exercises the scalar remainder."""
    _threads_agree(_inputs(((2051, 1, 64),) * 3 + ((2051, 2, 64),), dtype))
    # one matrix, 1100 right-hand sides: the right-hand sides are split over the threads instead
    _threads_agree(_inputs(((1, 1, 64),) * 3 + ((1, 1100, 64),), dtype))


def _threads_agree(inputs: list) -> None:
    a, b, c, d = inputs
    gx = torch.randn_like(d)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        x1 = OP(a, b, c, d, True)
        g1 = BWD(a, b, c, x1, gx, True, True, True, True)
        lam1 = BWD(a, b, c, x1, gx, False, False, False, True)[3]  # no matrix cotangent: split as well
        torch.set_num_threads(3)
        x3 = OP(a, b, c, d, True)
        g3 = BWD(a, b, c, x3, gx, True, True, True, True)
        lam3 = BWD(a, b, c, x3, gx, False, False, False, True)[3]
    finally:
        torch.set_num_threads(old)
    assert _bits_equal(x1, x3) and _bits_equal(lam1, lam3) and _bits_equal(lam1, g1[3])
    for u, v in zip(g1, g3):
        assert _bits_equal(u, v)
    x, grads = _python_kernels(a, b, c, d, gx)
    assert _bits_equal(x1, x)
    for u, v in zip(g1, grads):
        assert _bits_equal(u, v)


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_one_matrix_for_many_rhs_equals_the_matrix_copied_per_rhs(dtype):
    """A matrix shared by K right-hand sides is factorised once and swept a vector of right-hand sides at a
    time; copying the matrix to every right-hand side (one system each, vectors across systems) must give
    the same solution to the bit (same operations), and the same gradients up to the order of the sums
    over right-hand sides; a NaN in one right-hand side of the vector path is still reported."""
    K = 61
    a, b, c, d = _inputs(((1, 1, 11),) * 3 + ((1, K, 11),), dtype, seed=5)
    rows = [t.expand(K, 1, 11).contiguous() for t in (a, b, c)]
    x = solve_tridiagonal(a, b, c, d)
    xr = solve_tridiagonal(*rows, d.reshape(K, 1, 11)).reshape(1, K, 11)
    assert _bits_equal(x, xr)
    A = torch.diag_embed(b[0, 0]) + torch.diag_embed(a[0, 0, 1:], -1) + torch.diag_embed(c[0, 0, :-1], 1)
    tol = 1e-12 if dtype == F64 else 1e-4
    torch.testing.assert_close(x[0] @ A.T, d[0], rtol=tol, atol=tol)
    args = [t.clone().requires_grad_() for t in (a, b, c, d)]
    rargs = [t.clone().requires_grad_() for t in (*rows, d.reshape(K, 1, 11))]
    g = torch.randn(1, K, 11, dtype=dtype)
    ours = torch.autograd.grad(solve_tridiagonal(*args), args, g)
    ref = torch.autograd.grad(solve_tridiagonal(*rargs), rargs, g.reshape(K, 1, 11))
    for u, v in zip(ours[:3], ref[:3]):
        torch.testing.assert_close(u, v.sum(0, keepdim=True), rtol=tol, atol=tol)
    assert _bits_equal(ours[3], ref[3].reshape(1, K, 11))
    bad = d.clone()
    bad[0, 20, 4] = float("nan")  # inside the second vector block
    with pytest.raises(SolverError):
        solve_tridiagonal(a, b, c, bad)


@cpp_only
def test_cpp_kernels_raise_pelagos_errors():
    a, b, c, d = _inputs(SHAPES[0])
    bad = b.clone()
    bad[1, 0] = 0.0
    a0 = a.clone()
    a0[1, 0] = 0.0
    for call in (OP, lambda *t: solve_tridiagonal(*t[:4], check=t[4])):
        with pytest.raises(SolverError, match=r"pivot.*batch index \(1,\), row 0"):
            call(a0, bad, torch.zeros_like(c), d, True)
        nan = d.clone()
        nan[2, 3] = float("nan")
        with pytest.raises(SolverError, match=r"rhs contains NaN/Inf \(first at index \(2, 3\)"):
            call(a, b, c, nan, True)
        assert not bool(torch.isfinite(call(a, b, c, nan, False)).all())  # check=False: no error
        with pytest.raises(ShapeError, match="last dimension"):
            call(a, b, c, d[:, :4], True)
        with pytest.raises(ShapeError, match="do not broadcast"):
            call(a, b, c, d[:2], True)
        with pytest.raises(ConfigError, match="floating-point"):
            call(*(t.long() for t in (a, b, c, d)), True)


@cpp_only
def test_dtypes_and_backends_without_a_c_kernel_go_to_the_python_kernels(monkeypatch):
    a, b, c, d = _inputs(SHAPES[2])
    for dtype in (torch.bfloat16, torch.float16):
        args = [t.to(dtype) for t in (a, b, c, d)]
        x = OP(*args, True)
        assert x.dtype == dtype
        assert _bits_equal(x, T._py_solve(*args, True))
    monkeypatch.setenv("PELAGOS_TRIDIAGONAL_BACKEND", "torch")
    assert T.tridiagonal_backend("cpu", F64) == "torch"
    x = OP(a, b, c, d, True)
    assert _bits_equal(x, T._py_solve(a, b, c, d, True))  # the torch sweep, through Python
    gx = torch.ones_like(x)
    for u, v in zip(BWD(a, b, c, x, gx, True, True, True, True), T._py_adjoint(a, b, c, x, gx, *[True] * 4)):
        assert _bits_equal(u, v)


def _pelagos_frames(fn) -> list[str]:
    """Names of the pelagos Python functions that run during ``fn()``."""
    seen: list[str] = []

    def prof(frame, event, arg):
        if event == "call" and frame.f_code.co_filename.startswith(PACKAGE):
            seen.append(frame.f_code.co_name)

    sys.setprofile(prof)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return seen


@cpp_only
def test_no_python_runs_inside_the_operator_and_its_backward():
    args = [t.requires_grad_() for t in _inputs(SHAPES[2])]
    x = OP(*args, True)
    g = torch.randn_like(x)
    assert _pelagos_frames(lambda: torch.autograd.grad(OP(*args, True), args, g)) == []
    # the public function adds only itself in front of the operator (nn.Parameter arguments too)
    assert _pelagos_frames(lambda: torch.autograd.grad(solve_tridiagonal(*args), args, g)) == [
        "solve_tridiagonal"
    ]
    params = [torch.nn.Parameter(t.detach().clone()) for t in args]
    assert _pelagos_frames(lambda: torch.autograd.grad(solve_tridiagonal(*params), params, g)) == [
        "solve_tridiagonal"
    ]


@cpp_only
def test_double_backward_through_the_cpp_node():
    """create_graph=True: the C++ backward is then written with differentiable operations and the solve
    itself; gradgradcheck and a Hessian-vector product equal to the Python path's."""
    args = [t.requires_grad_() for t in _inputs(SHAPES[1], seed=5)]
    assert torch.autograd.gradgradcheck(lambda *t: OP(*t, False), args, eps=1e-6, atol=1e-7, rtol=1e-5)
    w = torch.randn(2, 6, dtype=F64)
    v = [torch.randn_like(t) for t in args]

    def hvp(solve):
        grads = torch.autograd.grad((solve(*args) * w).sum(), args, create_graph=True)
        return torch.autograd.grad(sum((g * u).sum() for g, u in zip(grads, v)), args)

    def python_path(*t):
        (a, b, c, d), lay = T._validate(t)
        return T._fast_apply(a, b, c, d, False, lay, T._backend(d))

    for u, r in zip(hvp(lambda *t: OP(*t, False)), hvp(python_path)):
        torch.testing.assert_close(u, r, rtol=1e-13, atol=1e-14)


@cpp_only
def test_grad_of_only_some_arguments():
    a, b, c, d = _inputs(SHAPES[3])
    d.requires_grad_()
    x = solve_tridiagonal(a, b, c, d)
    (gd,) = torch.autograd.grad(x, d, torch.ones_like(x))
    lam = T._py_adjoint(a, b, c, x.detach(), torch.ones_like(x), False, False, False, True)[3]
    assert _bits_equal(gd, lam)


_FALLBACK = textwrap.dedent(
    """
    import warnings
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        import torch
        from pelagos.core import solve_tridiagonal, _thomas_op
        from pelagos.core import tridiagonal as T
    cpp = [str(w.message) for w in rec if "C++ tridiagonal operator" in str(w.message)]
    assert len(cpp) == 1, [str(w.message) for w in rec]
    assert "simulated" in cpp[0] and "PELAGOS_TRIDIAGONAL_OP=python" in cpp[0], cpp[0]
    assert T.op_registration() == "python" and "simulated" in _thomas_op.build_error()
    op = torch.ops.pelagos.solve_tridiagonal
    g = torch.Generator().manual_seed(0)
    a, c, d = (torch.randn(2, 3, 5, dtype=torch.float64, generator=g) for _ in range(3))
    b = a.abs() + c.abs() + 1
    args = [t.requires_grad_() for t in (a[:, :1], b[:, :1], c[:, :1], d)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no more warnings on use
        x = solve_tridiagonal(*args)
        assert torch.equal(x, op(*args, True))
        assert torch.autograd.gradcheck(lambda *t: op(*t, False), args)
        torch.library.opcheck(op, (*args, True))
        grads = torch.autograd.grad(x, args, torch.ones_like(x))
    print("FALLBACK-OK", T.tridiagonal_backend())
    """
)


@pytest.mark.skipif(
    not (os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")),
    reason="no C compiler: the C++ build fails earlier (the fallback is then the torch sweep)",
)
def test_falls_back_to_the_python_registration_when_the_build_fails(tmp_path):
    """A C++ compiler that fails (here: ``false``) and an empty cache: one warning naming the cause and
    the fix, then the Python registration, with the same behaviour (the C kernels through ctypes)."""
    env = dict(os.environ)
    env.update(
        CXX="false",
        PELAGOS_CACHE_DIR=str(tmp_path),
        PYTHONPATH=str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", ""),
    )
    env.pop("PELAGOS_TRIDIAGONAL_OP", None)
    script = _FALLBACK.replace("simulated", "false exited")
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "FALLBACK-OK c" in res.stdout


@cpp_only
@pytest.mark.slow
def test_inductor_cpp_wrapper_calls_the_operator_without_python():
    """Inductor's C++ wrapper calls both operators through the dispatcher (``aoti_torch_call_dispatcher``)
    and no pelagos Python runs in the compiled forward+backward; gradients bitwise equal to eager."""
    import torch._inductor.config as ic
    from torch._inductor.utils import run_and_get_cpp_code

    def step(a, b, c, d):
        x = solve_tridiagonal(a, 2.0 * b, c, d + 1.0)
        return (x * x).sum()

    args = [t.requires_grad_() for t in _inputs(((1, 1, 30),) * 3 + ((1, 4, 30),))]
    torch._dynamo.reset()
    with ic.patch(cpp_wrapper=True):
        f = torch.compile(step, fullgraph=True, dynamic=False)

        def run():
            return torch.autograd.grad(f(*args), args)

        _grads, code = run_and_get_cpp_code(run)
        assert 'aoti_torch_call_dispatcher("pelagos::solve_tridiagonal"' in code
        assert 'aoti_torch_call_dispatcher("pelagos::solve_tridiagonal_adjoint"' in code
        assert "PyObject_CallObject" not in code
        assert _pelagos_frames(run) == []
        for u, v in zip(run(), torch.autograd.grad(step(*args), args)):
            assert _bits_equal(u, v)


def test_legacy_backward_operator_still_runs():
    """``pelagos::solve_tridiagonal_backward`` (list of flags in, list out) is what compiled backward graphs
    cached by earlier versions call: it returns the adjoint operator's tensors."""
    a, b, c, d = _inputs(SHAPES[2])
    x = OP(a, b, c, d, True)
    gx = torch.randn_like(x)
    old = torch.ops.pelagos.solve_tridiagonal_backward(a, b, c, x, gx, [True, False, True, True])
    new = BWD(a, b, c, x, gx, True, False, True, True)
    assert isinstance(old, list) and len(old) == 4
    for u, v in zip(old, new):
        assert _bits_equal(u, v)
    torch.library.opcheck(BWD, (a, b, c, x, gx, True, True, False, True))

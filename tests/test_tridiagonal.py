"""Tests of pelagos.core.solve_tridiagonal: values, gradients (reverse, forward, second order), vmap,
shared-matrix right-hand sides, conservation for implicit diffusion, errors, and backward memory."""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import jvp, vmap

from pelagos.core import ConfigError, ShapeError, SolverError, _thomas_c, solve_tridiagonal
from pelagos.core.tridiagonal import _layout, tridiagonal_backend

F64 = torch.float64
BACKENDS = ["auto", "torch"]  # "auto" = compiled C kernel when a compiler exists, else the torch sweep


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    monkeypatch.setenv("PELAGOS_TRIDIAGONAL_BACKEND", request.param)
    return request.param


def dominant(shape, dtype=F64, generator=None, margin=0.5):
    """Random strictly diagonally dominant diagonals (lower, diag, upper) of the given shape."""
    g = generator
    a = torch.randn(shape, dtype=dtype, generator=g)
    c = torch.randn(shape, dtype=dtype, generator=g)
    sign = torch.where(torch.rand(shape, generator=g) < 0.5, -1.0, 1.0).to(dtype)
    b = sign * (a.abs() + c.abs() + margin + torch.rand(shape, dtype=dtype, generator=g))
    return a, b, c


def dense_solve(a, b, c, d):
    """Independent reference: assemble the dense matrices and call torch.linalg.solve (LU, pivoting)."""
    shape = torch.broadcast_shapes(a.shape, b.shape, c.shape, d.shape)
    a, b, c, d = (t.expand(shape).to(F64) for t in (a, b, c, d))
    A = torch.diag_embed(b) + torch.diag_embed(a[..., 1:], -1) + torch.diag_embed(c[..., :-1], 1)
    return torch.linalg.solve(A, d.unsqueeze(-1)).squeeze(-1)


# ------------------------------------------------------------------------------------------------
# values
# ------------------------------------------------------------------------------------------------
@st.composite
def broadcast_case(draw):
    """A full batch shape plus, for each of the four arguments, a shape that broadcasts to it."""
    nd = draw(st.integers(0, 3))
    full = [draw(st.integers(1, 4)) for _ in range(nd)]
    n = draw(st.integers(1, 12))

    def sub():
        drop = draw(st.integers(0, nd))  # leading dims left out
        dims = [1 if draw(st.booleans()) else s for s in full[drop:]]
        return (*dims, n)

    return [sub() for _ in range(4)], draw(st.integers(0, 2**31 - 1))


@settings(max_examples=60, deadline=None)
@given(broadcast_case(), st.sampled_from(BACKENDS))
def test_matches_dense_solve_on_broadcast_shapes(case, backend_name):
    shapes, seed = case
    g = torch.Generator().manual_seed(seed)
    a = dominant(shapes[0], generator=g)[0]
    b = dominant(shapes[1], generator=g)[1]
    c = dominant(shapes[2], generator=g)[2]
    d = torch.randn(shapes[3], dtype=F64, generator=g)
    # the diagonals come from different draws: make diag dominant for the broadcast matrix
    b = torch.sign(b) * (a.abs().amax() + c.abs().amax() + b.abs())
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PELAGOS_TRIDIAGONAL_BACKEND", backend_name)
        x = solve_tridiagonal(a, b, c, d)
    ref = dense_solve(a, b, c, d)
    assert x.shape == ref.shape
    torch.testing.assert_close(x, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n,batch", [(1, 5), (2, 3), (64, 37), (7, 1100)])
def test_float32_and_float64_against_dense(backend, n, batch):
    a, b, c = dominant((batch, n))
    d = torch.randn(batch, n, dtype=F64)
    ref = dense_solve(a, b, c, d)
    torch.testing.assert_close(solve_tridiagonal(a, b, c, d), ref, rtol=1e-12, atol=1e-12)
    x32 = solve_tridiagonal(*(t.float() for t in (a, b, c, d)))
    assert x32.dtype == torch.float32
    torch.testing.assert_close(x32.double(), ref, rtol=2e-5, atol=2e-5)


def test_large_batch_threaded_kernel_matches_torch_sweep(monkeypatch):
    """Enough systems to split the C kernel over threads; odd count exercises the padded last block."""
    a, b, c = dominant((1203, 61))
    d = torch.randn(1203, 61, dtype=F64)
    x = solve_tridiagonal(a, b, c, d)
    monkeypatch.setenv("PELAGOS_TRIDIAGONAL_BACKEND", "torch")
    torch.testing.assert_close(x, solve_tridiagonal(a, b, c, d), rtol=1e-13, atol=1e-13)


def test_compiled_kernel_is_used_when_a_compiler_exists():
    if _thomas_c.kernels() is None:
        pytest.skip(f"no compiled kernel here: {_thomas_c.build_error()}")
    assert tridiagonal_backend("cpu", F64) == "c"
    assert tridiagonal_backend("cpu", torch.float32) == "c"


def test_falls_back_to_torch_when_the_compiler_fails(monkeypatch):
    def broken():
        raise RuntimeError("simulated: no compiler")

    monkeypatch.setattr(_thomas_c, "_state", {})
    monkeypatch.setattr(_thomas_c, "_build", broken)
    with pytest.warns(RuntimeWarning, match="C compiler") as record:
        assert tridiagonal_backend("cpu", F64) == "torch"
    assert len(record) == 1
    assert "simulated" in _thomas_c.build_error()
    a, b, c = dominant((3, 6))
    d = torch.randn(3, 6, dtype=F64)
    req = [t.clone().requires_grad_() for t in (a, b, c, d)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the warning comes once, not on every call
        torch.testing.assert_close(
            solve_tridiagonal(a, b, c, d), dense_solve(a, b, c, d), rtol=1e-12, atol=1e-12
        )
        x = solve_tridiagonal(*req)
        grads = torch.autograd.grad(x, req, torch.ones_like(x))
    xr = dense_solve(*req)
    for u, v in zip(grads, torch.autograd.grad(xr, req, torch.ones_like(xr))):
        torch.testing.assert_close(u, v, rtol=1e-10, atol=1e-12)


def test_ignored_corner_entries_do_not_matter(backend):
    a, b, c = dominant((4, 6))
    d = torch.randn(4, 6, dtype=F64)
    x = solve_tridiagonal(a, b, c, d)
    a2, c2 = a.clone(), c.clone()
    a2[:, 0] = float("nan")
    c2[:, -1] = 1e300
    torch.testing.assert_close(solve_tridiagonal(a2, b, c2, d), x, rtol=0, atol=0)


def test_dtype_promotion_and_empty_batch():
    a, b, c = dominant((3, 5))
    d = torch.randn(3, 5)  # float32 rhs with float64 matrix -> float64
    x = solve_tridiagonal(a, b, c, d)
    assert x.dtype == F64
    torch.testing.assert_close(x, dense_solve(a, b, c, d), rtol=1e-12, atol=1e-12)
    e = torch.empty(0, 5, dtype=F64)
    assert solve_tridiagonal(e, e, e, e).shape == (0, 5)


# ------------------------------------------------------------------------------------------------
# many right-hand sides sharing one matrix
# ------------------------------------------------------------------------------------------------
def test_shared_matrix_many_rhs(backend):
    a, b, c = dominant((5, 1, 9))  # 5 columns, one matrix each
    d = torch.randn(5, 3, 9, dtype=F64)  # 3 tracers per column
    x = solve_tridiagonal(a, b, c, d)
    for k in range(3):
        torch.testing.assert_close(x[:, k], solve_tridiagonal(a[:, 0], b[:, 0], c[:, 0], d[:, k]))
    # the factorisation is shared: 5 matrices with 3 right-hand sides each, not 15 systems
    lay = _layout(a.shape, b.shape, c.shape, d.shape)
    assert (lay.P, lay.K) == (5, 3)


def test_shared_matrix_along_a_leading_dim(backend):
    """Matrix broadcast along a leading dim (ensemble of forcings on one grid): permuted internally."""
    a, b, c = dominant((4, 8))
    d = torch.randn(6, 4, 8, dtype=F64)
    x = solve_tridiagonal(a, b, c, d)
    torch.testing.assert_close(x, dense_solve(a, b, c, d), rtol=1e-12, atol=1e-12)
    lay = _layout(a.shape, b.shape, c.shape, d.shape)
    assert (lay.P, lay.K) == (4, 6)


# ------------------------------------------------------------------------------------------------
# gradients
# ------------------------------------------------------------------------------------------------
GRAD_SHAPES = [
    ((3, 6), (3, 6), (3, 6), (3, 6)),  # plain batch
    ((6,), (2, 6), (1, 6), (2, 6)),  # broadcast matrix parts
    ((2, 1, 5), (2, 1, 5), (2, 1, 5), (2, 3, 5)),  # shared matrix, 3 rhs
    ((4,), (4,), (4,), (3, 2, 4)),  # one matrix for everything
    ((1, 7), (1, 7), (1, 7), (3, 19, 7)),  # one matrix, 57 rhs: the C kernel's vectors across rhs
]


def _inputs(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = dominant(shapes[0], generator=g)[0]
    c = dominant(shapes[2], generator=g)[2]
    b = dominant(shapes[1], generator=g)[1]
    b = torch.sign(b) * (a.abs().amax() + c.abs().amax() + b.abs())
    d = torch.randn(shapes[3], dtype=F64, generator=g)
    return [t.clone().requires_grad_() for t in (a, b, c, d)]


@pytest.mark.parametrize("shapes", GRAD_SHAPES)
def test_gradcheck_all_arguments(backend, shapes):
    args = _inputs(shapes)
    assert torch.autograd.gradcheck(solve_tridiagonal, args, eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("shapes", GRAD_SHAPES[:3])
def test_gradgradcheck(shapes):
    args = _inputs(shapes, seed=1)
    assert torch.autograd.gradgradcheck(solve_tridiagonal, args, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_gradient_against_central_differences_along_random_direction(backend):
    """dL/dθ · v from backward vs (L(θ+εv) − L(θ−εv)) / 2ε for every argument at once."""
    args = _inputs(GRAD_SHAPES[2], seed=3)
    w = torch.randn(2, 3, 5, dtype=F64)
    loss = (solve_tridiagonal(*args) * w).sum()
    grads = torch.autograd.grad(loss, args)
    vs = [torch.randn_like(t) for t in args]
    eps = 1e-6
    with torch.no_grad():
        plus = (solve_tridiagonal(*(t + eps * v for t, v in zip(args, vs))) * w).sum()
        minus = (solve_tridiagonal(*(t - eps * v for t, v in zip(args, vs))) * w).sum()
    fd = (plus - minus) / (2 * eps)
    ad = sum((g * v).sum() for g, v in zip(grads, vs))
    assert abs(float(fd - ad)) <= 1e-6 * abs(float(ad)) + 1e-9


@pytest.mark.parametrize("shapes", GRAD_SHAPES)
def test_composable_backward_first_derivatives_equal_plain_backward(backend, shapes):
    """The backward used under create_graph / torch.func (written with differentiable ops) must give the same
    first derivatives as the plain fused backward, for all four arguments: second-derivative tests alone let
    a wrong first derivative of the composable path through (e.g. w.r.t. the lower diagonal)."""
    args = _inputs(shapes, seed=7)
    w = torch.randn(torch.broadcast_shapes(*(t.shape for t in args)), dtype=F64)

    def loss(*ts):
        return (solve_tridiagonal(*ts) * w).sum()

    plain = torch.autograd.grad(loss(*args), args)  # no graph: the fused adjoint kernel
    composable = torch.autograd.grad(loss(*args), args, create_graph=True)  # the differentiable adjoint
    functional = torch.func.grad(loss, argnums=(0, 1, 2, 3))(*(t.detach() for t in args))  # wrapped tensors
    dense = torch.autograd.grad((dense_solve(*args) * w).sum(), args)  # independent reference
    for i, name in enumerate(["lower", "diag", "upper", "rhs"]):
        assert composable[i].requires_grad, name  # really the composable path
        torch.testing.assert_close(composable[i], plain[i], rtol=1e-12, atol=1e-13, msg=name)
        torch.testing.assert_close(functional[i], plain[i], rtol=1e-12, atol=1e-13, msg=name)
        # the dense reference uses only the matrix entries: lower[..., 0], upper[..., -1] get 0 there too
        torch.testing.assert_close(plain[i], dense[i], rtol=1e-9, atol=1e-11, msg=name)


def test_gradient_of_ignored_entries_is_zero(backend):
    a, b, c, d = _inputs(GRAD_SHAPES[0])
    solve_tridiagonal(a, b, c, d).pow(2).sum().backward()
    assert torch.all(a.grad[..., 0] == 0) and torch.all(c.grad[..., -1] == 0)
    assert a.grad[..., 1:].abs().sum() > 0 and c.grad[..., :-1].abs().sum() > 0


def test_only_rhs_requires_grad(backend):
    a, b, c, d = (t.detach() for t in _inputs(GRAD_SHAPES[2]))
    d.requires_grad_()
    w = torch.randn(2, 3, 5, dtype=F64)
    (g,) = torch.autograd.grad((solve_tridiagonal(a, b, c, d) * w).sum(), d)
    assert g.shape == d.shape
    # g = A^-T w: check A^T g = w with the dense transpose (summed over nothing: d has the full shape)
    shape = w.shape
    A = (
        torch.diag_embed(b.expand(shape))
        + torch.diag_embed(a.expand(shape)[..., 1:], -1)
        + torch.diag_embed(c.expand(shape)[..., :-1], 1)
    )
    torch.testing.assert_close(A.transpose(-1, -2) @ g.unsqueeze(-1), w.unsqueeze(-1))


def test_jvp_matches_vjp_and_finite_differences(backend):
    """<J v, w> = <v, J^T w> (forward vs reverse mode), and J v vs central differences."""
    args = [t.detach() for t in _inputs(GRAD_SHAPES[1], seed=5)]
    vs = tuple(torch.randn_like(t) for t in args)
    x, jv = jvp(solve_tridiagonal, tuple(args), vs)
    w = torch.randn_like(x)
    req = [t.clone().requires_grad_() for t in args]
    jtw = torch.autograd.grad(solve_tridiagonal(*req), req, w)
    lhs = (jv * w).sum()
    rhs = sum((v * g).sum() for v, g in zip(vs, jtw))
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-12)
    eps = 1e-6
    fd = (
        solve_tridiagonal(*(t + eps * v for t, v in zip(args, vs)))
        - solve_tridiagonal(*(t - eps * v for t, v in zip(args, vs)))
    ) / (2 * eps)
    torch.testing.assert_close(jv, fd, rtol=1e-6, atol=1e-8)


def test_forward_ad_dual_numbers():
    import torch.autograd.forward_ad as fwAD

    a, b, c, d = (t.detach() for t in _inputs(GRAD_SHAPES[0]))
    tb = torch.randn_like(b)
    with fwAD.dual_level():
        x = solve_tridiagonal(a, fwAD.make_dual(b, tb), c, d)
        tangent = fwAD.unpack_dual(x).tangent
    eps = 1e-6
    fd = (solve_tridiagonal(a, b + eps * tb, c, d) - solve_tridiagonal(a, b - eps * tb, c, d)) / (2 * eps)
    torch.testing.assert_close(tangent, fd, rtol=1e-6, atol=1e-8)


# ------------------------------------------------------------------------------------------------
# vmap
# ------------------------------------------------------------------------------------------------
def test_vmap_matches_loop():
    _, b, c = dominant((5, 7))
    d = torch.randn(4, 5, 7, dtype=F64)
    # batch over rhs dim 0 and over lower dim 1 (transposed storage), diag and upper unbatched
    lower = torch.randn(7, 4, dtype=F64) * 0.1
    out = vmap(solve_tridiagonal, in_dims=(1, None, None, 0))(lower, b, c, d)
    ref = torch.stack([solve_tridiagonal(lower[:, i], b, c, d[i]) for i in range(4)])
    torch.testing.assert_close(out, ref, rtol=1e-13, atol=1e-13)


def test_vmap_of_grad_and_jacobians():
    a, b, c = dominant((3, 6))
    d = torch.randn(3, 6, dtype=F64)
    w = torch.randn(3, 6, dtype=F64)

    def loss(diag, rhs):
        return (solve_tridiagonal(a, diag, c, rhs) * w).sum()

    bs = torch.stack([b, 1.1 * b])
    per = vmap(torch.func.grad(loss), in_dims=(0, None))(bs, d)
    for i in range(2):
        bi = bs[i].clone().requires_grad_()
        (ref,) = torch.autograd.grad(loss(bi, d), bi)
        torch.testing.assert_close(per[i], ref, rtol=1e-12, atol=1e-12)
    jr = torch.func.jacrev(solve_tridiagonal, argnums=3)(a, b, c, d)
    jf = torch.func.jacfwd(solve_tridiagonal, argnums=3)(a, b, c, d)
    torch.testing.assert_close(jr, jf, rtol=1e-12, atol=1e-12)
    h = torch.func.hessian(loss, argnums=0)(b, d)
    h_ref = torch.func.hessian(lambda diag, rhs: (dense_solve(a, diag, c, rhs) * w).sum())(b, d)
    torch.testing.assert_close(h, h_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(h, h.permute(2, 3, 0, 1))


# ------------------------------------------------------------------------------------------------
# physics: implicit vertical diffusion conserves mass
# ------------------------------------------------------------------------------------------------
def diffusion_matrix(h, nu, dt):
    """GOTM-style backward-Euler diffusion with zero flux at top and bottom, as (lower, diag, upper).

    h: layer thicknesses (..., N) [m]; nu: diffusivity at the N-1 inner interfaces (..., N-1) [m2 s-1];
    dt [s]. Row i of A = I + dt*D: flux F_{i+1/2} = -nu (x_{i+1} - x_i) / dz_{i+1/2},
    dz_{i+1/2} = (h_i + h_{i+1}) / 2, and h_i dx_i/dt = F_{i-1/2} - F_{i+1/2}.
    """
    dz = 0.5 * (h[..., 1:] + h[..., :-1])
    k = dt * nu / dz  # (..., N-1)
    z = torch.zeros_like(h[..., :1])
    k_up = torch.cat([k, z], -1)  # interface above-in-index (i+1/2)
    k_dn = torch.cat([z, k], -1)  # interface i-1/2
    lower = -k_dn / h
    upper = -k_up / h
    diag = 1 + (k_up + k_dn) / h
    return lower, diag, upper


def test_implicit_diffusion_conserves_mass(backend):
    g = torch.Generator().manual_seed(7)
    n = 40
    h = 0.5 + 3 * torch.rand(16, n, dtype=F64, generator=g)
    nu = 10 ** (-6 + 4 * torch.rand(16, n - 1, dtype=F64, generator=g))
    nu[:, 5] = 0.0  # a zero-diffusivity interface is allowed (M-matrix, still solvable)
    lower, diag, upper = diffusion_matrix(h, nu, dt=3600.0)
    tracer = torch.rand(16, 3, n, dtype=F64, generator=g)  # 3 tracers share each column's matrix
    x = solve_tridiagonal(lower[:, None], diag[:, None], upper[:, None], tracer)
    mass_before = (h[:, None] * tracer).sum(-1)
    mass_after = (h[:, None] * x).sum(-1)
    torch.testing.assert_close(mass_after, mass_before, rtol=1e-13, atol=0)
    # mixing only: the solution stays within the initial range (discrete maximum principle)
    assert bool((x.amax(-1) <= tracer.amax(-1) + 1e-12).all()) and bool(
        (x.amin(-1) >= tracer.amin(-1) - 1e-12).all()
    )


def test_mass_gradient_is_exact():
    """d(total mass)/d(nu) = 0 exactly (conservation holds for all nu) and d/d(rhs) = h."""
    n = 12
    h = torch.linspace(1.0, 3.0, n, dtype=F64)
    nu = torch.full((n - 1,), 1e-3, dtype=F64, requires_grad=True)
    tracer = torch.rand(n, dtype=F64, requires_grad=True)
    x = solve_tridiagonal(*diffusion_matrix(h, nu, 600.0), tracer)
    g_nu, g_tr = torch.autograd.grad((h * x).sum(), (nu, tracer), retain_graph=True)
    # scale of a generic gradient w.r.t. nu (non-conserved functional), to judge "zero"
    (g_generic,) = torch.autograd.grad((h * x * torch.linspace(0, 1, n, dtype=F64)).sum(), nu)
    assert g_nu.abs().max() < 1e-13 * g_generic.abs().max()
    torch.testing.assert_close(g_tr, h, rtol=1e-13, atol=0)


# ------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------
def test_zero_pivot_raises_solver_error(backend):
    a, b, c = dominant((3, 5))
    b = b.clone()
    b[1, 0] = 0.0  # first pivot of system 1 is zero
    d = torch.randn(3, 5, dtype=F64)
    with pytest.raises(SolverError, match=r"pivot.*batch index \(1,\)"):
        solve_tridiagonal(a, b, c, d)
    x = solve_tridiagonal(a, b, c, d, check=False)  # opt-out: no error, garbage stays visible
    assert not bool(torch.isfinite(x[1]).all()) and bool(torch.isfinite(x[0]).all())


def test_nan_input_is_named(backend):
    a, b, c = dominant((2, 4))
    d = torch.randn(2, 4, dtype=F64)
    d[1, 2] = float("nan")
    with pytest.raises(SolverError, match=r"rhs contains NaN/Inf \(first at index \(1, 2\)"):
        solve_tridiagonal(a, b, c, d)
    up = c.clone()
    up[0, 1] = float("inf")
    with pytest.raises(SolverError, match="upper contains NaN/Inf"):
        solve_tridiagonal(a, b, up, torch.randn(2, 4, dtype=F64))


def test_shape_and_dtype_errors():
    a, b, c = dominant((3, 5))
    d = torch.randn(3, 5, dtype=F64)
    with pytest.raises(ShapeError, match=r"last dimension.*lower=\(3, 4\)"):
        solve_tridiagonal(a[:, 1:], b, c, d)
    with pytest.raises(ShapeError, match="do not broadcast"):
        solve_tridiagonal(a, b, c, torch.randn(4, 5, dtype=F64))
    with pytest.raises(ShapeError, match="scalar"):
        solve_tridiagonal(a, b, c, torch.tensor(1.0))
    with pytest.raises(ConfigError, match="floating-point"):
        solve_tridiagonal(*(torch.ones(3, 5, dtype=torch.long) for _ in range(4)))


# ------------------------------------------------------------------------------------------------
# memory: backward keeps O(batch*N), never the sweep
# ------------------------------------------------------------------------------------------------
def _saved_bytes(fn, *args):
    """Bytes autograd keeps for backward (distinct storages packed by saved-tensor hooks)."""
    seen: dict[int, int] = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*args)
    return out, sum(seen.values())


def _graph_nodes(x):
    seen, todo = set(), [x.grad_fn]
    while todo:
        f = todo.pop()
        if f is None or f in seen or type(f).__name__ == "AccumulateGrad":
            continue
        seen.add(f)
        todo.extend(g for g, _ in f.next_functions)
    return len(seen)


def _thomas_loop(a, b, c, d):
    """Reference: plain Thomas loop recorded by autograd (what the implicit backward avoids)."""
    n = b.shape[-1]
    cp, dp = [c[..., 0] / b[..., 0]], [d[..., 0] / b[..., 0]]
    for i in range(1, n):
        m = b[..., i] - a[..., i] * cp[-1]
        cp.append(c[..., i] / m)
        dp.append((d[..., i] - a[..., i] * dp[-1]) / m)
    xs = [dp[-1]]
    for i in range(n - 2, -1, -1):
        xs.append(dp[i] - cp[i] * xs[-1])
    return torch.stack(xs[::-1], -1)


def test_backward_saves_only_inputs_and_solution():
    batch, n = 64, 128
    args = [t.requires_grad_() for t in (*dominant((batch, n)), torch.randn(batch, n, dtype=F64))]
    packed = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: packed.append(t) or t, lambda t: t):
        solve_tridiagonal(*args)
    # lower, diag, upper, x: nothing from inside the sweep (C++ autograd node or Python Function alike)
    assert len(packed) == 4
    x, ours = _saved_bytes(solve_tridiagonal, *args)
    one = batch * n * 8
    inputs = 3 * one  # lower, diag, upper are saved by reference (they are alive anyway)
    assert ours == inputs + one  # + the solution: nothing else
    xr, loop = _saved_bytes(_thomas_loop, *args)
    torch.testing.assert_close(x, xr)
    # the recorded loop keeps ~5 per-level intermediates of size batch (5 * batch * n in all) on
    # top of the inputs, and a graph of ~10 nodes per level instead of one node
    assert loop - 4 * one >= 4 * one, (loop, ours)
    assert _graph_nodes(x) == 1 and _graph_nodes(xr) > 8 * n
    # and the gradients agree with those of the recorded loop
    g = torch.randn_like(x)
    for ga, gr in zip(torch.autograd.grad(x, args, g), torch.autograd.grad(xr, args, g)):
        torch.testing.assert_close(ga, gr, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# CUDA kernel (Triton): checked in Triton's CPU interpreter when triton is importable
# ------------------------------------------------------------------------------------------------
_TRITON_CHECK = """
import torch
from pelagos.core import _thomas_torch
from pelagos.core import _thomas_triton as T
assert T.triton is not None
g = torch.Generator().manual_seed(0)
for dt, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
    for P, K, N in ((37, 2, 9), (5, 1, 1), (130, 3, 17)):
        a, c = (torch.randn(P, N, generator=g, dtype=dt) for _ in range(2))
        b = a.abs() + c.abs() + 1
        d = torch.randn(P, K, N, generator=g, dtype=dt)
        ref = _thomas_torch.solve(a, b, c, d)[0]
        torch.testing.assert_close(T.solve(a, b, c, d)[0], ref, rtol=tol, atol=tol)
        gx = torch.randn_like(d)
        for u, v in zip(T.adjoint(a, b, c, ref, gx, True), _thomas_torch.adjoint(a, b, c, ref, gx, True)):
            torch.testing.assert_close(u, v, rtol=tol, atol=tol)
print("ok")
"""


def test_triton_kernel_in_interpreter():
    import importlib.util
    import os
    import subprocess
    import sys

    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton not installed (CUDA path checked only where it is)")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    out = subprocess.run(
        [sys.executable, "-c", _TRITON_CHECK], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


def test_default_device_does_not_leak_into_cpu_kernel():
    """Scratch and outputs of the CPU kernel are placed on the CPU whatever the default device."""
    a, b, c = dominant((3, 5))
    d = torch.randn(3, 5, dtype=F64)
    ref = solve_tridiagonal(a, b, c, d)
    with torch.device("meta"):
        x = solve_tridiagonal(a, b, c, d)
        req = [t.clone().requires_grad_() for t in (a, b, c, d)]
        grads = torch.autograd.grad(solve_tridiagonal(*req).sum(), req)
    assert x.device.type == "cpu" and all(g.device.type == "cpu" for g in grads)
    torch.testing.assert_close(x, ref)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    "shape_m,shape_d",
    [((21, 1, 9), (21, 3, 9)), ((37, 5), (37, 5)), ((3, 1, 4), (3, 2, 4)), ((35, 1, 40), (35, 2, 40))],
)
def test_compiled_kernel_matches_torch_sweep_values_and_gradients(monkeypatch, dtype, shape_m, shape_d):
    """Full vector blocks, scalar remainder systems and shared right-hand sides, forward and adjoint;
    N = 40 has full register-transposed tiles of levels (5 x 8 in float64, 2 x 16 in float32) and a
    remainder of 8 levels in float32."""
    if _thomas_c.kernels() is None:
        pytest.skip("no compiled kernel")
    g = torch.Generator().manual_seed(11)
    a, b, c = (t.to(dtype) for t in dominant(shape_m, generator=g))
    d = torch.randn(shape_d, generator=g).to(dtype)
    w = torch.randn(shape_d, generator=g).to(dtype)

    def run():
        req = [t.clone().requires_grad_() for t in (a, b, c, d)]
        x = solve_tridiagonal(*req)
        return [x, *torch.autograd.grad(x, req, w)]

    ours = run()
    monkeypatch.setenv("PELAGOS_TRIDIAGONAL_BACKEND", "torch")
    ref = run()
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    for u, v in zip(ours, ref):
        torch.testing.assert_close(u, v, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("P,K,N", [(21, 1, 9), (3, 2, 5), (1, 1, 64)])
def test_compiled_adjoint_with_saved_pivots_equals_refactorised(dtype, P, K, N):
    """The kernels can keep the forward's reciprocal pivots for the adjoint (no refactorisation): same
    cotangents as the adjoint that refactorises from the diagonal, and the pivots are 1/u_i."""
    if _thomas_c.kernels() is None:
        pytest.skip("no compiled kernel")
    g = torch.Generator().manual_seed(5)
    a, b, c = (t.to(dtype) for t in dominant((P, N), generator=g))
    d = torch.randn(P, K, N, generator=g).to(dtype)
    w = torch.randn(P, K, N, generator=g).to(dtype)
    x, piv = torch.empty_like(d), torch.empty_like(b)
    assert _thomas_c.solve_into(P, K, N, a, b, c, d, x, piv)
    u = b.clone()  # pivots u_i = b_i - a_i c_{i-1} / u_{i-1}
    for i in range(1, N):
        u[:, i] = b[:, i] - a[:, i] * c[:, i - 1] / u[:, i - 1]
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(piv, 1 / u, rtol=tol, atol=tol)
    with_piv = _thomas_c.adjoint(a, b, c, x, w, True, piv=piv)
    without = _thomas_c.adjoint(a, b, c, x, w, True)
    for p_, q_ in zip(with_piv, without):
        torch.testing.assert_close(p_, q_, rtol=tol, atol=tol)


@pytest.mark.parametrize(
    "case", ["contiguous", "transposed", "leading_ones", "expanded_grad", "broadcast_rhs", "only_matrix"]
)
def test_eager_reverse_mode_paths_match_dense(backend, case):
    """The lean eager Function (direct kernel calls on contiguous memory, copies otherwise) against
    the dense solve's autograd, for layouts that take its different branches."""
    g = torch.Generator().manual_seed(7)
    a, b, c = dominant((4, 6), generator=g)
    d = torch.randn(4, 6, dtype=F64, generator=g)
    if case == "transposed":  # non-contiguous inputs
        a, b, c, d = (t.t().contiguous().t() for t in (a, b, c, d))
    if case == "leading_ones":  # same number of elements, different shapes
        a, d = a[:1].reshape(1, 1, 6), d[:1]
        b, c = b[:1], c[:1].reshape(1, 1, 1, 6)
    if case == "broadcast_rhs":
        d = d[:1]
    req = [t.clone().requires_grad_(case != "only_matrix" or i < 3) for i, t in enumerate((a, b, c, d))]
    x = solve_tridiagonal(*req)
    xr = dense_solve(*req)
    torch.testing.assert_close(x, xr, rtol=1e-12, atol=1e-12)
    if case == "expanded_grad":  # gx = ones expanded (stride 0)
        grads, ref = torch.autograd.grad(x.sum(), req), torch.autograd.grad(xr.sum(), req)
    else:
        w = torch.randn(x.shape, dtype=F64, generator=g)
        wanted = [t for t in req if t.requires_grad]
        grads, ref = torch.autograd.grad(x, wanted, w), torch.autograd.grad(xr, wanted, w)
    for u, v in zip(grads, ref):
        assert u.shape == v.shape
        torch.testing.assert_close(u, v, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_gradients_through_activation_checkpointing(use_reentrant):
    """torch.utils.checkpoint (as core.rollout uses it) recomputes the solve in the backward: same
    gradients as without checkpointing."""
    from torch.utils.checkpoint import checkpoint

    g = torch.Generator().manual_seed(9)
    a, b, c = dominant((6, 10), generator=g)
    d = torch.randn(6, 10, dtype=F64, generator=g)
    req = [t.clone().requires_grad_() for t in (a, b, c, d)]

    def step(a, b, c, d):
        x = solve_tridiagonal(a, b, c, d)
        return solve_tridiagonal(a, b, c, x * x).square().sum()

    ref = torch.autograd.grad(step(*req), req)
    checkpoint(step, *req, use_reentrant=use_reentrant).backward()  # (reentrant: .backward only)
    for u, v in zip((t.grad for t in req), ref):
        torch.testing.assert_close(u, v, rtol=1e-13, atol=1e-14)

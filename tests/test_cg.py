"""solve_cg: against a dense solve, batched systems, preconditioning, implicit gradients w.r.t. the rhs and
the operator's (closed-over) coefficients against dense autograd and central differences, jvp vs vjp, vmap,
torch.func.grad, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pelagos.core import ConfigError, ShapeError, SolverError, solve_cg

D = torch.float64


def helmholtz(c: torch.Tensor, kx: torch.Tensor, ky: torch.Tensor):
    """A x = c x − ∇·(k ∇x) on an n×n grid, unit spacing, x = 0 outside (Dirichlet): SPD for c ≥ 0, k > 0.

    ``kx``: diffusivity on the x-faces, shape (..., n, n+1); ``ky`` on the y-faces, (..., n+1, n); ``c``
    broadcasts against (..., n, n).
    """

    def A(x):
        xp = F.pad(x, (1, 1, 1, 1))
        fx = kx * (xp[..., 1:-1, 1:] - xp[..., 1:-1, :-1])
        fy = ky * (xp[..., 1:, 1:-1] - xp[..., :-1, 1:-1])
        return c * x - (fx[..., :, 1:] - fx[..., :, :-1]) - (fy[..., 1:, :] - fy[..., :-1, :])

    return A


def dense(A, n):
    """The matrix of A (differentiable w.r.t. whatever A closes over)."""
    eye = torch.eye(n * n, dtype=D).reshape(n * n, n, n)
    return A(eye).reshape(n * n, n * n).T


def coeffs(n, seed=0, batch=()):
    g = torch.Generator().manual_seed(seed)
    c = 0.1 + torch.rand(*batch, n, n, generator=g, dtype=D)
    kx = 0.5 + torch.rand(*batch, n, n + 1, generator=g, dtype=D)
    ky = 0.5 + torch.rand(*batch, n + 1, n, generator=g, dtype=D)
    b = torch.randn(*batch, n, n, generator=g, dtype=D)
    return c, kx, ky, b


def test_operator_is_symmetric_positive_definite():
    c, kx, ky, _ = coeffs(5)
    Ad = dense(helmholtz(c, kx, ky), 5)
    torch.testing.assert_close(Ad, Ad.T, rtol=0, atol=1e-15)
    assert float(torch.linalg.eigvalsh(Ad).min()) > 0


def test_matches_dense_solve():
    n = 12
    c, kx, ky, b = coeffs(n)
    A = helmholtz(c, kx, ky)
    x, info = solve_cg(A, b, rtol=1e-12, return_info=True)
    ref = torch.linalg.solve(dense(A, n), b.reshape(-1)).reshape(n, n)
    torch.testing.assert_close(x, ref, rtol=1e-9, atol=1e-11)
    assert bool(info.converged) and float(info.residual) <= 1e-12 * float(b.norm())
    assert 5 < info.iterations < n * n  # a real iterative solve, fewer iterations than unknowns


def test_batched_systems_and_warm_start():
    n, B = 6, 3
    c, kx, ky, b = coeffs(n, seed=1, batch=(B,))
    c = c * torch.tensor([1e-3, 1.0, 1e2], dtype=D).reshape(B, 1, 1)  # very different conditioning
    A = helmholtz(c, kx, ky)
    x, info = solve_cg(A, b, batch_dims=1, rtol=1e-12, return_info=True)
    assert info.converged.shape == (B,) and bool(info.converged.all())
    for i in range(B):
        Ai = helmholtz(c[i], kx[i], ky[i])
        ref = torch.linalg.solve(dense(Ai, n), b[i].reshape(-1)).reshape(n, n)
        torch.testing.assert_close(x[i], ref, rtol=1e-9, atol=1e-11)
    x2, info2 = solve_cg(A, b, batch_dims=1, x0=x, rtol=1e-10, return_info=True)
    assert info2.iterations <= 1
    torch.testing.assert_close(x2, x, rtol=1e-10, atol=1e-12)


def test_jacobi_preconditioner_fewer_iterations_same_answer():
    n = 16
    c, kx, ky, b = coeffs(n, seed=2)
    g = torch.Generator().manual_seed(7)
    c = 10 ** (4 * torch.rand(n, n, generator=g, dtype=D))  # diagonal varying over 4 decades
    A = helmholtz(c, kx, ky)
    diag = dense(A, n).diagonal().reshape(n, n)
    x0, i0 = solve_cg(A, b, rtol=1e-11, return_info=True)
    x1, i1 = solve_cg(A, b, M=lambda r: r / diag, rtol=1e-11, return_info=True)
    torch.testing.assert_close(x1, x0, rtol=1e-8, atol=1e-12)
    assert i1.iterations < 0.5 * i0.iterations, (i0.iterations, i1.iterations)


def _loss_fn(n, w):
    def loss(b, c, kx, ky):
        return (w * solve_cg(helmholtz(c, kx, ky), b, rtol=1e-13)).sum()

    return loss


def test_gradients_match_dense_autograd():
    n = 6
    c, kx, ky, b = coeffs(n, seed=3)
    w = torch.randn(n, n, generator=torch.Generator().manual_seed(4), dtype=D)
    ins = [t.clone().requires_grad_() for t in (b, c, kx, ky)]
    g_cg = torch.autograd.grad(_loss_fn(n, w)(*ins), ins)
    ins2 = [t.clone().requires_grad_() for t in (b, c, kx, ky)]
    Ad = dense(helmholtz(*ins2[1:]), n)
    loss_ref = (w.reshape(-1) * torch.linalg.solve(Ad, ins2[0].reshape(-1))).sum()
    g_ref = torch.autograd.grad(loss_ref, ins2)
    for name, a, r in zip(["b", "c", "kx", "ky"], g_cg, g_ref):
        torch.testing.assert_close(a, r, rtol=1e-9, atol=1e-11, msg=name)


def test_gradient_central_differences_random_directions():
    n = 7
    c, kx, ky, b = coeffs(n, seed=5)
    g = torch.Generator().manual_seed(6)
    w = torch.randn(n, n, generator=g, dtype=D)
    loss = _loss_fn(n, w)
    ins = [t.clone().requires_grad_() for t in (b, c, kx, ky)]
    grads = torch.autograd.grad(loss(*ins), ins)
    for _ in range(3):
        dirs = [torch.randn(t.shape, generator=g, dtype=D) for t in (b, c, kx, ky)]
        h = 1e-5
        plus = loss(*[t + h * d for t, d in zip((b, c, kx, ky), dirs)])
        minus = loss(*[t - h * d for t, d in zip((b, c, kx, ky), dirs)])
        fd = float((plus - minus) / (2 * h))
        ad = float(sum((gr * d).sum() for gr, d in zip(grads, dirs)))
        assert abs(fd - ad) <= 1e-6 * abs(ad), (fd, ad)


def test_torch_gradcheck_forward_and_reverse():
    n = 4
    c, kx, ky, b = coeffs(n, seed=8)
    fn = lambda b, kx: solve_cg(helmholtz(c, kx, ky), b, rtol=1e-14)  # noqa: E731
    ins = (b.clone().requires_grad_(), kx.clone().requires_grad_())
    assert torch.autograd.gradcheck(fn, ins, check_forward_ad=True, atol=1e-8, rtol=1e-7)


def test_jvp_matches_vjp():
    n = 6
    c, kx, ky, b = coeffs(n, seed=9)
    g = torch.Generator().manual_seed(10)
    tb, tk = torch.randn(n, n, generator=g, dtype=D), torch.randn(n, n + 1, generator=g, dtype=D)
    w = torch.randn(n, n, generator=g, dtype=D)

    def f(bb, kk):
        return solve_cg(helmholtz(c, kk, ky), bb, rtol=1e-13)

    x, jv = torch.func.jvp(f, (b, kx), (tb, tk))
    _, vjp_fn = torch.func.vjp(f, b, kx)
    gb, gk = vjp_fn(w)
    torch.testing.assert_close((w * jv).sum(), (gb * tb).sum() + (gk * tk).sum(), rtol=1e-10, atol=0)
    # and the tangent is the dense one: ẋ = A⁻¹(ḃ − Ȧ x)
    Ad = dense(helmholtz(c, kx, ky), n)
    Adot = dense(helmholtz(torch.zeros_like(c), tk, torch.zeros_like(ky)), n)
    ref = torch.linalg.solve(Ad, tb.reshape(-1) - Adot @ x.reshape(-1)).reshape(n, n)
    torch.testing.assert_close(jv, ref, rtol=1e-9, atol=1e-11)


def test_vmap_over_rhs_and_over_operator_coefficient():
    n, B = 5, 4
    c, kx, ky, b = coeffs(n, seed=11, batch=(B,))
    A0 = helmholtz(c[0], kx[0], ky[0])
    xv = torch.func.vmap(lambda bb: solve_cg(A0, bb, rtol=1e-12, max_iter=60))(b)
    xb = solve_cg(A0, b, batch_dims=1, rtol=1e-12)
    torch.testing.assert_close(xv, xb, rtol=1e-9, atol=1e-12)
    xv2 = torch.func.vmap(lambda kk: solve_cg(helmholtz(c[0], kk, ky[0]), b[0], rtol=1e-12, max_iter=60))(kx)
    for i in range(B):
        ref = solve_cg(helmholtz(c[0], kx[i], ky[0]), b[0], rtol=1e-12)
        torch.testing.assert_close(xv2[i], ref, rtol=1e-9, atol=1e-12)
    # per-example gradients: vmap of grad
    gs = torch.func.vmap(
        torch.func.grad(lambda kk: solve_cg(helmholtz(c[0], kk, ky[0]), b[0], rtol=1e-12, max_iter=60).sum())
    )(kx)
    for i in range(B):
        kk = kx[i].clone().requires_grad_()
        (gi,) = torch.autograd.grad(solve_cg(helmholtz(c[0], kk, ky[0]), b[0], rtol=1e-12).sum(), kk)
        torch.testing.assert_close(gs[i], gi, rtol=1e-8, atol=1e-11)


def test_func_grad_matches_autograd():
    n = 5
    c, kx, ky, b = coeffs(n, seed=12)
    f = lambda cc: (solve_cg(helmholtz(cc, kx, ky), b, rtol=1e-13) ** 2).sum()  # noqa: E731
    g1 = torch.func.grad(f)(c)
    cc = c.clone().requires_grad_()
    (g2,) = torch.autograd.grad(f(cc), cc)
    torch.testing.assert_close(g1, g2, rtol=1e-12, atol=0)


def test_iterations_are_not_recorded_in_the_graph():
    n = 10
    c, kx, ky, b = coeffs(n, seed=15)
    kx = kx.clone().requires_grad_()
    packed = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: packed.append(1) or t, lambda t: t):
        _, info = solve_cg(helmholtz(c, kx, ky), b, rtol=1e-12, return_info=True)
    assert info.iterations > 20
    assert len(packed) < 10  # only one application of A (the residual) is recorded, not the iterations


def test_errors():
    n = 6
    c, kx, ky, b = coeffs(n, seed=16)
    A = helmholtz(c, kx, ky)
    with pytest.raises(SolverError, match="no convergence in 2 iterations"):
        solve_cg(A, b, max_iter=2)
    x = solve_cg(A, b, max_iter=2, check=False)  # allowed: returns the iterate
    assert torch.isfinite(x).all()
    with pytest.raises(SolverError, match="not positive definite"):
        solve_cg(lambda x: -A(x), b)
    with pytest.raises(ShapeError, match="same shape"):
        solve_cg(lambda x: A(x)[:-1], b, x0=torch.zeros_like(b))
    with pytest.raises(ConfigError, match="rtol"):
        solve_cg(A, b, rtol=0.0)
    with pytest.raises(ConfigError, match="batch_dims"):
        solve_cg(A, b, batch_dims=5)
    with pytest.raises(ShapeError, match="x0"):
        solve_cg(A, b, x0=torch.zeros(3, dtype=D))


def test_no_grad_returns_plain_solution():
    n = 5
    c, kx, ky, b = coeffs(n, seed=17)
    kx = kx.clone().requires_grad_()
    with torch.no_grad():
        x = solve_cg(helmholtz(c, kx, ky), b)
    assert not x.requires_grad


def test_inside_checkpointed_rollout_gradients_match_plain():
    """An implicit elliptic step (the ocean model's use) under rollout checkpointing: same gradients."""
    from pelagos.core import rollout

    n = 6
    c, kx, ky, b = coeffs(n, seed=18)
    kx = kx.clone().requires_grad_()

    def step(q, t):
        psi = solve_cg(helmholtz(c, kx, ky), q, rtol=1e-12)
        return q + 0.1 * torch.tanh(psi)

    grads = []
    for ckpt in (None, 2):
        tr = rollout(step, b, 6, dt=1.0, checkpoint=ckpt)
        grads.append(torch.autograd.grad((tr.states**2).sum(), kx)[0])
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-12, atol=1e-14)
    assert float(grads[0].abs().max()) > 0


def test_second_order_hessians_match_dense():
    """second_order=True: Hessian-vector products (autograd create_graph, torch.func grad∘grad and
    jacrev∘jacrev) equal those of the dense solve."""
    n = 4
    c, kx, ky, b = coeffs(n, seed=13)
    g = torch.Generator().manual_seed(14)
    vc, vb = torch.randn(n, n, generator=g, dtype=D), torch.randn(n, n, generator=g, dtype=D)

    def f(cc, bb):
        return (solve_cg(helmholtz(cc, kx, ky), bb, rtol=1e-14, second_order=True) ** 3).sum()

    def f_dense(cc, bb):
        return (torch.linalg.solve(dense(helmholtz(cc, kx, ky), n), bb.reshape(-1)) ** 3).sum()

    Hc, Hb = torch.autograd.functional.hvp(f_dense, (c, b), (vc, vb))[1]
    cc, bb = c.clone().requires_grad_(), b.clone().requires_grad_()
    gc, gb = torch.autograd.grad(f(cc, bb), (cc, bb), create_graph=True)
    hc, hb = torch.autograd.grad((gc * vc).sum() + (gb * vb).sum(), (cc, bb))
    torch.testing.assert_close(hc, Hc, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(hb, Hb, rtol=1e-9, atol=1e-12)
    hvp_func = torch.func.grad(lambda x: (torch.func.grad(lambda y: f(y, b))(x) * vc).sum())(c)
    Hc_only = torch.autograd.functional.hvp(lambda x: f_dense(x, b), c, vc)[1]
    torch.testing.assert_close(hvp_func, Hc_only, rtol=1e-9, atol=1e-12)
    H = torch.func.jacrev(torch.func.jacrev(lambda y: f(c, y)))(b).reshape(n * n, n * n)
    H_ref = torch.autograd.functional.hessian(lambda y: f_dense(c, y), b).reshape(n * n, n * n)
    torch.testing.assert_close(H, H_ref, rtol=1e-9, atol=1e-12)

"""Gradients through the QG solver: central finite differences (float64), jvp vs vjp, checkpointing, vmap."""

import pytest
import torch
from torch.func import jvp, vmap

from pelagos.core.rollout import rollout
from pelagos.qg import BTModel, LayeredModel, QGModel, _step_c
from pelagos.qg.parameterizations import BackscatterBiharmonic, Smagorinsky

N = 6


def make(cls=QGModel, **kw):
    m = cls(nx=16, dt=3600.0 * 6, **kw)
    q0 = 1e-5 * torch.randn(2, m.nz, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    return m, q0


def loss_of(m, q0, raw=None, n=N, checkpoint=None):
    def run():
        traj = rollout(m, m.state_from_q(q0), n, save_every=n, checkpoint=checkpoint)
        q = traj.final["q"]
        return (q**2).mean() * 1e10 + (q[:, 0] * q[:, -1]).mean() * 3e10

    if raw is None:
        return run()
    with m.using(raw):
        return run()


def fd(f, x, v, eps):
    return (f(x + eps * v) - f(x - eps * v)) / (2 * eps)


@pytest.mark.parametrize("name,eps", [("rek", 1e-5), ("beta", 1e-16), ("rd", 1e-4), ("U1", 1e-6)])
def test_parameter_gradient_matches_central_fd(name, eps):
    m, q0 = make(parameterization=Smagorinsky(0.1))
    m.select_free([name])
    x0 = m.params.raw[name].detach().clone()  # unconstrained value (log for rek, rd; identity for beta, U1)
    x = x0.clone().requires_grad_(True)
    loss = loss_of(m, q0, {name: x})
    (g,) = torch.autograd.grad(loss, x)
    num = fd(lambda t: loss_of(m, q0, {name: t}).detach(), x0, torch.ones_like(x0), eps)
    assert abs(float(g) - float(num)) < 1e-6 * abs(float(num)) + 1e-14, (float(g), float(num))
    assert abs(float(num)) > 0


def test_initial_state_gradient_matches_fd_and_jvp_equals_vjp():
    m, q0 = make(parameterization=BackscatterBiharmonic())
    v = torch.randn(q0.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 1e-5
    x = q0.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(loss_of(m, x), x)
    dd_rev = float((g * v).sum())
    dd_fd = float(fd(lambda t: loss_of(m, t).detach(), q0, v, 1e-4))
    _, dd_fwd = jvp(lambda t: loss_of(m, t), (q0,), (v,))
    assert abs(dd_rev - dd_fd) < 1e-6 * abs(dd_fd)
    assert abs(float(dd_fwd) - dd_rev) < 1e-10 * abs(dd_rev)


def test_jvp_wrt_parameter_equals_vjp():
    m, q0 = make()
    m.select_free(["rek", "beta"])
    u = torch.stack([m.params.raw["rek"].detach(), m.params.raw["beta"].detach()])
    v = torch.tensor([0.5, 2e-12], dtype=torch.float64)

    def f(u):
        return loss_of(m, q0, {"rek": u[0], "beta": u[1]})

    _, fwd = jvp(f, (u,), (v,))
    x = u.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(f(x), x)
    assert abs(float(fwd) - float(g @ v)) < 1e-10 * abs(float(g @ v))


def test_checkpointed_rollout_gives_same_gradient():
    m, q0 = make()
    m.select_free(["rek"])
    g = []
    for ck in (None, "sqrt", 2):
        m.zero_grad()
        loss_of(m, q0, n=9, checkpoint=ck).backward()
        g.append(m.params.raw["rek"].grad.clone())
    assert torch.allclose(g[0], g[1], rtol=1e-12) and torch.allclose(g[0], g[2], rtol=1e-12)


def test_vmap_over_trajectories_equals_batch():
    m, q0 = make()

    def one(q):  # q (nz, ny, nx): vmap adds the batch
        st = m.state_from_q(q[None])
        for _ in range(5):
            st = m.step(st)
        return st["q"][0]

    ref = torch.stack([one(q) for q in q0])
    assert torch.allclose(vmap(one)(q0), ref, rtol=0, atol=1e-13 * float(ref.abs().max()))


@pytest.mark.parametrize("cls,name", [(LayeredModel, "U_1"), (BTModel, "beta")])
def test_other_models_gradients_fd(cls, name):
    m, q0 = make(cls)
    m.select_free([name])
    x0 = m.params.raw[name].detach().clone()
    eps = 1e-6 if name.startswith("U") else 1e-16
    x = x0.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(loss_of(m, q0, {name: x}), x)
    num = fd(lambda t: loss_of(m, q0, {name: t}).detach(), x0, torch.ones_like(x0), eps)
    assert abs(float(g) - float(num)) < 1e-6 * abs(float(num))


@pytest.mark.parametrize("free", ["all", "all-but-filter"])
@pytest.mark.parametrize("cls", [QGModel, LayeredModel, BTModel])
def test_fused_step_adjoint_equals_recorded_graph(cls, free, monkeypatch):
    """The one-node step (qg/adjoint.py) gives the gradients of the op-by-op recorded graph: all parameters
    (inversion, drag, beta, background flow, filter), the initial q, and a loss reading q, qh and dqhdt_p.
    Unless the filter strength is free, the node runs on the compiled kernels (qg/_step_c.py) if built."""
    m, q0 = make(cls)
    names = [n for n in m.params.raw if free == "all" or n != "filterfac"]
    calls = []
    adj = _step_c.adj_invert
    monkeypatch.setattr(_step_c, "adj_invert", lambda *a: (calls.append(1), adj(*a))[1])
    grads = []
    for fused in (True, False):
        m.fused_backward = fused
        m.select_free(names)
        m.zero_grad()
        x = q0.clone().requires_grad_(True)
        st = rollout(m, m.state_from_q(x), 7, save_every=7).final
        loss = (
            (st["q"] ** 2).mean() * 1e10
            + (st["qh"].abs() ** 2).mean() * 1e3
            + st["dqhdt_p"].real.mean() * 1e5
        )
        loss.backward()
        grads.append([x.grad] + [m.params.raw[n].grad for n in names])
    m.fused_backward = True
    compiled = free != "all" and _step_c.kernels() is not None
    assert len(calls) == (7 if compiled else 0)  # the compiled backward ran at every step, or never
    used = 0
    for name, a, b in zip(["q0", *names], *grads, strict=True):
        assert (a is None) == (b is None), name
        if b is not None:
            assert torch.allclose(a, b, rtol=1e-11, atol=1e-13 * float(b.abs().max())), name
            used += float(b.abs().max()) > 0
    assert used >= 4  # the comparison covers several non-zero gradients


@pytest.mark.parametrize("name,eps", [("rek", 1e-5), ("rd", 1e-4), ("U1", 1e-6), ("filterfac", 1e-4)])
def test_fused_step_parameter_gradient_matches_central_fd(name, eps):
    m, q0 = make()  # no closure: the one-node step with its hand-written adjoint
    m.select_free([name])
    x0 = m.params.raw[name].detach().clone()
    x = x0.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(loss_of(m, q0, {name: x}), x)
    num = fd(lambda t: loss_of(m, q0, {name: t}).detach(), x0, torch.ones_like(x0), eps)
    assert abs(float(g) - float(num)) < 1e-6 * abs(float(num)) + 1e-14, (float(g), float(num))
    assert abs(float(num)) > 0


def test_fused_step_initial_state_gradient_matches_fd():
    m, q0 = make()
    v = torch.randn(q0.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 1e-5
    x = q0.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(loss_of(m, x), x)
    dd_fd = float(fd(lambda t: loss_of(m, t).detach(), q0, v, 1e-4))
    assert abs(float((g * v).sum()) - dd_fd) < 1e-6 * abs(dd_fd)


@pytest.mark.parametrize("shape", [(8, 8), (6, 10), (7, 9)])
def test_fft_ops_backward_and_jvp_match_autograd(shape):
    from pelagos.qg.fftops import adjoint_weights, divergence, rfft2, velocities

    gen = torch.Generator().manual_seed(3)
    ny, nx = shape
    nk = nx // 2 + 1
    x = torch.randn(2, 2, ny, nx, dtype=torch.float64, generator=gen)
    ph = torch.randn(2, 2, ny, nk, dtype=torch.complex128, generator=gen)
    op = torch.randn(2, 1, ny, nk, dtype=torch.complex128, generator=gen)
    w = adjoint_weights(nx, nk, torch.float64, torch.device("cpu"))
    flux = torch.randn(2, 2, 2, ny, nx, dtype=torch.float64, generator=gen)
    cases = [
        (rfft2, lambda t: torch.fft.rfft2(t), x),
        (
            lambda t: velocities(t, op, op.conj() / w, shape),
            lambda t: torch.fft.irfft2(t.unsqueeze(-4) * op, s=shape, norm="forward"),
            ph,
        ),
        (lambda t: divergence(t, op, op.conj() * w), lambda t: (torch.fft.rfft2(t) * op).sum(-4), flux),
    ]
    for ours, ref, inp in cases:
        a = inp.clone().requires_grad_(True)
        out = ours(a)
        gout = torch.randn(out.shape, dtype=out.dtype, generator=gen)
        (g1,) = torch.autograd.grad(out, a, gout)
        b = inp.clone().requires_grad_(True)
        (g2,) = torch.autograd.grad(ref(b), b, gout)
        assert torch.allclose(g1, g2, atol=1e-12)
        t = torch.randn(inp.shape, dtype=inp.dtype, generator=gen)
        assert torch.allclose(jvp(ours, (inp,), (t,))[1], ref(t), atol=1e-12)  # linear: jvp = the map


def test_fused_step_adjoint_with_complex_cotangents():
    """A loss of the spectral outputs with complex weights and conj() (its gradient reaches the step as a
    lazily conjugated tensor): the compiled backward used to read the raw memory of conj(ḡ), flipping the
    imaginary parts; the fused node must give the recorded graph's gradient."""
    m, q0 = make()
    st0 = m.state_from_q(q0)
    gen = torch.Generator().manual_seed(1)
    w = {k: torch.randn(st0["qh"].shape, dtype=st0["qh"].dtype, generator=gen) for k in ("qh", "dqhdt_p")}
    grads = []
    for fused in (True, False):
        m.fused_backward = fused
        qh = st0["qh"].clone().requires_grad_(True)
        st = m.step(m.step(dict(st0, qh=qh)))
        loss = sum((st[k].conj() * w[k]).real.sum() * s for k, s in (("qh", 1.0), ("dqhdt_p", 1e5)))
        grads.append(torch.autograd.grad(loss, qh)[0])
    m.fused_backward = True
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-12 * float(grads[1].abs().max()))


@pytest.mark.parametrize("free", ["all", "all-but-filter"])
def test_fused_step_second_derivatives_equal_recorded_graph(free):
    """Double backward (create_graph=True: Hessians, Hessian-vector products, the Laplace covariance)
    through the one-node step equals the recorded graph's, for the initial q and every parameter at once.
    The node used to be @once_differentiable, whose guard ``autograd.grad(g, inputs)`` prunes instead of
    raising: the second-order terms through the step were dropped silently (∂²J/∂u² of log rek came back as
    ∂J/∂u, a Hessian that was not positive definite at the optimum of examples/qg_calibrate.py)."""
    m, q0 = make()
    names = [n for n in m.params.raw if free == "all" or n != "filterfac"]
    m.select_free(names)
    u0 = m.free_vector()
    gen = torch.Generator().manual_seed(4)
    vq = torch.randn(q0.shape, dtype=torch.float64, generator=gen)
    vu = torch.randn(u0.shape, dtype=torch.float64, generator=gen)
    hv = []
    for fused in (True, False):
        m.fused_backward = fused
        x, u = q0.clone().requires_grad_(True), u0.clone().requires_grad_(True)
        gx, gu = torch.autograd.grad(loss_of(m, x, raw=u, n=3), (x, u), create_graph=True)
        hv.append(torch.autograd.grad((gx * vq).sum() + (gu * vu).sum(), (x, u)))
    m.fused_backward = True
    for a, b in zip(*hv):
        assert float(b.abs().max()) > 0
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12 * float(b.abs().max()))

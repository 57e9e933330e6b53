"""Safe ops: forward values bit-identical to the plain ones, finite bounded gradients at the singular points,
exact gradients away from them (finite differences, forward vs reverse mode, vmap, double backward)."""

from __future__ import annotations

import math

import pytest
import torch

from pelagos.core.safe import (
    clamp_st,
    positive_part,
    safe_div,
    safe_pow,
    safe_sqrt,
    smooth_max,
    smooth_min,
    smooth_step,
    softclamp,
)

D = torch.float64


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# -- forward values ----------------------------------------------------------------------------------------
def test_forward_values_are_bit_identical():
    g = _gen()
    x = torch.cat(
        [torch.rand(200, generator=g, dtype=D) * 10, torch.tensor([0.0, 1e-300, 1e-13, 4.0], dtype=D)]
    )
    assert torch.equal(safe_sqrt(x), torch.sqrt(x))
    for p in (0.3, 0.5, 1.0, 2.5):
        assert torch.equal(safe_pow(x, p), torch.pow(x, p))
    pt = torch.rand(x.shape, generator=g, dtype=D)
    assert torch.equal(safe_pow(x, pt), torch.pow(x, pt))
    a = torch.randn(x.shape, generator=g, dtype=D)
    b = torch.randn(x.shape, generator=g, dtype=D) * 1e-8
    assert torch.equal(safe_div(a, b), a / b)
    y = torch.randn(300, generator=g, dtype=D)
    assert torch.equal(positive_part(y), torch.relu(y))
    assert torch.equal(positive_part(y, leak=0.3), torch.relu(y))
    assert torch.equal(clamp_st(y, -0.5, 0.7), torch.clamp(y, -0.5, 0.7))
    assert torch.equal(clamp_st(y, lo=0.1), torch.clamp(y, min=0.1))
    # float32 too
    assert torch.equal(safe_sqrt(x.float()), torch.sqrt(x.float()))


def test_negative_arguments_documented_values():
    x = torch.tensor([-1.0, -1e-20], dtype=D)
    assert torch.equal(safe_sqrt(x), torch.zeros(2, dtype=D))
    assert torch.equal(safe_pow(x, 0.5), torch.zeros(2, dtype=D))


# -- gradients at the singular points ----------------------------------------------------------------------
def test_sqrt_gradient_bounded_at_zero():
    eps = 1e-8
    x = torch.tensor([0.0, 1e-12, -3.0, 4.0], dtype=D, requires_grad=True)
    (g,) = torch.autograd.grad(safe_sqrt(x, eps).sum(), x)
    assert torch.isfinite(g).all()
    torch.testing.assert_close(
        g, torch.tensor([0.5 / math.sqrt(eps), 0.5 / math.sqrt(eps), 0.0, 0.25], dtype=D)
    )
    (g_plain,) = torch.autograd.grad(torch.sqrt(x[:2]).sum(), x)
    assert not torch.isfinite(g_plain[:2]).all()  # what the safe version protects against


def test_pow_gradients_bounded_at_zero_wrt_x_and_p():
    eps = 1e-6
    x = torch.tensor([0.0, 2.0], dtype=D, requires_grad=True)
    p = torch.tensor(0.4, dtype=D, requires_grad=True)
    gx, gp = torch.autograd.grad(safe_pow(x, p, eps).sum(), [x, p])
    torch.testing.assert_close(gx, torch.tensor([0.4 * eps ** (-0.6), 0.4 * 2.0 ** (-0.6)], dtype=D))
    torch.testing.assert_close(gp, torch.tensor(2.0**0.4 * math.log(2.0), dtype=D))  # 0 from x = 0
    gx_plain, _ = torch.autograd.grad(torch.pow(x, p).sum(), [x, p])
    assert not torch.isfinite(gx_plain[0])


def test_div_gradients_bounded_near_zero():
    eps = 1e-6
    a = torch.tensor([1.0, 2.0, 3.0], dtype=D, requires_grad=True)
    b = torch.tensor([1e-12, -1e-12, 0.5], dtype=D, requires_grad=True)
    ga, gb = torch.autograd.grad(safe_div(a, b, eps).sum(), [a, b])
    torch.testing.assert_close(ga, torch.tensor([1 / eps, -1 / eps, 2.0], dtype=D))
    torch.testing.assert_close(gb, torch.tensor([-1 / eps**2, -2 / eps**2, -12.0], dtype=D))


def test_positive_part_and_clamp_st_gradients():
    x = torch.tensor([-2.0, -0.0, 0.5, 3.0], dtype=D, requires_grad=True)
    for leak in (0.0, 0.25, 1.0):
        (g,) = torch.autograd.grad(positive_part(x, leak).sum(), x)
        torch.testing.assert_close(g, torch.tensor([leak, leak, 1.0, 1.0], dtype=D))
    (g,) = torch.autograd.grad(clamp_st(x, 0.0, 1.0).sum(), x)
    assert torch.equal(g, torch.ones(4, dtype=D))


# -- exact gradients away from the kinks: FD, jvp vs vjp, vmap, double backward ----------------------------
def _cases():
    g = _gen(3)
    xpos = torch.rand(7, generator=g, dtype=D) + 0.2
    a, b = torch.randn(7, generator=g, dtype=D), torch.rand(7, generator=g, dtype=D) + 0.3
    y = torch.randn(7, generator=g, dtype=D)
    y = y + 0.1 * torch.sign(y)  # away from the kink at 0
    p = torch.tensor(0.37, dtype=D)
    return {
        "sqrt": (lambda x: safe_sqrt(x, 1e-3), (xpos,)),
        "pow": (lambda x, q: safe_pow(x, q, 1e-3), (xpos, p)),
        "pow_float": (lambda x: safe_pow(x, 0.6), (xpos,)),
        "div": (lambda u, v: safe_div(u, v, 1e-3), (a, b)),
        "div_broadcast": (lambda u, v: safe_div(u, v), (a, b[:1])),
        "positive_part": (lambda x: positive_part(x), (y,)),
        "clamp_st_inside": (lambda x: clamp_st(x, -10.0, 10.0), (y,)),
        "smooth_max": (lambda u, v: smooth_max(u, v, 3.0), (a, y)),
        "smooth_min": (lambda u, v: smooth_min(u, v, 3.0), (a, y)),
        "softclamp": (lambda x: softclamp(x, -0.5, 0.5, 4.0), (y,)),
        "smooth_step": (lambda x: smooth_step(x, 5.0, 0.1), (y,)),
    }


@pytest.mark.parametrize("name", list(_cases()))
def test_gradcheck_forward_and_reverse(name):
    fn, inputs = _cases()[name]
    inputs = tuple(i.clone().requires_grad_() for i in inputs)
    # central differences (float64) of the full Jacobian vs reverse AND forward mode, plus batched grads
    assert torch.autograd.gradcheck(fn, inputs, check_forward_ad=True, check_batched_grad=True)
    assert torch.autograd.gradgradcheck(fn, inputs)


@pytest.mark.parametrize("name", list(_cases()))
def test_jvp_matches_vjp_and_vmap(name):
    fn, inputs = _cases()[name]
    g = _gen(11)
    tangents = tuple(torch.randn(i.shape, generator=g, dtype=D) for i in inputs)
    out, jv = torch.func.jvp(fn, inputs, tangents)
    w = torch.randn(out.shape, generator=g, dtype=D)
    _, vjp_fn = torch.func.vjp(fn, *inputs)
    vj = vjp_fn(w)
    lhs = (w * jv).sum()
    rhs = sum((v * t).sum() for v, t in zip(vj, tangents))
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-14)
    # vmap over a leading batch of the first input equals the loop
    xb = torch.stack([inputs[0], inputs[0] * 1.1, inputs[0] * 0.9])
    batched = torch.func.vmap(lambda x0: fn(x0, *inputs[1:]))(xb)
    for i in range(3):
        torch.testing.assert_close(batched[i], fn(xb[i], *inputs[1:]), rtol=1e-15, atol=1e-300)


def test_surrogate_gradients_consistent_in_forward_and_reverse_mode():
    """Where the derivative is a surrogate (leak, straight-through, eps floor), jvp and vjp agree with it."""
    x = torch.tensor([-1.0, 0.0, 1e-9, 2.0], dtype=D)
    t = torch.tensor([1.0, -2.0, 3.0, 0.5], dtype=D)
    for fn in (
        lambda z: positive_part(z, 0.3),
        lambda z: clamp_st(z, 0.0, 1.0),
        lambda z: safe_sqrt(z, 1e-6),
        lambda z: safe_pow(z, 0.3, 1e-6),
    ):
        _, jv = torch.func.jvp(fn, (x,), (t,))
        (g,) = torch.func.vjp(fn, x)[1](torch.ones(4, dtype=D))
        torch.testing.assert_close(jv, g * t, rtol=1e-14, atol=0)
        assert torch.isfinite(jv).all()


def test_func_grad_and_vmap_of_grad_at_singular_point():
    grad_fn = torch.func.grad(lambda x: safe_sqrt(x, 1e-4).sum())
    xs = torch.tensor([[0.0, 1.0], [4.0, 0.0]], dtype=D)
    g = torch.func.vmap(grad_fn)(xs)
    torch.testing.assert_close(g, torch.tensor([[50.0, 0.5], [0.25, 50.0]], dtype=D))


# -- smooth replacements: documented error bounds ----------------------------------------------------------
@pytest.mark.parametrize("k", [1.0, 10.0, 1e3])
def test_smooth_bounds(k):
    g = _gen(5)
    a = torch.randn(1000, generator=g, dtype=D)
    b = torch.randn(1000, generator=g, dtype=D)
    bound = math.log(2) / k
    roundoff = 4e-16 * (a.abs() + b.abs())
    gap = smooth_max(a, b, k) - torch.maximum(a, b)
    assert (gap >= -roundoff).all() and (gap <= bound + roundoff).all()
    gap = torch.minimum(a, b) - smooth_min(a, b, k)
    assert (gap >= -roundoff).all() and (gap <= bound + roundoff).all()
    torch.testing.assert_close(
        smooth_max(torch.zeros(1, dtype=D), torch.zeros(1, dtype=D), k), torch.full((1,), bound, dtype=D)
    )
    x = torch.linspace(-3, 3, 2001, dtype=D)
    c = softclamp(x, -1.0, 1.0, k)
    assert (c >= -1).all() and (c <= 1).all() and (torch.diff(c) >= -1e-15).all()  # monotone up to round-off
    if k <= 10:  # strictly inside and increasing (in exact arithmetic always; in float64 for moderate k)
        assert (c > -1).all() and (c < 1).all() and (torch.diff(c) > 0).all()
    assert ((c - torch.clamp(x, -1.0, 1.0)).abs() <= bound + 1e-15).all()
    s = smooth_step(x, k)
    assert (torch.diff(s) >= 0).all() and float(s[-1]) > 0.95 and float(s[0]) < 0.05


def test_softclamp_is_near_identity_inside():
    x = torch.linspace(-0.5, 0.5, 11, dtype=D)
    torch.testing.assert_close(softclamp(x, -1.0, 1.0, 50.0), x, atol=1e-10, rtol=0)


def test_softclamp_bad_bounds():
    from pelagos.core import ConfigError

    with pytest.raises(ConfigError, match="lo < hi"):
        softclamp(torch.zeros(2), 1.0, 0.0, 3.0)


def test_hessians_equal_plain_ops_away_from_singular_points():
    """Second derivatives (torch.func.hessian = forward-over-reverse, and autograd) match the plain ops."""
    x = torch.tensor([0.5, 2.0, 3.0], dtype=D)
    pairs = [
        (lambda z: safe_sqrt(z).sum(), lambda z: torch.sqrt(z).sum()),
        (lambda z: safe_pow(z, 0.3).sum(), lambda z: torch.pow(z, 0.3).sum()),
        (lambda z: safe_pow(z, z[0]).sum(), lambda z: torch.pow(z, z[0]).sum()),
        (lambda z: safe_div(z, z[1:2] + 1).sum(), lambda z: (z / (z[1:2] + 1)).sum()),
    ]
    for safe_f, plain_f in pairs:
        H = torch.func.hessian(safe_f)(x)
        torch.testing.assert_close(H, torch.autograd.functional.hessian(plain_f, x), rtol=1e-12, atol=1e-14)


def test_smooth_min_max_with_infinite_argument_returns_the_other():
    # e.g. a ratio that is +inf at night entering smooth_min: the result must be the finite argument, not NaN.
    from pelagos.core.safe import smooth_max, smooth_min

    x = torch.tensor([-2.0, 0.5, 3.0], dtype=torch.float64, requires_grad=True)
    inf = torch.tensor(float("inf"), dtype=torch.float64)
    lo = smooth_min(x, inf, 10.0)
    hi = smooth_max(x, -inf, 10.0)
    assert torch.equal(lo, x) and torch.equal(hi, x)
    (g,) = torch.autograd.grad((lo + hi).sum(), x)
    assert torch.equal(g, torch.full_like(x, 2.0))
    assert torch.isinf(smooth_max(x, inf, 10.0)).all()

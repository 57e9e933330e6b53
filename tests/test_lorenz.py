"""Lorenz-63/96 models: tendencies against hand-written formulas, RK4 order, batching, gradients."""

from __future__ import annotations

import pytest
import torch

from pelagos.core.errors import ConfigError, ShapeError
from pelagos.models import Lorenz63, Lorenz96

pytestmark = pytest.mark.usefixtures("float64_default")


def test_l96_tendency_matches_index_formula():
    m = Lorenz96(nx=7, F=8.0)
    x = torch.randn(7, generator=torch.Generator().manual_seed(0))
    ref = torch.tensor([(x[(i + 1) % 7] - x[i - 2]) * x[i - 1] - x[i] + 8.0 for i in range(7)])
    assert torch.allclose(m.tendency(x), ref, atol=1e-14)


def test_l96_energy_budget():
    # d/dt ½Σx² = −Σx² + FΣx: the advection term conserves energy.
    m = Lorenz96(nx=40, F=8.0)
    x = torch.randn(40, generator=torch.Generator().manual_seed(1)) * 3
    dE = (x * m.tendency(x)).sum()
    assert torch.allclose(dE, -(x * x).sum() + 8.0 * x.sum(), atol=1e-10)


def test_l63_tendency_and_fixed_point():
    m = Lorenz63()
    b, r = 8.0 / 3.0, 28.0
    c = (b * (r - 1)) ** 0.5
    fp = torch.tensor([c, c, r - 1])
    assert torch.allclose(m.tendency(fp), torch.zeros(3), atol=1e-12)
    s = torch.tensor([1.0, 2.0, 3.0])
    assert torch.allclose(m.tendency(s), torch.tensor([10.0, 1.0 * (28 - 3) - 2, 2.0 - b * 3]))


def test_rk4_is_fourth_order():
    m = Lorenz63()
    x0 = m.initial_state()

    def run(dt, T=0.2):
        m.dt = dt
        x = x0
        for k in range(round(T / dt)):
            x = m.step(x, k * dt)
        return x

    ref = run(1e-4)
    e1, e2 = (run(0.01) - ref).norm(), (run(0.005) - ref).norm()
    assert 12 < float(e1 / e2) < 20  # 2^4 = 16


def test_batched_parameters_equal_separate_runs():
    m = Lorenz96(nx=40)
    m.select_free(["F"])
    x = m.initial_state(3) + 0.1 * torch.randn(3, 40, generator=torch.Generator().manual_seed(2))
    F = torch.tensor([6.0, 8.0, 10.0])
    with m.using({"F": F}):  # identity transform: raw = physical
        xb = m.step(x)
    for i in range(3):
        with m.using({"F": F[i]}):
            assert torch.allclose(xb[i], m.step(x[i]), atol=1e-14)


def test_l96_step_gradient_fd_and_jvp():
    m = Lorenz96(nx=12)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(12, generator=g) * 2
    d = torch.randn(12, generator=g)
    w = torch.randn(12, generator=g)

    def f(x):
        for _ in range(5):
            x = m.step(x)
        return (w * x).sum()

    xx = x.clone().requires_grad_(True)
    (gr,) = torch.autograd.grad(f(xx), xx)
    h = 1e-5
    fd = (f(x + h * d) - f(x - h * d)) / (2 * h)
    assert abs(float(gr @ d - fd)) <= 1e-7 * abs(float(fd))
    _, jv = torch.func.jvp(f, (x,), (d,))
    assert abs(float(jv - gr @ d)) <= 1e-10 * abs(float(jv))


def test_l63_parameter_gradient_fd():
    m = Lorenz63()
    m.select_free(["sigma", "rho", "beta"])
    u0 = m.free_vector().double()
    x0 = m.initial_state()

    def f(u):
        with m.using(u):
            x = x0
            for _ in range(20):
                x = m.step(x)
        return x.sum()

    d = torch.tensor([0.3, -0.5, 0.8])
    uu = u0.clone().requires_grad_(True)
    (gr,) = torch.autograd.grad(f(uu), uu)
    h = 1e-6
    fd = (f(u0 + h * d) - f(u0 - h * d)) / (2 * h)
    assert abs(float(gr @ d - fd)) <= 1e-6 * abs(float(fd))


def test_bad_inputs():
    with pytest.raises(ConfigError, match="nx"):
        Lorenz96(nx=3)
    with pytest.raises(ShapeError, match="expected"):
        Lorenz96(nx=40).step(torch.zeros(39))
    with pytest.raises(ConfigError, match="sigma"):
        Lorenz63(sigma=-1.0)


def test_kind_declares_parameters_in_the_run_dtype():
    """8/3 declared in float64 is 8/3, not float32's 2.6666667461 carried into a float64 run."""
    from pelagos.core.registry import BuildContext, get_model_kind

    kind = get_model_kind("lorenz63")
    m = kind.build(kind.default_options(), BuildContext(dtype="float64"))
    assert float(m.get_parameter_value("beta")) == 8.0 / 3.0

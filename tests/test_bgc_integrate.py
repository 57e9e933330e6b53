"""Source integrators: order of accuracy, conservation, positivity of the modified Patankar schemes."""

import math

import pytest
import torch

from pelagos.bgc.integrate import (
    METHODS,
    ODE_METHODS,
    integrate_sources,
    method_name,
    net_rates,
    transfers_from_rates,
)
from pelagos.core.errors import ConfigError

K = 2.0e-5  # s-1


def decay_transfers(s):
    # a -> b at rate K a, b -> c at rate K b / 2: linear chain with a closed-form solution
    return {("a", "b"): K * s["a"], ("b", "c"): 0.5 * K * s["b"]}


def decay_rhs(s):
    return net_rates(decay_transfers(s))


def exact(t):
    a = math.exp(-K * t)
    k2 = 0.5 * K
    b = K / (k2 - K) * (math.exp(-K * t) - math.exp(-k2 * t))
    return a, b, 1.0 - a - b


def run(method, dt, T):
    s = {k: torch.tensor(v, dtype=torch.float64) for k, v in (("a", 1.0), ("b", 0.0), ("c", 0.0))}
    for _ in range(round(T / dt)):
        s = integrate_sources(decay_rhs, s, dt, method, ppdd=decay_transfers)
    return s


@pytest.mark.parametrize("method,order", [("euler", 1), ("rk2", 2), ("rk4", 4), ("mp", 1), ("mprk2", 2)])
def test_order_of_accuracy(method, order):
    T = 2.0e5
    errs = []
    for n in (20, 40):
        s = run(method, T / n, T)
        ea = exact(T)
        errs.append(max(abs(float(s[k]) - e) for k, e in zip("abc", ea)))
    rate = math.log2(errs[0] / errs[1])
    assert rate == pytest.approx(order, abs=0.3), (errs, rate)


@pytest.mark.parametrize("method", METHODS)
def test_conservation_to_round_off(method):
    s = run(method, 7.0e4, 1.4e6)  # dt K = 1.4: Euler overshoots, the sum must still be exact
    assert float(s["a"] + s["b"] + s["c"]) == pytest.approx(1.0, abs=1e-14)


def test_mp_positive_where_euler_goes_negative():
    dt = 2.0e5  # dt K = 4
    se = integrate_sources(
        decay_rhs, {"a": torch.tensor(1.0), "b": torch.tensor(0.0), "c": torch.tensor(0.0)}, dt
    )
    assert float(se["a"]) < 0.0
    for m in ("mp", "mprk2"):
        s = run(m, dt, 20 * dt)
        assert all(float(v) >= 0.0 for v in s.values())
        assert float(sum(s.values())) == pytest.approx(1.0, abs=1e-14)


def test_mp_with_outside_exchange_stays_positive():
    # strong loss to the outside (net negative rate) + production from outside
    def ppdd(s):
        return transfers_from_rates({"x": -1e-3 * s["x"] + 1e-8, "y": 2e-4 * s["x"]})

    s = {"x": torch.tensor([1.0, 1e-12, 0.0]), "y": torch.zeros(3)}
    for _ in range(10):
        s = integrate_sources(None, s, 1e4, "mp", ppdd=ppdd)
    assert bool((s["x"] >= 0).all()) and bool((s["y"] >= 0).all())


def test_mp_handles_empty_pools_without_nan():
    def ppdd(s):
        return {("a", "b"): 1e-4 * s["a"], ("b", "a"): 1e-4 * s["b"]}

    s = {"a": torch.tensor([0.0, 1.0]), "b": torch.tensor([0.0, 0.0])}
    out = integrate_sources(None, s, 1e3, "mprk2", ppdd=ppdd)
    assert bool(torch.isfinite(out["a"]).all()) and float(out["a"][0]) == 0.0


def test_method_names_and_gotm_numbers():
    assert ODE_METHODS == {1: "euler", 2: "rk2", 3: "rk4", 7: "mp", 8: "mprk2"}
    assert method_name(7) == "mp" and method_name("MP1") == "mp"
    with pytest.raises(ConfigError, match="valid: euler, rk2, rk4, mp, mprk2"):
        method_name("rk45")
    with pytest.raises(ConfigError, match="ode_method 4 is not implemented"):
        method_name(4)
    with pytest.raises(ConfigError, match="ppdd"):
        integrate_sources(decay_rhs, {"a": torch.tensor(1.0)}, 1.0, "mp")


def test_mp_gradients_fd_and_jvp_vs_vjp():
    torch.manual_seed(0)

    def f(c0, k):
        s = {"a": c0[0], "b": c0[1], "c": c0[2]}

        def ppdd(st):
            return {("a", "b"): k * st["a"] * st["b"] / (1.0 + st["b"]), ("b", "c"): 0.3 * k * st["b"]}

        for _ in range(5):
            s = integrate_sources(None, s, 1e5, "mprk2", ppdd=ppdd)
        return torch.stack([s["a"], s["b"], s["c"]])

    c0 = torch.tensor([1.0, 0.5, 0.2], dtype=torch.float64)
    k = torch.tensor(2e-5, dtype=torch.float64)
    v = torch.randn(3, dtype=torch.float64)
    vk = torch.tensor(1e-6, dtype=torch.float64)
    w = torch.randn(3, dtype=torch.float64)
    eps = 1e-6
    fd = (f(c0 + eps * v, k + eps * vk) - f(c0 - eps * v, k - eps * vk)) / (2 * eps)
    _, jv = torch.func.jvp(f, (c0, k), (v, vk))
    torch.testing.assert_close(jv, fd, rtol=1e-6, atol=1e-10)
    c0r, kr = c0.clone().requires_grad_(), k.clone().requires_grad_()
    gc, gk = torch.autograd.grad(f(c0r, kr) @ w, (c0r, kr))
    torch.testing.assert_close(gc @ v + gk * vk, jv @ w, rtol=1e-10, atol=1e-14)

"""rollout: analytic forward values, saving, pytrees, checkpointing (same values & gradients, recomputation),
autograd vs finite differences, torch.func.jvp and torch.func.vmap."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import pytest
import torch

from pelagos.core import ConfigError, Model, rollout


@pytest.fixture(autouse=True)
def _float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(1234)  # deterministic random inputs whatever ran before
    yield
    torch.set_default_dtype(old)


class Decay(Model):
    """dx/dt = -k x + a sin(t + x), implicit in the decay: x1 = (x0 + dt a sin(t + x0)) / (1 + k dt)."""

    def __init__(self, dt: float = 0.1) -> None:
        super().__init__()
        self.dt = dt
        self.declare_parameter("k", 0.7, units="1/s", bounds=(0.0, None), description="decay rate")
        self.declare_parameter("a", 0.0, units="1/s", description="forcing amplitude")
        self.calls = 0

    def step(self, x, t):
        self.calls += 1
        k = self.param_b("k", x.ndim)
        a = self.param_b("a", x.ndim)
        return (x + self.dt * a * torch.sin(torch.as_tensor(t) + x)) / (1 + k * self.dt)


@dataclasses.dataclass
class PairState:
    u: torch.Tensor
    v: torch.Tensor


class Pair(NamedTuple):
    u: torch.Tensor
    v: torch.Tensor


def rotate(s, t):
    """Exact rotation by angle dt=0.1 in the (u, v) plane, nonlinear tweak so gradients are non-trivial."""
    c, sn = torch.cos(torch.tensor(0.1)), torch.sin(torch.tensor(0.1))
    u, v = (s["u"], s["v"]) if isinstance(s, dict) else (s.u, s.v)
    nu, nv = c * u - sn * v + 0.01 * torch.tanh(v), sn * u + c * v
    if isinstance(s, dict):
        return {"u": nu, "v": nv}
    return type(s)(nu, nv)


def test_forward_matches_analytic_and_times():
    m = Decay(dt=0.25)
    x0 = torch.tensor([1.0, 2.0, -3.0])
    tr = rollout(m, x0, 12, t0=5.0, save_every=4)
    k = 0.7
    assert tr.steps == [0, 4, 8, 12]
    torch.testing.assert_close(tr.times, torch.tensor([5.0, 6.0, 7.0, 8.0]))
    assert tr.times.dtype == torch.float64
    expect = torch.stack([x0 / (1 + k * 0.25) ** n for n in (0, 4, 8, 12)])
    torch.testing.assert_close(tr.states, expect, rtol=1e-13, atol=0)
    torch.testing.assert_close(tr.final, expect[-1], rtol=1e-13, atol=0)
    assert len(tr) == 4
    torch.testing.assert_close(tr.at(-1), tr.final, rtol=0, atol=0)
    torch.testing.assert_close(tr.at(0), x0, rtol=0, atol=0)


def test_times_passed_to_step_and_no_initial():
    seen = []

    def step(x, t):
        seen.append(t)
        return x + 1

    tr = rollout(step, torch.zeros(2), 5, t0=1.0, dt=0.5, save_every=2, include_initial=False)
    assert seen == [1.0, 1.5, 2.0, 2.5, 3.0]
    assert all(isinstance(t, float) for t in seen)
    assert tr.steps == [2, 4]
    torch.testing.assert_close(tr.states, torch.tensor([[2.0, 2.0], [4.0, 4.0]]))
    torch.testing.assert_close(tr.final, torch.full((2,), 5.0))


def test_observe_saves_only_observation():
    m = Decay()
    x0 = torch.ones(3, 4)
    tr = rollout(m, x0, 6, save_every=3, observe=lambda x: {"top": x[:, 0]})
    assert set(tr.states) == {"top"} and tr.states["top"].shape == (3, 3)
    assert tr.final.shape == (3, 4)


@pytest.mark.parametrize("kind", ["dict", "dataclass", "namedtuple"])
@pytest.mark.parametrize("ckpt", [None, 3])
def test_pytree_states(kind, ckpt):
    u0 = torch.randn(4, requires_grad=True)
    v0 = torch.randn(4)
    s0 = {
        "dict": lambda: {"u": u0, "v": v0},
        "dataclass": lambda: PairState(u0, v0),
        "namedtuple": lambda: Pair(u0, v0),
    }[kind]()
    tr = rollout(rotate, s0, 10, dt=0.1, checkpoint=ckpt)
    u = tr.states["u"] if kind == "dict" else tr.states.u
    v = tr.final["v"] if kind == "dict" else tr.final.v
    assert u.shape == (11, 4)
    assert type(tr.at(3)) is type(s0)
    # rotation (plus small tanh) nearly conserves u²+v²; exact rotation without the tweak would conserve it
    ref = {"u": u0, "v": v0}
    for _ in range(10):
        ref = rotate(ref, 0.0)
    torch.testing.assert_close(v, ref["v"])
    (g,) = torch.autograd.grad(v.sum() + u.sum(), u0)
    assert torch.isfinite(g).all()


def _loss(m, x0, ckpt, n=23, save_every=2):
    tr = rollout(m, x0, n, checkpoint=ckpt, save_every=save_every)
    return (tr.states**2).sum() + tr.final.sum()


@pytest.mark.parametrize("ckpt", [1, 4, "sqrt", 50])
def test_checkpoint_same_values_and_gradients(ckpt):
    m = Decay()
    m.set_parameter_value("a", 0.3)
    m.select_free(["k", "a"])
    x0 = torch.randn(5, requires_grad=True)
    l_plain = _loss(m, x0, None)
    g_plain = torch.autograd.grad(l_plain, [x0, *m.parameters()])
    l_ck = _loss(m, x0, ckpt)
    g_ck = torch.autograd.grad(l_ck, [x0, *m.parameters()])
    torch.testing.assert_close(l_ck, l_plain, rtol=1e-14, atol=0)
    for a, b in zip(g_ck, g_plain):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_checkpoint_recomputes_each_segment_once_and_saves_less():
    m = Decay()
    m.select_free(["k"])
    x0 = torch.randn(5, requires_grad=True)
    n = 36
    counts = {}
    for ckpt in (None, "sqrt"):
        m.calls = 0
        packed = []

        def pack(t, packed=packed):
            packed.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            tr = rollout(m, x0, n, checkpoint=ckpt, observe=lambda x: x.sum())
        fwd_calls = m.calls
        tr.states.sum().backward()
        counts[ckpt] = (fwd_calls, m.calls - fwd_calls, len(packed))
    assert counts[None][:2] == (n, 0)  # plain: no recomputation
    assert counts["sqrt"][:2] == (n, n)  # every segment recomputed exactly once in backward
    # tensors kept alive outside the checkpointed segments: O(T) for plain, none inside segments for ckpt
    assert counts[None][2] >= 2 * n
    assert counts["sqrt"][2] < counts[None][2] // 4


def test_checkpoint_backward_after_using_block_uses_the_override():
    """Recomputation in backward must see the parameter values active at rollout time."""
    m = Decay()
    m.set_parameter_value("a", 0.5)
    u = torch.tensor(0.3, requires_grad=True)  # unconstrained k
    x0 = torch.randn(4)
    grads = []
    for ckpt in (None, 5):
        with m.using({"k": u}):
            tr = rollout(m, x0, 20, checkpoint=ckpt)
        loss = (tr.states**2).sum()  # backward runs *after* the with-block
        (g,) = torch.autograd.grad(loss, u)
        grads.append(g)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-12, atol=0)


def test_gradient_matches_central_differences():
    m = Decay()
    m.set_parameter_value("a", 0.4)
    torch.manual_seed(0)
    x0 = torch.randn(6)
    u = torch.tensor([0.2, 0.1])

    def f(uu, xx):
        with m.using({"k": uu[0], "a": uu[1]}):
            tr = rollout(m, xx, 15, checkpoint="sqrt")
        return (tr.states**2).sum()

    uu, xx = u.clone().requires_grad_(), x0.clone().requires_grad_()
    gu, gx = torch.autograd.grad(f(uu, xx), [uu, xx])
    du, dx = torch.randn(2), torch.randn(6)
    h = 1e-5  # central differences: truncation O(h²) vs round-off O(eps·|f|/h)
    fd = (f(u + h * du, x0 + h * dx) - f(u - h * du, x0 - h * dx)) / (2 * h)
    ad = (gu * du).sum() + (gx * dx).sum()
    assert abs(float(fd - ad)) <= 1e-6 * abs(float(ad))


@pytest.mark.parametrize("ckpt", [None, "sqrt"])
def test_jvp_matches_vjp(ckpt):
    m = Decay()
    m.set_parameter_value("a", 0.4)
    x0, dx, w = torch.randn(6), torch.randn(6), torch.randn(11, 6)

    def f(x):
        return rollout(m, x, 10, checkpoint=ckpt).states

    _, tang = torch.func.jvp(f, (x0,), (dx,))
    x = x0.clone().requires_grad_()
    (g,) = torch.autograd.grad((f(x) * w).sum(), x)
    torch.testing.assert_close((tang * w).sum(), (g * dx).sum(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("ckpt", [None, "sqrt"])
def test_vmap_over_states_and_parameters(ckpt):
    m = Decay()
    m.set_parameter_value("a", 0.4)
    xs = torch.randn(3, 5)
    us = torch.tensor([-0.5, 0.0, 0.7])

    def run(u, x):
        with m.using({"k": u}):
            return rollout(m, x, 8, checkpoint=ckpt).final

    batched = torch.func.vmap(run)(us, xs)
    for i in range(3):
        torch.testing.assert_close(batched[i], run(us[i], xs[i]), rtol=1e-14, atol=0)
    # batching by the parameter batch dim of the Model contract gives the same
    with m.using({"k": us}):
        direct = rollout(m, xs, 8, checkpoint=ckpt).final
    torch.testing.assert_close(direct, batched, rtol=1e-14, atol=0)


def test_func_grad_with_checkpoint_falls_back():
    m = Decay()
    x0 = torch.randn(5)
    g_func = torch.func.grad(lambda x: (rollout(m, x, 9, checkpoint=3).states ** 2).sum())(x0)
    x = x0.clone().requires_grad_()
    (g_ref,) = torch.autograd.grad((rollout(m, x, 9).states ** 2).sum(), x)
    torch.testing.assert_close(g_func, g_ref, rtol=1e-13, atol=0)


def test_progress_bar(capsys):
    rollout(Decay(), torch.ones(2), 5, progress=True)
    assert "5/5" in capsys.readouterr().err


def test_zero_steps():
    x0 = torch.ones(2)
    tr = rollout(Decay(), x0, 0)
    assert tr.steps == [0] and tr.final is x0
    tr = rollout(Decay(), x0, 0, include_initial=False)
    assert tr.states is None and len(tr.times) == 0
    with pytest.raises(IndexError, match="saved nothing"):
        tr.at(0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_steps": -1}, "n_steps"),
        ({"n_steps": 2.0}, "n_steps"),
        ({"save_every": 0}, "save_every"),
        ({"checkpoint": 0}, "checkpoint"),
        ({"checkpoint": "log"}, "checkpoint"),
        ({"dt": -1.0}, "dt"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = {"n_steps": 3, **kwargs}
    n = args.pop("n_steps")
    with pytest.raises(ConfigError, match=match):
        rollout(Decay(), torch.ones(2), n, **args)


def test_shape_change_during_run_is_a_clear_error():
    from pelagos.core import ShapeError

    with pytest.raises(ShapeError, match="changes shape"):
        rollout(lambda x, t: x.expand(2, -1), torch.ones(3), 2, dt=1.0)


def test_step_function_needs_dt_and_model_type_checked():
    with pytest.raises(ConfigError, match="dt is required"):
        rollout(lambda x, t: x, torch.ones(2), 3)
    with pytest.raises(ConfigError, match="callable"):
        rollout(42, torch.ones(2), 3)

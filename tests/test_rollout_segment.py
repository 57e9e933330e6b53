"""The checkpointed segment of rollout (pelagos.core.segment.SegmentFunction) for Models: the same values and
gradients as the unchecked loop and as ``torch.utils.checkpoint`` (today's path for bare step functions, and
what Models used before), gradients against central differences in float64 along random directions, second
derivatives, pytree states with integer, non-grad and non-tensor leaves, unequal segments, and the error for a
step that reads a tensor outside its inputs."""

from __future__ import annotations

import contextlib
import importlib
import math

import pytest
import torch

from pelagos.core import ConfigError, Model, rollout
from pelagos.core import segment as segment_mod

F64 = torch.float64


@pytest.fixture(autouse=True)
def _float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(F64)
    torch.manual_seed(99)
    yield
    torch.set_default_dtype(old)


class Toy(Model):
    """A dict state with a running mean (``_means``), an integer counter, a constant float field returned
    unchanged and a non-tensor leaf; a declared parameter ``k`` (overridable) and a plain ``nn.Parameter``."""

    def __init__(self, noise: float = 0.0) -> None:
        super().__init__()
        self.dt = 0.1
        self.declare_parameter("k", 0.5, units="1/s", bounds=(0.0, None))
        self.w = torch.nn.Parameter(torch.tensor([0.3, -0.2, 0.1]))
        self.noise = noise

    def initial_state(self, x: torch.Tensor) -> dict:
        return {
            "x": x,
            "fixed": torch.linspace(0.5, 1.0, x.shape[-1]),
            "count": torch.zeros((), dtype=torch.int64),
            "tag": 2.5,
            "_means": {"x": torch.zeros_like(x)},
        }

    def step(self, s: dict, t: float) -> dict:
        k = self.param("k")
        x, m = s["x"], s["_means"]["x"]
        dx = -k * x + self.w * torch.sin(x + t) * s["fixed"] + 0.1 * m
        if self.noise:
            dx = dx + self.noise * torch.randn(x.shape)
        x1 = x + self.dt * dx
        return {
            "x": x1,
            "fixed": s["fixed"],
            "count": s["count"] + 1,
            "tag": s["tag"],
            "_means": {"x": 0.8 * m + 0.2 * x1},
        }


def _observe(s: dict) -> dict:
    return {"x": s["x"], "mx": s["_means"]["x"], "count": s["count"]}


def _loss(tr) -> torch.Tensor:
    st = tr.states
    weights = torch.linspace(1.0, 2.0, st["x"].shape[0])[:, None]
    return (weights * st["x"] ** 2).sum() + st["mx"].sum() + (tr.final["x"] * tr.final["_means"]["x"]).sum()


def _run(m: Toy, x0: torch.Tensor, u: torch.Tensor, ckpt, *, bare: bool = False, n: int = 23):
    """Loss and its gradient in (x0, u, w); ``bare``: the model's step as a bare function, which takes the
    torch.utils.checkpoint path (backward inside the using block: a bare step has no overrides to restore)."""
    x0 = x0.clone().requires_grad_(True)
    u = u.clone().requires_grad_(True)
    with m.using({"k": u}):
        target = (lambda s, t: m.step(s, t)) if bare else m
        tr = rollout(
            target, m.initial_state(x0), n, dt=m.dt, t0=0.3, checkpoint=ckpt, save_every=2, observe=_observe
        )
        if bare:
            loss = _loss(tr)
            return tr, loss.detach(), torch.autograd.grad(loss, [x0, u, m.w])
    loss = _loss(tr)  # after the using block: the segments re-install the overrides themselves
    return tr, loss.detach(), torch.autograd.grad(loss, [x0, u, m.w])


@pytest.mark.parametrize("ckpt", [5, "sqrt", 1, 22])
def test_same_values_and_gradients_as_unchecked_and_torch_checkpoint(ckpt):
    m = Toy()
    x0, u = torch.randn(3), torch.tensor(-0.4)
    tr_p, l_p, g_p = _run(m, x0, u, None)
    _, l_t, g_t = _run(m, x0, u, ckpt, bare=True)
    calls = []
    orig = segment_mod.SegmentFunction.apply
    segment_mod.SegmentFunction.apply = lambda *a: calls.append(1) or orig(*a)  # type: ignore[method-assign]
    try:
        tr_s, l_s, g_s = _run(m, x0, u, ckpt)
    finally:
        segment_mod.SegmentFunction.apply = orig  # type: ignore[method-assign]
    assert len(calls) == -(-23 // (5 if ckpt == "sqrt" else ckpt))  # 23 steps: the last segment is shorter
    assert l_s == l_p and l_t == l_p  # the same operations: bitwise
    for a, b, c in zip(g_s, g_t, g_p):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)
        torch.testing.assert_close(a, c, rtol=1e-12, atol=0)
    assert int(tr_s.final["count"]) == 23 and tr_s.final["count"].dtype == torch.int64
    assert tr_s.states["count"].tolist() == list(range(0, 24, 2))
    assert tr_s.final["tag"] == 2.5
    torch.testing.assert_close(tr_s.final["fixed"], tr_p.final["fixed"], rtol=0, atol=0)


def test_backward_accumulates_into_parameters_and_leaves():
    """``.backward()`` (not autograd.grad) fills ``.grad`` of the nn.Parameter and of the override's leaf."""
    got = []
    for ckpt in (None, 4):
        m = Toy()
        x0 = torch.linspace(-1.0, 1.0, 3).requires_grad_(True)
        u = torch.tensor(0.2, requires_grad=True)
        with m.using({"k": u}):
            tr = rollout(m, m.initial_state(x0), 17, checkpoint=ckpt, observe=_observe)
        _loss(tr).backward()
        got.append((x0.grad, u.grad, m.w.grad))
    for a, b in zip(*got):
        assert a is not None and float(a.abs().max()) > 0
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)


def test_leaves_that_do_not_need_grad_and_frozen_parameters():
    m = Toy()
    m.w.requires_grad_(False)
    x0 = torch.randn(3, requires_grad=True)
    grads = []
    for ckpt in (None, "sqrt"):
        tr = rollout(m, m.initial_state(x0), 20, checkpoint=ckpt, observe=_observe)
        grads.append(torch.autograd.grad(_loss(tr), x0))
        assert not tr.final["fixed"].requires_grad
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-12, atol=0)


def test_gradient_matches_central_differences_toy():
    m = Toy()
    x0, u = torch.randn(3), torch.tensor(0.1)
    _, _, (gx, gu, gw) = _run(m, x0, u, "sqrt")
    g = torch.Generator().manual_seed(5)
    dx, du, dw = torch.randn(3, generator=g), torch.randn((), generator=g), torch.randn(3, generator=g)
    w0 = m.w.detach().clone()

    def f(s: float) -> float:
        with torch.no_grad():
            m.w.copy_(w0 + s * dw)
            with m.using({"k": u + s * du}):
                tr = rollout(m, m.initial_state(x0 + s * dx), 23, t0=0.3, save_every=2, observe=_observe)
            m.w.copy_(w0)
        return float(_loss(tr))

    h = 1e-5
    fd = (f(h) - f(-h)) / (2 * h)
    ad = float((gx * dx).sum() + gu * du + (gw * dw).sum())
    assert fd == pytest.approx(ad, rel=1e-7)


def test_lorenz96_gradient_matches_central_differences():
    from pelagos.models.lorenz import Lorenz96

    m = Lorenz96(nx=12)
    g = torch.Generator().manual_seed(2)
    x0 = 8.0 + torch.randn(12, generator=g)
    uF = torch.tensor(2.0)  # unconstrained forcing F (identity transform when unbounded)
    dx, dF = torch.randn(12, generator=g), torch.randn((), generator=g)

    def loss(x: torch.Tensor, uu: torch.Tensor, ckpt) -> torch.Tensor:
        with m.using({"F": uu}):
            tr = rollout(m, x, 40, checkpoint=ckpt, save_every=5)
        return (tr.states**2).sum() / 1000

    xx, ff = x0.clone().requires_grad_(True), uF.clone().requires_grad_(True)
    gx, gF = torch.autograd.grad(loss(xx, ff, "sqrt"), [xx, ff])
    xp, fp = x0.clone().requires_grad_(True), uF.clone().requires_grad_(True)
    gx0, gF0 = torch.autograd.grad(loss(xp, fp, None), [xp, fp])
    torch.testing.assert_close(gx, gx0, rtol=1e-12, atol=0)
    torch.testing.assert_close(gF, gF0, rtol=1e-12, atol=0)
    h = 1e-6
    with torch.no_grad():
        fd = (loss(x0 + h * dx, uF + h * dF, None) - loss(x0 - h * dx, uF - h * dF, None)) / (2 * h)
    ad = (gx * dx).sum() + gF * dF
    assert float(fd) == pytest.approx(float(ad), rel=1e-6)


def test_second_derivatives_equal_the_unchecked_ones():
    """create_graph=True through the segments (Hessian-vector products, the Laplace covariance): the
    recomputation is itself differentiable and gives the unchecked loop's second derivatives."""
    m = Toy()
    x0, u = torch.randn(3), torch.tensor(-0.3)
    vx, vu, vw = torch.randn(3), torch.randn(()), torch.randn(3)
    out = []
    for ckpt in (None, 6):
        m.w.grad = None
        xx, uu = x0.clone().requires_grad_(True), u.clone().requires_grad_(True)
        with m.using({"k": uu}):
            tr = rollout(m, m.initial_state(xx), 20, checkpoint=ckpt, save_every=2, observe=_observe)
        gx, gu, gw = torch.autograd.grad(_loss(tr), [xx, uu, m.w], create_graph=True)
        out.append(torch.autograd.grad((gx * vx).sum() + gu * vu + (gw * vw).sum(), [xx, uu, m.w]))
    for a, b in zip(*out):
        assert float(b.abs().max()) > 0
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)


def test_random_step_is_recomputed_with_the_same_numbers():
    m = Toy(noise=0.05)
    x0, u = torch.randn(3), torch.tensor(0.0)
    torch.manual_seed(7)
    _, l_p, g_p = _run(m, x0, u, None)
    torch.manual_seed(7)
    _, l_s, g_s = _run(m, x0, u, 4)
    assert l_s == l_p
    for a, b in zip(g_s, g_p):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)


class Leaky(Toy):
    """Reads a tensor that requires grad but is neither a parameter nor an override."""

    def __init__(self, c: torch.Tensor) -> None:
        super().__init__()
        self.c = c

    def step(self, s: dict, t: float) -> dict:
        out = super().step(s, t)
        return dict(out, x=out["x"] * self.c)


def test_step_reading_an_outside_tensor_is_a_clear_error():
    c = torch.tensor(1.01, requires_grad=True)
    m = Leaky(c)
    x0 = torch.randn(3, requires_grad=True)
    tr = rollout(m, m.initial_state(x0), 12, checkpoint=4, observe=_observe)
    with pytest.raises(ConfigError, match="checkpoint=None"):
        torch.autograd.grad(_loss(tr), [x0, c])
    # a tensor computed outside the step from such a leaf is caught too
    m2 = Leaky(c * 1.0)
    tr = rollout(m2, m2.initial_state(x0), 12, checkpoint=4, observe=_observe)
    with pytest.raises(ConfigError, match=r"nn\.Parameter"):
        _loss(tr).backward()
    # ... and the unchecked loop gives both gradients
    tr = rollout(m, m.initial_state(x0), 12, observe=_observe)
    assert all(g is not None for g in torch.autograd.grad(_loss(tr), [x0, c]))


def test_memory_kept_is_the_segment_inputs():
    """What autograd keeps for the backward pass: the segment inputs (O(T/s) states), not the steps."""
    m = Toy()
    x0 = torch.randn(3, requires_grad=True)
    for ckpt, n in (("sqrt", 100), ("sqrt", 400)):
        packed: list[int] = []

        def pack(t: torch.Tensor, packed: list[int] = packed) -> torch.Tensor:
            packed.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            rollout(m, m.initial_state(x0), n, checkpoint=ckpt, observe=lambda s: s["x"].sum())
        n_seg = math.ceil(n / math.ceil(math.sqrt(n)))
        # per segment: x, fixed, count, _means.x, the override-free model's w
        assert sum(packed) <= n_seg * (3 + 3 + 1 + 3 + 3)


# -- the water column (4 layers, NPZD): the model the segment Function was written for ---------------------
T0 = 6 * 3600.0


@contextlib.contextmanager
def _torch_checkpoint_segments():
    """rollout's Model segments through torch.utils.checkpoint with the overrides re-installed (its path
    before core/segment.py; a bare lambda step cannot stand in for the column: the column's first run builds
    caches, so the forward and its recomputation save different tensors)."""
    from pelagos.core.segment import run_segment_torch_checkpoint as run_segment

    ro = importlib.import_module("pelagos.core.rollout")

    orig, ro.run_segment = ro.run_segment, run_segment
    try:
        yield
    finally:
        ro.run_segment = orig


def _column_case(model):
    s = model.initial_state(3, t0=T0)
    g = torch.Generator().manual_seed(1)
    for k in ("npzd_phy", "npzd_zoo", "npzd_det"):
        s[k] = s[k] + torch.rand(s[k].shape, generator=g, dtype=F64)
    base = (torch.zeros(3, dtype=F64), torch.zeros((), dtype=F64), s["npzd_phy"].clone())

    def loss(log_rmax, nuh, phy0, ckpt, n=20):
        x0 = dict(s, npzd_phy=phy0)
        with model.using({"npzd.rmax": log_rmax, "nuh_scale": nuh}):
            tr = rollout(model, x0, n, t0=T0, checkpoint=ckpt, observe=lambda st: st["npzd_phy"][:, 0])
        return (tr.states**2).sum() + tr.final["npzd_det"].sum()

    return base, loss


def _column_grads(loss, base, ckpt):
    xs = [x.clone().requires_grad_(True) for x in base]
    return torch.autograd.grad(loss(*xs, ckpt), xs)


def _column_fd_check(loss, base, grads):
    g = torch.Generator().manual_seed(3)
    dirs = [torch.randn(x.shape, generator=g, dtype=F64) for x in base]
    eps = 1e-6
    with torch.no_grad():
        up = loss(*[x + eps * d for x, d in zip(base, dirs)], None)
        dn = loss(*[x - eps * d for x, d in zip(base, dirs)], None)
    fd = float(up - dn) / (2 * eps)
    ad = sum(float((gx * d).sum()) for gx, d in zip(grads, dirs))
    assert fd == pytest.approx(ad, rel=1e-6)


def test_column_gradients_equal_unchecked_and_torch_checkpoint_and_fd():
    from pelagos.column.kind import example

    base, loss = _column_case(example())
    g_plain = _column_grads(loss, base, None)
    with _torch_checkpoint_segments():
        g_torch = _column_grads(loss, base, "sqrt")
    g_seg = _column_grads(loss, base, "sqrt")
    for a, b, c in zip(g_seg, g_torch, g_plain):
        assert float(c.abs().max()) > 0
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)
        torch.testing.assert_close(a, c, rtol=1e-12, atol=0)
    _column_fd_check(loss, base, g_seg)


@pytest.mark.slow
def test_compiled_column_gradients_equal_plain_and_fd():
    """The compiled step (ColumnModel(compile=True)): the segment's forward takes the compiled no-grad
    program, its recomputation the compiled graph-recording one (compiling both: tens of seconds)."""
    from pelagos.column import compiled as cc
    from pelagos.column.kind import example

    if not cc.cxx_available():
        pytest.skip("no C++ compiler: the compiled step is off")
    plain, fast = example(), example()
    fast.compile_mode = "on"
    base, loss_plain = _column_case(plain)
    _, loss_fast = _column_case(fast)
    g_plain = _column_grads(loss_plain, base, None)
    g_fast = _column_grads(loss_fast, base, "sqrt")
    assert fast.__dict__.get("_compiled_step_obj") is not None
    g_fast_keep = _column_grads(loss_fast, base, None)
    for a, b, c in zip(g_fast, g_fast_keep, g_plain):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)  # the same compiled programs
        torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-14)  # fused code rounds differently
    _column_fd_check(loss_fast, base, g_fast)


class Blocky(Toy):
    """A model with the multi-step hook ``step_block(state, times)`` (helper colblock's): the segments use it
    in their forward and recomputation alike (here the steps one by one, counted; ``None`` for odd blocks)."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks: list[int] = []

    def step_block(self, s: dict, times: list[float]):
        if len(times) % 2:
            return None  # "not this time": the loop calls step per step
        self.blocks.append(len(times))
        for t in times:
            s = self.step(s, t)
        return s, {}, None


def test_segments_use_the_models_step_block_hook():
    m = Blocky()
    x0, u = torch.randn(3), torch.tensor(0.2)
    _, l_p, g_p = _run(Toy(), x0, u, None)
    _, l_s, g_s = _run(m, x0, u, 6)  # 23 steps, save_every=2: blocks of 2 (and the last step alone)
    assert m.blocks and set(m.blocks) == {2}
    assert len(m.blocks) == 2 * 11  # forward and recomputation
    assert l_s == l_p
    for a, b in zip(g_s, g_p):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)


class WholeBlocks(Blocky):
    """A model that runs its steps in blocks of 4 (``block_steps``; as the compiled column, one program per
    block length) and records every block's length."""

    block_steps = 4

    def step_block(self, s: dict, times: list[float]):
        for a in range(0, len(times), self.block_steps):
            self.blocks.append(len(times[a : a + self.block_steps]))
            for t in times[a : a + self.block_steps]:
                s = self.step(s, t)
        return s, {}, None


def test_sqrt_segments_are_whole_blocks_of_the_models_block_steps():
    """√30 → 6 steps per segment for a plain Model, 8 (two blocks of 4) for one that prefers blocks of 4:
    every call of the first three segments is a full block (one compiled program per length), the last
    segment is what is left (6 = 4 + 2); values and gradients are the unchecked loop's."""
    from pelagos.core.rollout import segment_length

    m = WholeBlocks()
    assert segment_length("sqrt", 30, Toy()) == 6
    assert segment_length("sqrt", 30, m) == 8
    assert segment_length("sqrt", 5, m) == 4  # never below one block, never above the run
    assert segment_length("sqrt", 3, m) == 3
    assert segment_length(5, 30, m) == 5  # an explicit length is the caller's
    x0, u = torch.randn(3), torch.tensor(0.2)

    def run(ckpt):
        x = x0.clone().requires_grad_(True)
        k = u.clone().requires_grad_(True)
        with m.using({"k": k}):
            tr = rollout(m, m.initial_state(x), 30, t0=0.3, checkpoint=ckpt, save_every=30, observe=_observe)
        loss = _loss(tr)
        return loss.detach(), torch.autograd.grad(loss, [x, k, m.w])

    m.blocks.clear()
    l_s, g_s = run("sqrt")
    assert m.blocks == [4, 4] * 3 + [4, 2] + [4, 2] + [4, 4] * 3  # forward, then recomputed from the end
    l_p, g_p = run(None)
    assert l_s == l_p
    for a, b in zip(g_s, g_p, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)


def test_a_short_run_is_split_into_whole_blocks():
    """What ``predict`` uses for a run between two observations no longer than one segment: two segments
    of whole blocks when the model has blocks (no second compiled block length), else the last step alone."""
    from pelagos.core.rollout import split_segment

    m = WholeBlocks()  # blocks of 4
    assert [split_segment(n, m) for n in (1, 2, 4, 5, 8, 9, 24)] == [1, 1, 3, 4, 4, 8, 20]
    assert [split_segment(n, Toy()) for n in (1, 2, 5, 24)] == [1, 1, 4, 23]
    m.blocks.clear()
    x = torch.randn(3).requires_grad_(True)
    tr = rollout(m, m.initial_state(x), 8, checkpoint=split_segment(8, m), save_every=8, observe=_observe)
    _loss(tr).backward()
    assert m.blocks == [4, 4, 4, 4]  # two segments of one block, forward and recomputation

"""Tests of pelagos.column.light against hand-computed exponentials and a literal GOTM-order loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pelagos.column import JERLOV, gotm_light, jerlov
from pelagos.core.errors import ConfigError, ShapeError

DT = torch.float64


def ref_light(I_0, h, k, A, g1, g2):
    """GOTM gotm_fabm light(): loop from the surface (1-based, N = surface), half a layer before/after."""
    N = len(h)
    z = np.zeros(N + 1)
    z[N] = h[N - 1] / 2
    for i in range(N - 1, 0, -1):
        z[i] = z[i + 1] + (h[i - 1] + h[i]) / 2
    par, swr, kpar, shade = (np.zeros(N) for _ in range(4))
    bioext = 0.0
    for i in range(N, 0, -1):
        bioext = bioext + k[i - 1] * h[i - 1] / 2
        par[i - 1] = I_0 * (1 - A) * math.exp(-z[i] / g2 - bioext)
        swr[i - 1] = par[i - 1] + I_0 * A * math.exp(-z[i] / g1)
        kpar[i - 1] = 1 / g2 + k[i - 1]
        bioext = bioext + k[i - 1] * h[i - 1] / 2
        shade[i - 1] = math.exp(-bioext)
    return par, swr, kpar, shade


def test_clear_water_hand_computed():
    h = torch.tensor([4.0, 2.0, 2.0], dtype=DT)  # centres at 6, 3, 1 m depth
    out = gotm_light(100.0, h, A=0.58, g1=0.35, g2=23.0)
    z = np.array([6.0, 3.0, 1.0])
    par = 100 * 0.42 * np.exp(-z / 23.0)
    np.testing.assert_allclose(out["z"].numpy(), z)
    np.testing.assert_allclose(out["PAR"].numpy(), par, rtol=1e-14)
    np.testing.assert_allclose(out["SWR"].numpy(), par + 58 * np.exp(-z / 0.35), rtol=1e-14)
    np.testing.assert_allclose(out["k_par"].numpy(), np.full(3, 1 / 23.0))
    np.testing.assert_allclose(out["bioshade"].numpy(), np.ones(3))


def test_self_shading_half_layer_rule():
    h = torch.tensor([4.0, 2.0, 2.0], dtype=DT)
    k = torch.tensor([0.3, 0.2, 0.1], dtype=DT)
    out = gotm_light(50.0, h, k, A=0.7, g1=0.4, g2=8.0)
    # bio optical depth at centres: top 0.1*1; middle 0.1*2 + 0.2*1; bottom 0.2 + 0.4 + 0.3*2
    tau = np.array([0.2 + 0.4 + 0.6, 0.2 + 0.2, 0.1])
    z = np.array([6.0, 3.0, 1.0])
    np.testing.assert_allclose(out["PAR"].numpy(), 50 * 0.3 * np.exp(-z / 8.0 - tau), rtol=1e-14)
    np.testing.assert_allclose(out["k_par"].numpy(), 1 / 8.0 + k.numpy(), rtol=1e-14)
    np.testing.assert_allclose(out["bioshade"].numpy(), np.exp(-np.array([1.8, 0.6, 0.2])), rtol=1e-14)


def test_matches_gotm_loop_random_and_batched():
    rng = np.random.default_rng(0)
    B, N = 4, 25
    h = rng.uniform(0.5, 3.0, (B, N))
    k = rng.uniform(0, 0.5, (B, N))
    I0 = rng.uniform(0, 800, B)
    A, g1, g2 = (np.array(v) for v in zip(*[JERLOV[t] for t in ("I", "IA", "II", "III")]))
    A, g1, g2 = map(torch.tensor, (A, g1, g2))
    out = gotm_light(torch.tensor(I0), torch.tensor(h), torch.tensor(k), A=A, g1=g1, g2=g2)
    for b in range(B):
        par, swr, kpar, shade = ref_light(I0[b], h[b], k[b], float(A[b]), float(g1[b]), float(g2[b]))
        np.testing.assert_allclose(out["PAR"][b].numpy(), par, rtol=1e-14, atol=1e-300)
        np.testing.assert_allclose(out["SWR"][b].numpy(), swr, rtol=1e-14, atol=1e-300)
        np.testing.assert_allclose(out["k_par"][b].numpy(), kpar, rtol=1e-15)
        np.testing.assert_allclose(out["bioshade"][b].numpy(), shade, rtol=1e-14)


def test_gradients_gradcheck_and_jvp():
    rng = np.random.default_rng(1)
    h = torch.tensor(rng.uniform(0.5, 2.0, (2, 6)), requires_grad=True)
    k = torch.tensor(rng.uniform(0, 0.3, (2, 6)), requires_grad=True)
    I0 = torch.tensor([200.0, 350.0], dtype=DT, requires_grad=True)
    g2 = torch.tensor(10.0, dtype=DT, requires_grad=True)

    def f(I0, h, k, g2):
        o = gotm_light(I0, h, k, A=0.6, g1=0.5, g2=g2)
        return o["PAR"], o["SWR"], o["bioshade"]

    assert torch.autograd.gradcheck(f, (I0, h, k, g2), eps=1e-7, atol=1e-6, rtol=1e-6)
    prim = tuple(x.detach() for x in (I0, h, k, g2))
    tang = tuple(torch.tensor(rng.normal(size=x.shape)) for x in prim)
    _, jv = torch.func.jvp(lambda *a: f(*a)[0], prim, tang)
    u = torch.tensor(rng.normal(size=(2, 6)))
    _, vjp_fn = torch.func.vjp(lambda *a: f(*a)[0], *prim)
    rhs = sum((a * b).sum() for a, b in zip(vjp_fn(u), tang))
    torch.testing.assert_close((u * jv).sum(), rhs, rtol=1e-11, atol=0)


def test_jerlov_lookup_and_errors():
    assert jerlov("jerlov-ii") == (0.77, 1.50, 14.0) and jerlov("IA") == JERLOV["IA"]
    with pytest.raises(ConfigError, match="Jerlov"):
        jerlov("IV")
    h = torch.ones(3, dtype=DT)
    with pytest.raises(ConfigError, match="k_bio"):
        gotm_light(1.0, h, -torch.ones(3, dtype=DT))
    with pytest.raises(ShapeError, match="k_bio"):
        gotm_light(1.0, h, torch.ones(4, dtype=DT))
    with pytest.raises(ConfigError, match="g2"):
        gotm_light(1.0, h, g2=0.0)
    with pytest.raises(ConfigError, match="h"):
        gotm_light(1.0, -h)


def test_vmap_over_columns():
    rng = np.random.default_rng(2)
    h = torch.tensor(rng.uniform(0.5, 2.0, (3, 5)))
    k = torch.tensor(rng.uniform(0, 0.3, (3, 5)))
    I0 = torch.tensor([100.0, 200.0, 300.0], dtype=DT)

    def f(I0, h, k):
        return gotm_light(I0, h, k)["PAR"]

    torch.testing.assert_close(torch.func.vmap(f)(I0, h, k), f(I0, h, k), rtol=1e-15, atol=0)


# -- the compiled light: GOTM's sum as the C++ operator pelagos::light_scan ----------------------------------
from pelagos.column import _light_op  # noqa: E402
from pelagos.column import light as light_module  # noqa: E402

op_only = pytest.mark.skipif(
    not _light_op.load(), reason=f"light_scan operator not built here: {_light_op.build_error()}"
)


@op_only
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_light_scan_operator_is_bitwise_the_eager_gotm_sum(dtype):
    """Same additions in the same order with aten cumsum's double accumulator: equal to the bit, also
    in float32 (an accumulator of the input's precision would differ), for odd row counts and layers."""
    g = torch.Generator().manual_seed(4)
    half = (torch.rand(3, 37, 53, generator=g, dtype=dtype) * 0.4).pow(3)  # a wide range of magnitudes
    at_centre, below = torch.ops.pelagos.light_scan(half)
    ref_at, ref_below = light_module._extinction_sums(half)  # eager: the cumsum
    assert torch.equal(at_centre, ref_at) and torch.equal(below, ref_below)
    # GOTM's running sum written out for one column
    s, col = 0.0, half[1, 5].double().tolist()
    for i in reversed(range(53)):
        s += col[i]
        assert at_centre[1, 5, i].item() == pytest.approx(s, rel=1e-6 if dtype == torch.float32 else 1e-15)
        s += col[i]


@op_only
def test_light_scan_operator_gradients_against_central_differences():
    half = torch.rand(4, 9, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: torch.ops.pelagos.light_scan(x), (half,), eps=1e-6, atol=1e-9)
    assert torch.autograd.gradgradcheck(lambda x: torch.ops.pelagos.light_scan(x), (half,), eps=1e-6)


@op_only
def test_compiled_light_uses_the_operator_and_matches_the_eager_light_and_its_gradient():
    graphs: list[str] = []

    def backend(gm: torch.fx.GraphModule, example_inputs: list) -> object:
        from torch._inductor.compile_fx import compile_fx

        graphs.append(str(gm.graph))
        return compile_fx(gm, example_inputs)

    g = torch.Generator().manual_seed(2)
    h = torch.rand(6, 20, generator=g, dtype=torch.float64) + 0.5
    k = (torch.rand(6, 20, generator=g, dtype=torch.float64) * 0.3).requires_grad_()
    I0 = torch.full((6,), 250.0, dtype=torch.float64)

    def loss(k_bio: torch.Tensor) -> torch.Tensor:
        out = gotm_light(I0, h, k_bio, A=0.7, g1=0.4, g2=8.0)
        return (out["PAR"] * torch.linspace(0, 1, 20, dtype=torch.float64)).sum() + out["bioshade"].sum()

    compiled = torch.compile(loss, backend=backend, dynamic=False)
    value = compiled(k)
    (grad,) = torch.autograd.grad(value, k)
    assert any("light_scan" in s for s in graphs), "the compiled light should call pelagos::light_scan"
    ref = loss(k)
    (ref_grad,) = torch.autograd.grad(ref, k)
    torch.testing.assert_close(value, ref, rtol=1e-13, atol=0)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-12, atol=1e-12)

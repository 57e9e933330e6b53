"""The fused column kernel (pelagos.column.fused): its generated C step against the plain step.

Every comparison runs the same model twice, ``compile=False`` (the plain step, the reference) and
``compile=True`` with enough columns for the fused kernel, and checks first that the kernel did run (its
reason is ``None`` and its plan was built), so a silent fall-back to the compiled step fails the test.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from pelagos.bgc import BGCModel, BGCSystem
from pelagos.bgc.npzd import NPZD
from pelagos.column import fused as fused_mod
from pelagos.column.compiled import cxx_available
from pelagos.column.forcing import ColumnForcing, compact_forcing_path
from pelagos.column.model import ColumnModel
from pelagos.core.errors import SolverError
from pelagos.core.rollout import rollout
from pelagos.core.simulation import MemoryWriter, Simulation

pytestmark = pytest.mark.skipif(not cxx_available(), reason="no C/C++ compiler")

F64 = torch.float64
PAR = "downwelling_photosynthetic_radiative_flux"
START = 120 * 86400.0  # 1 May: light, a bloom under way
B = 16  # two SIMD blocks of float64 columns
_LIMITERS = ("P2_PDM", "UPSTREAM", "SUPERBEE", "MUSCL")


@pytest.fixture(scope="module")
def forcing():
    return ColumnForcing.from_gotm(
        compact_forcing_path(), start=START - 7200, stop=START + 12 * 86400, dtype=F64
    )


class Plankton(BGCModel):
    """A made-up model the kernel has never seen: a sinking and a rising tracer, temperature and light
    limitation through sigmoid/tanh, a clamp, a where, a power, a registered constant velocity (full_like)."""

    fabm_name = "test/plankton"

    def __init__(self, w_sink: float = -5.0, w_rise: float = 2.0):
        super().__init__()
        rp = self.register_parameter
        rp("mu", 1.5, "d-1", scale_factor=1 / 86400, minimum=0.0, maximum=10.0)
        rp("ks", 0.5, "mmol m-3", minimum=0.0, maximum=10.0)
        rp("m2", 0.2, "d-1", scale_factor=1 / 86400, minimum=0.0, maximum=10.0)
        rs = self.register_state_variable
        rs("n", "mmol m-3", initial_value=5.0, conserved={"total_n": 1.0})
        rs("p", "mmol m-3", initial_value=0.5, vertical_movement=w_sink / 86400,
           specific_light_extinction=0.05, conserved={"total_n": 1.0})  # fmt: skip
        rs("b", "mmol m-3", initial_value=0.2, vertical_movement=w_rise / 86400, conserved={"total_n": 1.0})
        self.register_dependency("par", PAR, "W m-2")
        self.register_dependency("temp", "temperature")

    def do(self, s, env):
        n, p, b = s["n"], s["p"], s["b"]
        P = lambda q: self.p(q, n.ndim)  # noqa: E731
        f_t = torch.sigmoid((env["temperature"] - 10.0) / 2.0)
        f_i = torch.tanh(env[PAR] / 50.0)
        f_n = torch.clamp(n / (P("ks") + n), max=0.9)
        growth = P("mu") * f_t * f_i * f_n * p
        loss = P("m2") * torch.where(p > 1.0, p**2, torch.sqrt(p + 1e-3) * p)
        rise = 0.05 / 86400 * torch.exp(-b) * b
        return {"n": -growth + loss + rise, "p": growth - loss, "b": -rise}, {"growth": growth * 86400}


def _pair(bgc, forcing, **kw):
    plain = ColumnModel(bgc, forcing, dt=3600.0, **kw)
    fast = ColumnModel(bgc, forcing, dt=3600.0, compile=True, **kw)
    return plain, fast


def _perturbed(model, seed=0, t0=START, columns=B):
    """The model's initial state, every column and layer made different (zero fields made positive)."""
    g = torch.Generator().manual_seed(seed)
    s = model.initial_state(columns, t0=t0)

    def rand(v):
        return torch.rand(v.shape, generator=g, dtype=v.dtype)

    return {k: v * (1 + 0.2 * rand(v)) + 0.05 * rand(v) for k, v in s.items()}


def _ran_fused(model):
    fc = model.__dict__.get("_fused_obj")
    return model.__dict__.get("_fused_reason", "not asked") is None and fc is not None and fc._plans


def _assert_fields_close(a, b, names, tol):
    for q in names:
        scale = float(a[q].abs().max())
        err = float((a[q] - b[q]).abs().max())
        assert err <= tol * scale, f"{q}: {err:.3e} > {tol:g} x {scale:.3e}"


def test_npzd_fused_equals_the_plain_step_with_per_column_parameters(forcing):
    bgc = BGCSystem({"npzd": NPZD()}).double()
    plain, fast = _pair(bgc, forcing)
    s0 = _perturbed(plain)
    g = torch.Generator().manual_seed(1)
    raw = {}
    for q in ("npzd.rmax", "npzd.gmax"):  # a parameter per column, as an ensemble has
        v = plain.get_parameter_value(q) * torch.exp(0.3 * torch.randn(B, generator=g, dtype=F64))
        raw[q] = plain.parameter_spec(q).transform.inverse(v)
    n = 48
    with torch.no_grad():
        with plain.using(raw):
            ref = rollout(plain, s0, n, t0=START, save_every=n, include_initial=False).final
        with fast.using(raw):
            got = rollout(fast, s0, n, t0=START, save_every=n, include_initial=False).final
    assert _ran_fused(fast)
    _assert_fields_close(ref, got, plain.interior, 1e-12)
    # the per-column parameters mattered: the columns differ
    assert float((got["npzd_phy"][0] - got["npzd_phy"][1]).abs().max()) > 1e-6


@pytest.mark.parametrize("method", ["P2_PDM", "UPSTREAM", "SUPERBEE", "MUSCL"])
def test_a_model_the_kernel_has_never_seen_sinking_and_rising(forcing, method):
    bgc = BGCSystem({"pl": Plankton()}).double()
    plain, fast = _pair(bgc, forcing, sinking_method=method)
    s0 = _perturbed(plain, seed=2, columns=B + 5)  # a last block of 5 of the 8 SIMD columns
    n = 30
    with torch.no_grad():
        ref = rollout(plain, s0, n, t0=START, save_every=n, include_initial=False).final
        got = rollout(fast, s0, n, t0=START, save_every=n, include_initial=False).final
    assert _ran_fused(fast)
    _assert_fields_close(ref, got, plain.interior, 1e-12)
    moved = float((ref["pl_b"] - s0["pl_b"]).abs().max())
    assert moved > 1e-3  # the tracers did move


def test_several_sinking_substeps_per_step(forcing):
    """100 m/d through 5 m layers in an hour: Courant number > 1, GOTM's sub-steps (counted per step)."""
    bgc = BGCSystem({"pl": Plankton(w_sink=-300.0)}).double()
    plain, fast = _pair(bgc, forcing)
    s0 = _perturbed(plain, seed=3)
    n = 12
    with torch.no_grad():
        ref = rollout(plain, s0, n, t0=START, save_every=n, include_initial=False).final
        got = rollout(fast, s0, n, t0=START, save_every=n, include_initial=False).final
    assert _ran_fused(fast)
    plan = next(iter(fast._fused_obj._plans.values()))
    assert plan.last_substeps > 1
    _assert_fields_close(ref, got, plain.interior, 1e-12)


def test_float32_fused_is_as_close_to_float64_as_the_plain_float32_step(forcing):
    f32 = ColumnForcing.from_gotm(
        compact_forcing_path(), start=START - 7200, stop=START + 3 * 86400, dtype=torch.float32
    )
    plain32, fast32 = (m.float() for m in _pair(BGCSystem({"npzd": NPZD()}), f32))
    ref_model = ColumnModel(BGCSystem({"npzd": NPZD()}).double(), forcing, dt=3600.0)
    s64 = _perturbed(ref_model, seed=4)
    s32 = {k: v.float() for k, v in s64.items()}
    n = 24

    def final(model, s):
        return rollout(model, s, n, t0=START, save_every=n, include_initial=False).final

    with torch.no_grad():
        ref, plain, got = final(ref_model, s64), final(plain32, s32), final(fast32, s32)
    assert _ran_fused(fast32) and got["npzd_phy"].dtype == plain["npzd_phy"].dtype == torch.float32
    for q in ref_model.interior:
        scale = float(ref[q].abs().max())
        e_plain = float((plain[q].double() - ref[q]).abs().max())
        e_fused = float((got[q].double() - ref[q]).abs().max())
        assert e_fused <= 3 * e_plain + 1e-6 * scale, (q, e_fused, e_plain)


def test_interval_means_through_simulation_equal_the_plain_step(forcing):
    """``Simulation`` (``pelagos run``'s loop) with daily means of a diagnostic, PAR and a state variable."""
    bgc = BGCSystem({"npzd": NPZD()}).double()
    ref_model = ColumnModel(bgc, forcing, dt=3600.0)
    fast = ColumnModel(bgc, forcing, dt=3600.0, compile=True)
    s0 = _perturbed(ref_model, seed=5)
    names = ["npzd_PPR", "npzd_NPR", "PAR", "npzd_phy", "total_nitrogen"]

    def run(model):
        mem = MemoryWriter(names)
        Simulation(model, s0, start=START, n_steps=48, output_every=24, writers=[mem], progress=False).run()
        return mem.stacked()

    with torch.no_grad():
        ref, got = run(ref_model), run(fast)
    assert _ran_fused(fast)
    means = [v.name for v in fast.output_variables() if v.mean]
    assert {"npzd_PPR", "PAR"} <= set(means)  # interval means, summed inside the kernel
    for q in names:
        a, b = ref[q], got[q]
        assert a.shape == b.shape and a.shape[0] == 3  # the initial record and two days
        torch.testing.assert_close(
            b, a, rtol=1e-11, atol=1e-12 * float(a.nan_to_num().abs().max()), equal_nan=True
        )


def test_what_the_kernel_does_not_take(forcing, monkeypatch):
    bgc = BGCSystem({"npzd": NPZD()}).double()
    model = ColumnModel(bgc, forcing, dt=3600.0, compile=True)
    s0 = model.initial_state(B, t0=START)
    assert fused_mod.fused_column(model, s0) is not None
    x = {k: v.clone().requires_grad_(True) for k, v in s0.items()}  # a gradient: the adjoint kernel
    fc = fused_mod.fused_column(model, x)
    assert fc is not None and fc.grad and model._fused_reason is None
    with torch.autograd.forward_ad.dual_level():  # forward mode (dual tensors): the tangent kernel
        dual = {k: torch.autograd.forward_ad.make_dual(v, torch.ones_like(v)) for k, v in s0.items()}
        fc = fused_mod.fused_column(model, dual)
        assert fc is not None and fc.tangent and not fc.grad

    def refused(x):  # a torch.func transform: the compiled step
        assert (
            fused_mod.fused_column(model, {"npzd_nut": x, **{k: v for k, v in s0.items() if k != "npzd_nut"}})
            is None
        )
        return x

    torch.func.vmap(refused)(s0["npzd_nut"][None])
    assert model._fused_reason == "a torch.func transform"
    split = ColumnModel(bgc, forcing, dt=3600.0, compile=True, split_factor=2)
    assert fused_mod.fused_column(split, s0) is None and "splitting" in split._fused_reason
    monkeypatch.setattr(fused_mod, "MIN_COLUMNS", B)  # PELAGOS_COLUMN_FUSED_MIN=16
    few = model.initial_state(B - 1, t0=START)  # too few columns for a forward: the compiled step
    assert model._fused_steps(few, [START, START + 3600.0], ()) == (few, None, 0)
    assert "fewer than" in model._fused_reason


def _adjoint_calls(model):
    return sum(p.adjoint_calls for p in model._fused_obj._plans.values() if not isinstance(p, str))


def _loss_and_grads(model, s0, names, n, raw=None):
    """A weighted sum of the final state after ``n`` steps and its gradient with respect to the initial
    state and the unconstrained parameters ``names`` (``raw``: their values, default the model's)."""
    raw = raw or {q: model.parameter_spec(q).transform.inverse(model.get_parameter_value(q)) for q in names}
    raw = {q: v.detach().clone().requires_grad_(True) for q, v in raw.items()}
    s = {k: v.detach().clone().requires_grad_(True) for k, v in s0.items()}
    with model.using(raw):
        fin = rollout(model, s, n, t0=START, save_every=n, include_initial=False).final
    loss = sum(
        (fin[q] * (1.0 + 0.3 * i)).sum() + 0.1 * fin[q].square().sum() for i, q in enumerate(model.interior)
    )
    grads = torch.autograd.grad(loss, [*s.values(), *raw.values()])
    return loss.detach(), dict(zip([*s, *raw], grads, strict=True))


def _assert_grads_close(ref, got, tol):
    for k in ref:
        scale = float(ref[k].abs().max())
        err = float((ref[k] - got[k]).abs().max())
        assert err <= tol * max(scale, 1e-30), f"d/d{k}: {err:.3e} > {tol:g} x {scale:.3e}"


NPZD_FREE = ("npzd.rmax", "npzd.gmax", "npzd.w_p", "npzd.w_d", "npzd.kc", "npzd.iv", "npzd.alpha",
             "npzd.i_min", "npzd.rpdu", "npzd.rzd")  # fmt: skip


@pytest.mark.parametrize("columns", [1, B + 5])
def test_gradient_through_the_adjoint_kernel_equals_the_plain_steps(forcing, columns):
    """Reverse mode through the fused kernel (its generated adjoint) against autograd through the plain
    step: the initial state and ten NPZD parameters (growth, grazing, sinking velocities, light), with repair;
    one column (pelagos calibrate's case) and a last SIMD block of 5 of 8 columns."""
    bgc = BGCSystem({"npzd": NPZD()}).double()
    plain, fast = _pair(bgc, forcing, repair=True)
    s0 = _perturbed(plain, seed=8, columns=columns)
    n = 30
    l_ref, g_ref = _loss_and_grads(plain, s0, NPZD_FREE, n)
    l_got, g_got = _loss_and_grads(fast, s0, NPZD_FREE, n)
    assert _ran_fused(fast) and _adjoint_calls(fast) == 1  # the backward was the adjoint kernel's
    torch.testing.assert_close(l_got, l_ref, rtol=1e-13, atol=0)
    _assert_grads_close(g_ref, g_got, 1e-10)
    assert all(float(g.abs().max()) > 0 for g in g_ref.values())  # every input mattered


@pytest.mark.parametrize("method", ["P2_PDM", "UPSTREAM", "SUPERBEE", "MUSCL", "substeps", "still"])
def test_adjoint_of_a_model_the_kernel_has_never_seen(forcing, method):
    """The limiters' adjoints (and sinking sub-steps; and no moving tracer at all) with a made-up model
    (sigmoid, tanh, clamp, where, power, sqrt, exp): gradients equal the plain step's."""
    w_sink = {"substeps": -300.0, "still": 0.0}.get(method, -30.0)
    bgc = BGCSystem({"pl": Plankton(w_sink=w_sink, w_rise=0.0 if method == "still" else 2.0)}).double()
    plain, fast = _pair(bgc, forcing, sinking_method=method if method in _LIMITERS else "P2_PDM")
    s0 = _perturbed(plain, seed=9, columns=B + 5)
    names = ("pl.mu", "pl.ks", "pl.m2")
    n = 20
    _, g_ref = _loss_and_grads(plain, s0, names, n)
    _, g_got = _loss_and_grads(fast, s0, names, n)
    assert _ran_fused(fast) and _adjoint_calls(fast) == 1
    plan = next(iter(fast._fused_obj._plans.values()))
    if method == "substeps":
        assert plan.last_substeps > 1
    assert (plan.moving == []) == (method == "still")
    _assert_grads_close(g_ref, g_got, 1e-10)


def test_float32_gradient_is_as_close_to_float64_as_the_plain_float32_gradient():
    """The adjoint in float32 (16 lanes, float64 accumulators for the parameters): its gradient is as close
    to the float64 plain gradient as the plain float32 step's."""
    f64, f32 = (
        ColumnForcing.from_gotm(compact_forcing_path(), start=START - 7200, stop=START + 3 * 86400, dtype=d)
        for d in (F64, torch.float32)
    )
    ref = ColumnModel(BGCSystem({"npzd": NPZD()}).double(), f64, dt=3600.0)
    plain32, fast32 = (m.float() for m in _pair(BGCSystem({"npzd": NPZD()}), f32))
    s64 = _perturbed(ref, seed=19, columns=19)  # a partial second block of 16 float32 lanes
    s32 = {k: v.float() for k, v in s64.items()}
    names = ("npzd.rmax", "npzd.w_d")
    _, g64 = _loss_and_grads(ref, s64, names, 24)
    _, g_plain = _loss_and_grads(plain32, s32, names, 24)
    _, g_fused = _loss_and_grads(fast32, s32, names, 24)
    assert _adjoint_calls(fast32) == 1 and g_fused["npzd.rmax"].dtype == torch.float32
    for k in g64:
        scale = float(g64[k].abs().max())
        e_plain = float((g_plain[k].double() - g64[k]).abs().max())
        e_fused = float((g_fused[k].double() - g64[k]).abs().max())
        assert e_fused <= 3 * e_plain + 1e-6 * scale, (k, e_fused, e_plain)


def test_adjoint_with_a_parameter_per_column(forcing):
    """Per-column parameters (an ensemble's, the benchmark's): each column's own gradient; a sinking
    velocity shared by the columns, free too."""
    bgc = BGCSystem({"npzd": NPZD()}).double()
    plain, fast = _pair(bgc, forcing)
    s0 = _perturbed(plain, seed=10, columns=B + 3)
    g = torch.Generator().manual_seed(11)
    raw = {}
    for q in ("npzd.rmax", "npzd.gmax", "npzd.w_d"):
        size = () if q == "npzd.w_d" else (B + 3,)  # a velocity per column is physics per column
        v = plain.get_parameter_value(q) * torch.exp(0.3 * torch.randn(size, generator=g, dtype=F64))
        raw[q] = plain.parameter_spec(q).transform.inverse(v)
    _, g_ref = _loss_and_grads(plain, s0, raw, 24, raw=raw)
    _, g_got = _loss_and_grads(fast, s0, raw, 24, raw=raw)
    assert _ran_fused(fast) and _adjoint_calls(fast) == 1
    assert g_got["npzd.rmax"].shape == (B + 3,)
    _assert_grads_close(g_ref, g_got, 1e-10)


def test_adjoint_against_central_differences_and_forward_mode(forcing):
    """float64: the fused reverse-mode derivative along a random direction of (initial state, parameters)
    against central finite differences of the fused forward, and against forward mode (torch.func.jvp,
    which runs the compiled step: the kernel takes no forward-mode AD)."""
    bgc = BGCSystem({"npzd": NPZD()}).double()
    fast = ColumnModel(bgc, forcing, dt=3600.0, compile=True)
    s0 = _perturbed(fast, seed=12, columns=B)
    names = ("npzd.rmax", "npzd.gmax", "npzd.w_d", "npzd.kc")
    raw0 = {q: fast.parameter_spec(q).transform.inverse(fast.get_parameter_value(q)) for q in names}
    n = 24
    _, grads = _loss_and_grads(fast, s0, names, n, raw=raw0)
    assert _adjoint_calls(fast) == 1
    g = torch.Generator().manual_seed(13)
    d_s = {k: torch.randn(v.shape, generator=g, dtype=F64) * v for k, v in s0.items()}
    d_p = {q: torch.randn((), generator=g, dtype=F64) for q in names}
    reverse = sum(float((grads[k] * d).sum()) for k, d in (d_s | d_p).items())

    def loss(s, raw):
        with fast.using(raw):
            fin = rollout(fast, s, n, t0=START, save_every=n, include_initial=False).final
        return sum((fin[q] * (1.0 + 0.3 * i)).sum() + 0.1 * fin[q].square().sum()
                   for i, q in enumerate(fast.interior))  # fmt: skip

    eps = 1e-6
    with torch.no_grad():
        up = loss(
            {k: v + eps * d_s[k] for k, v in s0.items()}, {q: v + eps * d_p[q] for q, v in raw0.items()}
        )
        dn = loss(
            {k: v - eps * d_s[k] for k, v in s0.items()}, {q: v - eps * d_p[q] for q, v in raw0.items()}
        )
    fd = float(up - dn) / (2 * eps)
    assert abs(reverse - fd) <= 1e-6 * abs(fd), (reverse, fd)
    _, forward = torch.func.jvp(loss, (s0, raw0), (d_s, d_p))
    assert abs(reverse - float(forward)) <= 1e-10 * abs(float(forward)), (reverse, float(forward))


@pytest.mark.parametrize("method", ["P2_PDM", "UPSTREAM", "SUPERBEE", "MUSCL", "substeps"])
def test_forward_mode_through_the_tangent_kernel(forcing, method):
    """Dual tensors (``torch.autograd.forward_ad``) in the state and in parameters: the tangent-linear kernel
    gives the plain step's primal and tangent (the limiters' derivatives, sinking sub-steps, repair)."""
    import torch.autograd.forward_ad as fwAD

    w_sink = -300.0 if method == "substeps" else -30.0
    bgc = BGCSystem({"pl": Plankton(w_sink=w_sink)}).double()
    plain, fast = _pair(
        bgc, forcing, repair=True, sinking_method="P2_PDM" if method == "substeps" else method
    )
    s0 = _perturbed(plain, seed=15, columns=B + 5)
    g = torch.Generator().manual_seed(16)
    d_s = {k: torch.randn(v.shape, generator=g, dtype=F64) * v for k, v in s0.items()}
    d_p = {q: torch.randn((), generator=g, dtype=F64) for q in ("pl.mu", "pl.m2")}
    n = 20
    outs = []
    for m in (plain, fast):
        raw0 = {q: m.parameter_spec(q).transform.inverse(m.get_parameter_value(q)) for q in d_p}
        with fwAD.dual_level():
            s = {k: fwAD.make_dual(v, d_s[k]) for k, v in s0.items()}
            with m.using({q: fwAD.make_dual(v, d_p[q]) for q, v in raw0.items()}):
                fin = rollout(m, s, n, t0=START, save_every=n, include_initial=False).final
            outs.append({k: tuple(x.clone() for x in fwAD.unpack_dual(v)) for k, v in fin.items()})
    plan = next(iter(fast._fused_obj._plans.values()))
    assert fast._fused_reason is None and plan.tangent_calls == 1
    for k, (p_ref, t_ref) in outs[0].items():
        p, t = outs[1][k]
        assert float((p - p_ref).abs().max()) <= 1e-12 * float(p_ref.abs().max()), k
        assert float((t - t_ref).abs().max()) <= 1e-10 * float(t_ref.abs().max()), k


@pytest.mark.parametrize("name", ["nuh_scale", "I0_scale"])
def test_derivatives_with_respect_to_the_physics(forcing, name):
    """A free physics scale (the diffusion matrix, the surface light): the adjoint kernel adds the matrix's
    adjoint (-λ yᵀ on its diagonals) and the surface light's, the tangent kernel their tangents (dA y moved to
    the right-hand side, the light's); both equal the plain step."""
    import torch.autograd.forward_ad as fwAD

    bgc = BGCSystem({"npzd": NPZD()}).double()
    plain, fast = _pair(bgc, forcing)
    s0 = _perturbed(plain, seed=18, columns=3)
    raw = {name: plain.parameter_spec(name).transform.inverse(plain.get_parameter_value(name)).double() + 0.1}
    _, g_ref = _loss_and_grads(plain, s0, raw, 12, raw=raw)
    _, g_got = _loss_and_grads(fast, s0, raw, 12, raw=raw)
    assert fast._fused_reason is None and _adjoint_calls(fast) == 1
    _assert_grads_close(g_ref, g_got, 1e-10)
    assert float(g_ref[name].abs()) > 0
    tangents = []
    for m in (plain, fast):
        with fwAD.dual_level(), m.using({name: fwAD.make_dual(raw[name], torch.ones_like(raw[name]))}):
            fin = rollout(m, s0, 8, t0=START, save_every=8, include_initial=False).final
            tangents.append(fwAD.unpack_dual(fin["npzd_phy"]).tangent.clone())
    plan = next(p for p in fast._fused_obj._plans.values() if not isinstance(p, str))
    assert fast._fused_reason is None and plan.tangent_calls == 1
    scale = float(tangents[0].abs().max())
    torch.testing.assert_close(tangents[1], tangents[0], rtol=1e-10, atol=1e-12 * scale)


def test_adjoint_with_physics_per_column_keeps_the_compiled_gradient(forcing):
    """Physics per column has no fused adjoint yet: that gradient runs the compiled step, and is right."""
    a = torch.linspace(0.5, 1.5, 3, dtype=F64)
    bgc = BGCSystem({"npzd": NPZD()}).double()
    plain, fast = _pair(bgc, _per_column_forcing(forcing, a))
    s0 = _perturbed(plain, seed=14, columns=len(a))
    _, g_ref = _loss_and_grads(plain, s0, ("npzd.rmax",), 4)
    _, g_got = _loss_and_grads(fast, s0, ("npzd.rmax",), 4)
    assert "physics per column" in fast._fused_reason
    _assert_grads_close(g_ref, g_got, 1e-10)


def test_a_call_the_kernel_stops_taking_part_way_finishes_step_by_step(forcing, monkeypatch):
    """If the kernel refuses a later chunk of a call and no compiled block is there to take it, step_block
    finishes the steps one by one, the interval means continued from the kernel's sums: as the plain loop."""
    bgc = BGCSystem({"npzd": NPZD()}).double()
    ref_model = ColumnModel(bgc, forcing, dt=3600.0)
    fast = ColumnModel(bgc, forcing, dt=3600.0, compile=True)
    s0 = _perturbed(ref_model, seed=17, columns=3)
    monkeypatch.setattr(fused_mod.FusedColumn, "max_steps", 5)
    real = fused_mod.FusedColumn.steps
    calls = []

    def second_refused(self, state, raws, means=()):
        calls.append(1)
        return "refused for the test" if len(calls) == 2 else real(self, state, raws, means)

    monkeypatch.setattr(fused_mod.FusedColumn, "steps", second_refused)
    monkeypatch.setattr(ColumnModel, "_compiled_step", lambda self, state: None)
    names = ("npzd_PPR", "PAR")
    times = [START + 3600.0 * k for k in range(12)]
    with torch.no_grad():
        state, means, out = fast.step_block(s0, times, names)
        ref, sums = s0, {q: 0.0 for q in names}
        for t in times:
            ref = ref_model.step(ref, t)
            o = ref_model.output(ref, t + 3600.0)
            sums = {q: sums[q] + o[q] for q in names}
    assert len(calls) == 2  # five steps fused, then refused: seven one by one
    _assert_fields_close(ref, state, ref_model.interior, 1e-12)
    for q in names:
        torch.testing.assert_close(means[q], sums[q] / len(times), rtol=1e-11, atol=0)
    assert set(names) <= set(out)


@pytest.mark.slow
def test_a_model_year_gradient_through_the_adjoint_kernel():
    """The NNS NPZD year (compact 22-layer physics, hourly, FABM's yaml), checkpointed (sqrt segments): the
    gradient through the fused adjoint against central differences of the fused forward along a direction of
    two per-column rmax values, and against autograd through the plain step."""
    from pelagos.io.config import resolve_path

    f = ColumnForcing.from_gotm(compact_forcing_path())
    yaml = resolve_path("builtin:fabm/fabm-gotm-npzd.yaml", None)
    plain = ColumnModel(BGCSystem.from_yaml(yaml), f).to(F64)
    fast = ColumnModel(BGCSystem.from_yaml(yaml), f, compile=True).to(F64)
    t0, n = f.t_start, 8760
    s = plain.initial_state(2, t0=t0)

    def loss(model, log_rmax):
        with model.using({"npzd.rmax": log_rmax}):
            fin = rollout(model, s, n, t0=t0, checkpoint="sqrt", save_every=n, include_initial=False).final
        return fin["npzd_phy"].sum() + fin["npzd_nut"].sum()

    grads = []
    for model in (plain, fast):
        x = torch.zeros(2, dtype=F64, requires_grad=True)
        grads.append(torch.autograd.grad(loss(model, x), x)[0])
    assert _adjoint_calls(fast) > 1
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-9, atol=0)
    d = torch.tensor([0.6, -0.8], dtype=F64)
    eps = 1e-5
    with torch.no_grad():
        fd = (float(loss(fast, eps * d)) - float(loss(fast, -eps * d))) / (2 * eps)
    assert fd == pytest.approx(float((grads[1] * d).sum()), rel=1e-5)


@pytest.mark.slow
def test_a_model_year_fused_equals_the_plain_step():
    """The NNS NPZD year (compact 22-layer physics, hourly, FABM's yaml) with daily saves: fused vs plain
    <= 1e-12 of each field's magnitude at the end of the year, as the compiled step is held to."""
    from pelagos.io.config import resolve_path

    f = ColumnForcing.from_gotm(compact_forcing_path())
    yaml = resolve_path("builtin:fabm/fabm-gotm-npzd.yaml", None)
    plain = ColumnModel(BGCSystem.from_yaml(yaml), f).to(F64)
    fast = ColumnModel(BGCSystem.from_yaml(yaml), f, compile=True).to(F64)
    t0, n = f.t_start, 8760
    s = _perturbed(plain, seed=6, t0=t0)
    with torch.no_grad():
        ref = rollout(plain, s, n, t0=t0, save_every=24, include_initial=False).final
        got = rollout(fast, s, n, t0=t0, save_every=24, include_initial=False).final
    assert _ran_fused(fast)
    _assert_fields_close(ref, got, plain.interior, 1e-12)


def test_checkpointed_gradient_with_a_fused_forward_sweep(forcing):
    """A checkpointed gradient: the forward sweep records no graph (the fused forward), each segment is
    recomputed with a graph (the fused kernel's autograd node) and run backwards by the adjoint kernel. The
    gradient equals the plain step's."""
    bgc = BGCSystem({"npzd": NPZD()}).double()
    plain, fast = _pair(bgc, forcing)
    s0 = _perturbed(plain, seed=7)

    def grad(model):
        u = {"npzd.rmax": torch.zeros((), dtype=F64, requires_grad=True)}
        with model.using(u):
            fin = rollout(model, s0, 24, t0=START, save_every=24, include_initial=False, checkpoint=12).final
        (fin["npzd_phy"].sum() + fin["npzd_nut"].square().sum()).backward()
        return u["npzd.rmax"].grad

    ref = grad(plain)
    got = grad(fast)
    assert fast._fused_obj._plans and _adjoint_calls(fast) == 2  # two segments of 12 steps
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=0)


def test_a_non_finite_state_is_an_error_naming_the_variable(forcing):
    bgc = BGCSystem({"npzd": NPZD()}).double()
    model = ColumnModel(bgc, forcing, dt=3600.0, compile=True)
    s0 = model.initial_state(B, t0=START)
    s0["npzd_det"][3, 5] = float("nan")
    with torch.no_grad(), pytest.raises(SolverError, match="npzd_det"):
        rollout(model, s0, 4, t0=START, save_every=4, include_initial=False)
    assert model._fused_reason is None  # raised by the kernel's check, not by a fall-back


def test_a_state_of_another_dtype_than_the_forcing_keeps_the_compiled_step(forcing):
    """The plain step promotes a float32 state on float64 forcing to float64; the kernel would not."""
    model = ColumnModel(BGCSystem({"npzd": NPZD()}).double(), forcing, dt=3600.0, compile=True)
    s32 = {k: v.float() for k, v in model.initial_state(B, t0=START).items()}
    with torch.no_grad():
        assert model._fused_steps(s32, [START, START + 3600.0], ())[2] == 0
    assert "dtype" in model._fused_reason


def test_an_ensemble_of_parameters_through_stacked_column(forcing):
    """ES-MDA's forecast: one initial column stepped through ``StackedColumn`` with ``Ne`` parameter values
    runs as ``Ne`` columns (the stacked view repeats the column); the kernel takes them."""
    from pelagos.column.stacked import StackedColumn

    bgc = BGCSystem({"npzd": NPZD()}).double()
    plain, fast = (StackedColumn(m) for m in _pair(bgc, forcing))
    x0 = plain.stack(_perturbed(plain.model, seed=8, columns=1))  # (1, V, nz)
    v = plain.get_parameter_value("npzd.gmax") * torch.linspace(0.5, 2.0, B, dtype=F64)
    raw = {"npzd.gmax": plain.parameter_spec("npzd.gmax").transform.inverse(v)}

    def final(model):
        with torch.no_grad(), model.using(raw):
            return rollout(model, x0, 24, t0=START, save_every=24, include_initial=False).final

    ref, got = final(plain), final(fast)
    assert _ran_fused(fast.model) and got.shape == ref.shape == (B, *x0.shape[1:])
    _assert_fields_close(plain.unstack(ref), fast.unstack(got), plain.variables, 1e-12)


def _per_column_forcing(forcing, a):
    """``forcing`` made into one site per factor in ``a``: layers scaled by it, warmer, more or less mixed
    and lit (a ``ColumnForcing`` of shape ``(len(a), T, nz)``)."""
    fl = {k: v.reshape(-1, *v.shape[-2:])[0] if k != "I_0" else v.reshape(-1, v.shape[-1])[0]
          for k, v in forcing.fields.items()}  # fmt: skip
    return ColumnForcing(
        forcing.time, torch.stack([fl["h"] * x for x in a]), torch.stack([fl["temp"] + 2 * x for x in a]),
        torch.stack([fl["salt"]] * len(a)), torch.stack([fl["nuh"] * (2 - x) for x in a]),
        torch.stack([fl["I_0"] * (1.6 - x / 2) for x in a]), epoch=forcing.epoch,
    )  # fmt: skip


def test_physics_per_column(forcing):
    """Many sites: each column with its own layers, mixing, temperature and surface light (and so its own
    sinking Courant number, sub-steps and factorisation) — ``ColumnForcing`` of shape ``(B, T, nz)``."""
    a = torch.linspace(0.3, 1.6, B + 3, dtype=F64)  # 19 columns: a partial last block
    f = _per_column_forcing(forcing, a)
    h = f.fields["h"]  # thin layers: several sinking sub-steps in some columns
    bgc = BGCSystem({"pl": Plankton(w_sink=-60.0)}).double()
    plain, fast = _pair(bgc, f)
    s0 = _perturbed(plain, seed=9, columns=len(a))
    n = 24
    with torch.no_grad():
        ref = rollout(plain, s0, n, t0=START, save_every=n, include_initial=False).final
        got = rollout(fast, s0, n, t0=START, save_every=n, include_initial=False).final
    assert _ran_fused(fast)
    assert next(iter(fast._fused_obj._plans.values())).per_column
    from pelagos.column.advection import courant_substeps, face_velocities

    w = torch.full_like(h[:, 0], -60.0 / 86400)
    it = courant_substeps(face_velocities(w, h[:, 0]), h[:, 0], 3600.0)
    assert int(it.max()) > 1 and int(it.min()) == 1  # sub-steps differ between the columns
    _assert_fields_close(ref, got, plain.interior, 1e-12)


def test_clipped_sinking_substeps_warn_with_physics_per_column(forcing):
    """A column whose sinking needs more than GOTM's 100 sub-steps warns, as the plain step does."""
    fl = {k: v.reshape(-1, *v.shape[-2:])[0] if k != "I_0" else v.reshape(-1, v.shape[-1])[0]
          for k, v in forcing.fields.items()}  # fmt: skip
    a = torch.linspace(0.05, 1.0, B, dtype=F64)  # 0.25 m layers in the first column
    f = ColumnForcing(
        forcing.time, torch.stack([fl["h"] * x for x in a]), torch.stack([fl["temp"]] * B),
        torch.stack([fl["salt"]] * B), torch.stack([fl["nuh"]] * B), torch.stack([fl["I_0"]] * B),
        epoch=forcing.epoch,
    )  # fmt: skip
    fast = ColumnModel(BGCSystem({"pl": Plankton(w_sink=-1000.0)}).double(), f, dt=3600.0, compile=True)
    s0 = _perturbed(fast, seed=10)
    # the clipped, unstable sinking may blow up: the SolverError that says so is not the point here
    with (
        torch.no_grad(),
        pytest.warns(RuntimeWarning, match="sub-steps clipped"),
        contextlib.suppress(SolverError),
    ):
        rollout(fast, s0, 2, t0=START, save_every=2, include_initial=False)
    assert fast._fused_reason is None and next(iter(fast._fused_obj._plans.values())).per_column

"""The fast parts of ``pelagos calibrate`` on the water column (issue 10) give the numbers of the slow ones.

- the first-guess and final predictions the driver reuses are those of a fresh run, bitwise;
- forward-mode derivatives with torch's zero tangents run as ordinary arithmetic: same values as reverse mode
  and finite differences;
- ``checkpoint="sqrt"`` over the whole window gives the gradient of the kept graph;
- the calibrate cost's gradient (reverse) equals central differences in float64 and the forward-mode
  Jacobian's ``Jᵀ r``;
- forward mode on the compiled column step (``CompiledJvpStep``: ``torch.func.jvp`` compiled, the solve's
  tangent by ``A⁻¹``) gives the plain step's Jacobian and central differences.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from pelagos.column.compiled import cxx_available
from pelagos.core import obsio
from pelagos.core._torch_quirks import fast_zero_tangents, load_jvp_decompositions
from pelagos.inverse.calibrate import calibrate
from pelagos.inverse.forward import predict
from pelagos.inverse.problem import VariationalProblem
from pelagos.io import inverse_run as ir
from pelagos.io.build import setup
from pelagos.io.config import load_config

# torch's Inductor, imported by the first compilation of a process, scripts a module of its own
# (torch.utils.mkldnn) and warns about it: not pelagos's
pytestmark = pytest.mark.filterwarnings(
    r"ignore:`torch\.jit\.script_method` is deprecated:DeprecationWarning"
)

TRUTH = {"npzd.rmax": 1.0, "npzd.gmax": 0.2}


def _column_problem(days: float = 3.0, checkpoint=None, compile: bool = False):
    """A short NNS column (22 × 5 m, hourly, May) with log observations of a twin; 2 free parameters."""
    cfg = load_config(
        {
            "model": {"kind": "column", "fabm_yaml": "builtin:fabm/fabm-gotm-npzd.yaml", "dtype": "float64"},
            "forcing": {"file": "builtin:nns_annual_22x5m.nc"},
            "time": {
                "start": "1998-05-01 00:00:00",
                "stop": f"1998-05-0{1 + int(days)} 00:00:00",
                "dt": 3600,
            },
            "numerics": {
                "ode_method": "euler",
                "sinking_method": "P2_PDM",
                "cnpar": 1.0,
                "light": "I",
                "compile": compile,
            },
            "parameters": {"npzd.rmax": 0.7, "npzd.gmax": 0.3},
        }
    )
    s = setup(cfg)
    model, x0 = ir.inverse_view(s, "calibrate")
    samplings = [
        obsio.Sampling(
            "npzd_phy", {"depth": ["surface", 20.0]}, obsio.regular_times(model, s.t0, s.t1, 21600.0)
        ),
        obsio.Sampling("npzd_nut", {"depth": [5.0, 50.0]}, obsio.regular_times(model, s.t0, s.t1, 43200.0)),
    ]
    raw = {
        n: model.parameter_spec(n).transform.inverse(torch.tensor(v, dtype=torch.float64))
        for n, v in TRUTH.items()
    }
    with model.using(raw):
        obs = obsio.synthetic_observations(
            model, x0, None, samplings, start=s.t0, noise="lognormal", sigma=0.1,
            generator=torch.Generator().manual_seed(3),
        )  # fmt: skip
    obs = ir._squeezed(obs)
    model.select_free(list(TRUTH))
    for n in TRUTH:
        model.set_prior(n, float(model.get_parameter_value(n).detach()), 1.0)
    return model, x0, obs, s.t0, VariationalProblem(model, obs, x0, t0=s.t0, checkpoint=checkpoint)


def _grad(P, z):
    zz = z.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(P.cost(zz), zz)
    return g


def test_zero_tangent_arithmetic_keeps_values():
    fast_zero_tangents()
    x = torch.tensor([0.5, -2.0, 3.0], dtype=torch.float64)
    z = torch._efficientzerotensor((3,), dtype=torch.float64)
    assert torch.equal(z * x, torch.zeros(3, dtype=torch.float64))
    assert torch.equal(z + x, x) and torch.equal(x - z, x) and torch.equal(z - x, -x)
    assert torch.equal(torch.add(z, x, alpha=2.0), 2.0 * x)
    assert torch.equal(z / x, torch.zeros(3, dtype=torch.float64))
    assert (z * torch.ones(2, 1, dtype=torch.float64)).shape == (2, 3)  # broadcast as the ordinary kernel

    c = torch.tensor(1.7, dtype=torch.float64)  # a constant: no tangent (a zero tensor in forward mode)

    def f(u: torch.Tensor) -> torch.Tensor:
        return (u * c + 2.0) / (c - u) - 3.0 * u * u + c / (1.0 + u.exp())

    u = torch.tensor([0.3, -0.4], dtype=torch.float64)
    J_fwd = torch.func.jacfwd(f)(u)
    J_rev = torch.func.jacrev(f)(u)
    torch.testing.assert_close(J_fwd, J_rev, rtol=1e-14, atol=1e-14)
    h = 1e-6
    fd = torch.stack([(f(u + h * e) - f(u - h * e)) / (2 * h) for e in torch.eye(2, dtype=torch.float64)], 1)
    torch.testing.assert_close(J_fwd, fd, rtol=1e-8, atol=1e-9)


def test_remembered_predictions_are_those_of_a_fresh_run():
    model, x0, obs, t0, _ = _column_problem(days=2.0)
    z0 = model.free_vector().clone()
    res = calibrate(model, obs, x0, t0=t0, max_iter=3, uncertainty=None, write_back=False)
    with torch.no_grad(), model.using(z0):
        before = predict(model, x0, obs, t0=t0)
    with torch.no_grad(), model.using(res.z[: len(TRUTH)]):
        after = predict(model, x0, obs, t0=t0)
    assert torch.equal(res.predictions["initial"], before)
    assert torch.equal(res.predictions["final"], after)
    assert not torch.equal(before, after)  # the estimate moved


def test_sqrt_checkpoint_gradient_equals_kept_graph():
    _, _, _, _, P = _column_problem(days=2.0, checkpoint=None)
    _, _, _, _, Pc = _column_problem(days=2.0, checkpoint="sqrt")
    z = P.z0 + torch.tensor([0.1, -0.2], dtype=torch.float64)
    torch.testing.assert_close(_grad(Pc, z), _grad(P, z), rtol=1e-12, atol=0.0)


def test_calibrate_cost_gradient_exact_float64():
    load_jvp_decompositions()
    _, _, _, _, P = _column_problem(days=3.0)
    z = P.z0 + torch.tensor([0.15, -0.25], dtype=torch.float64)
    g = _grad(P, z)
    # central differences along two random directions (the cost is smooth here: no clipping is active)
    gen = torch.Generator().manual_seed(5)
    for _ in range(2):
        d = torch.randn(2, generator=gen, dtype=torch.float64)
        h = 1e-5
        with torch.no_grad():
            fd = (P.cost(z + h * d) - P.cost(z - h * d)) / (2 * h)
        assert float(g @ d) == pytest.approx(float(fd), rel=1e-7)
    # forward mode (the Gauss–Newton Jacobian) against reverse mode: g = Jᵀ r
    J = P.jacobian(z)
    r = P.residuals(z.detach())
    torch.testing.assert_close(J.T @ r, g, rtol=1e-11, atol=1e-12 * float(g.abs().max()))


def test_solve_tangent_by_inverse_equals_forward_mode_of_the_solve():
    from pelagos.column.compiled import _solve_with_tangent
    from pelagos.core.tridiagonal import solve_tridiagonal

    g = torch.Generator().manual_seed(7)
    B, K, n = 2, 3, 9

    def r(*s):
        return torch.rand(*s, generator=g, dtype=torch.float64)

    lo, up = -r(B, 1, n), -r(B, 1, n)
    di = 2.5 + r(B, 1, n)
    rhs = torch.randn(B, K, n, generator=g, dtype=torch.float64)
    prim = (lo, di, up, rhs)
    tan = tuple(torch.randn(t.shape, generator=g, dtype=torch.float64) for t in prim)
    x, dx = torch.func.jvp(_solve_with_tangent, prim, tan)
    _, dx_ref = torch.func.jvp(solve_tridiagonal, prim, tan)
    assert torch.equal(x, solve_tridiagonal(*prim))  # the operator's value, untouched
    torch.testing.assert_close(dx, dx_ref, rtol=1e-13, atol=1e-14)
    h = 1e-6
    fd = (solve_tridiagonal(*(p + h * t for p, t in zip(prim, tan))) - solve_tridiagonal(
        *(p - h * t for p, t in zip(prim, tan)))) / (2 * h)  # fmt: skip
    torch.testing.assert_close(dx, fd, rtol=1e-8, atol=1e-9)


@pytest.mark.skipif(not cxx_available(), reason="needs a C++ compiler for torch.compile")
@pytest.mark.parametrize("path", ["fused", "inductor"])
def test_compiled_forward_mode_jacobian_equals_plain_and_fd(path, monkeypatch):
    """The batched Gauss–Newton Jacobian with ``compile`` on — through the fused kernel's tangent-linear
    kernel (what runs by default), and through the Inductor jvp program (the fused kernel off) — equals the
    plain step's forward mode (≤ 1e-10 relative) and central differences, and ran that path."""
    from pelagos.column import fused as fused_mod

    if path == "inductor":
        monkeypatch.setattr(fused_mod, "_ENABLED", False)
    load_jvp_decompositions()
    model, _, _, _, P = _column_problem(days=1.0, compile=True)
    z = P.z0 + torch.tensor([0.15, -0.25], dtype=torch.float64)
    col = model.model
    J = P.jacobian(z)
    if path == "inductor":
        assert col.__dict__.get("_compiled_jvp_obj") is not None  # the compiled forward mode was used
    else:
        plans = [p for p in col._fused_obj._plans.values() if not isinstance(p, str)]
        assert sum(p.tangent_calls for p in plans) > 0 and col._fused_reason is None
    col.compile_mode = "off"
    P_plain = VariationalProblem(model, P.obs, P.xb, t0=P.t0)
    J_plain = P_plain.jacobian(z)
    scale = float(J_plain.abs().max())
    assert float((J - J_plain).abs().max()) <= 1e-10 * scale
    h = 1e-6
    with torch.no_grad():
        fd = torch.stack(
            [(P_plain.residuals(z + h * e) - P_plain.residuals(z - h * e)) / (2 * h) for e in torch.eye(2)], 1
        )
    torch.testing.assert_close(J, fd.to(J), rtol=1e-6, atol=1e-8 * scale)


def test_jacobian_check_from_the_remembered_run_catches_a_wrong_batch():
    """The Jacobian's guard uses the optimiser's remembered run at z (one extra run, one-sided difference):
    a right model passes it, a model that mixes the members of the control batch is caught (then
    ``torch.func.jacfwd`` gives the right Jacobian)."""
    from pelagos.models import Lorenz63

    class MixedBatch(Lorenz63):
        def step(self, x, t):
            out = super().step(x, t)
            return out[:1].expand_as(out) if out.ndim >= 2 and out.shape[0] > 1 else out

    load_jvp_decompositions()
    for cls, batched in ((Lorenz63, True), (MixedBatch, False)):
        P, z = _lorenz_twin(cls)
        J = P.jacobian(z)
        assert P._batched_jac is batched
        # which path ran, and why not the batched one, is recorded (the ECOSMO study logs it per Jacobian)
        assert P.jacobian_info["path"] == ("batched" if batched else "jacfwd")
        assert P.jacobian_info["guard"]["passed"] is batched
        assert batched or P.jacobian_info["reason"].startswith("guard failed")
        torch.testing.assert_close(J, torch.func.jacfwd(P.residuals)(z), rtol=1e-10, atol=1e-10)


def test_jacobian_check_survives_a_cost_too_rough_for_differences():
    """A cost that wiggles below the difference step (here a term 1e-9·sin(1e6 σ) in each step; a year of
    ECOSMO has kinks and steep switches) makes the guard's finite difference disagree with an exact J d: the
    guard then compares with one unbatched forward-mode run along the same direction and keeps the batched
    Jacobian (before, it fell back to ``torch.func.jacfwd``: n times the work)."""
    from pelagos.models import Lorenz63

    class Wiggly(Lorenz63):
        def step(self, x, t):
            out = super().step(x, t)
            return out + 1e-9 * torch.sin(1e6 * self.param_b("sigma", out.ndim))

    load_jvp_decompositions()
    P, z = _lorenz_twin(Wiggly)
    J = P.jacobian(z)
    guard = P.jacobian_info["guard"]
    assert guard["max_abs_error_rel"] > 1e-3  # the difference is fooled by the wiggle
    assert guard["passed"] and guard["exact_max_abs_error_rel"] < 1e-12
    assert P.jacobian_info["path"] == "batched" and P._batched_jac
    torch.testing.assert_close(J, torch.func.jacfwd(P.residuals)(z), rtol=1e-10, atol=1e-10)


@pytest.mark.slow
@pytest.mark.skipif(not cxx_available(), reason="needs a C++ compiler for torch.compile")
def test_compiled_forward_mode_dict_state_matches_plain():
    """Dual tensors in a dict state (3 columns) and in batched parameter overrides: the compiled jvp program
    gives the plain step's primal and tangent over several steps."""
    import torch.autograd.forward_ad as fwAD

    from pelagos.column.kind import example

    load_jvp_decompositions()
    g = torch.Generator().manual_seed(2)
    plain, fast = example(), example()
    fast.compile_mode = "on"
    s0 = plain.initial_state(3, t0=21600.0)
    for k in ("npzd_phy", "npzd_zoo", "npzd_det"):
        s0[k] = s0[k] + torch.rand(s0[k].shape, generator=g, dtype=torch.float64)
    tan = {k: torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in s0.items()}
    u = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)
    du = torch.randn(3, generator=g, dtype=torch.float64)
    names = ["nuh_scale", "npzd.kc"]  # a physics scaling and a biology rate
    outs = []
    for m in (plain, fast):
        with fwAD.dual_level():
            s = {k: fwAD.make_dual(v, tan[k]) for k, v in s0.items()}
            with m.using({n: fwAD.make_dual(u * (i + 1), du) for i, n in enumerate(names)}):
                for k in range(4):
                    s = m.step(s, 21600.0 + k * m.dt)
            outs.append({k: fwAD.unpack_dual(v) for k, v in s.items()})
    assert fast.__dict__.get("_compiled_jvp_obj") is not None
    for k, (p_ref, t_ref) in outs[0].items():
        p, t = outs[1][k]
        torch.testing.assert_close(p, p_ref, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(t, t_ref, rtol=1e-10, atol=1e-12 * float(t_ref.abs().max()))


@pytest.mark.skipif(not cxx_available(), reason="needs a C++ compiler for torch.compile")
def test_compiled_forward_mode_that_cannot_be_built_warns_once_and_runs_plain(monkeypatch):
    import torch.autograd.forward_ad as fwAD

    from pelagos.column import compiled as cc
    from pelagos.column.kind import example

    def broken(self, state, raw, plans):
        raise RuntimeError("dynamo could not trace this model's jvp")

    monkeypatch.setattr(cc.CompiledJvpStep, "_run", broken)
    plain, fast = example(), example()
    fast.compile_mode = "on"
    s0 = plain.initial_state(2, t0=21600.0)
    tan = {k: torch.ones_like(v) for k, v in s0.items()}
    outs = []
    for m in (plain, fast):
        with fwAD.dual_level():
            s = {k: fwAD.make_dual(v, tan[k]) for k, v in s0.items()}
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                for k in range(3):
                    s = m.step(s, 21600.0 + k * m.dt)
            outs.append({k: [x.clone() for x in fwAD.unpack_dual(v)] for k, v in s.items()})
        if m is fast:
            assert sum("forward mode on the compiled step failed" in str(w.message) for w in caught) == 1
    for k, (p, t) in outs[0].items():
        assert torch.equal(outs[1][k][0], p) and torch.equal(outs[1][k][1], t)


def test_compiled_jvp_inputs_have_no_efficient_zero_tangents(monkeypatch):
    """torch's efficient zero tensors (missing tangents) carry another dispatch key: handed to the compiled
    jvp program they fail dynamo's guards and recompile it every call, so the split gives plain zeros."""
    from pelagos.column import compiled as cc

    p = torch.ones(3, dtype=torch.float64)
    zero = torch._efficientzerotensor(3, dtype=torch.float64)
    assert zero._is_zerotensor()
    monkeypatch.setattr(torch, "_unpack_dual", lambda x, level: (p, zero))
    sp, st = cc._split_dual({"a": p, "b": [p]})
    assert torch.equal(sp["a"], p) and torch.equal(sp["b"][0], p)
    for t in (st["a"], st["b"][0]):
        assert not t._is_zerotensor() and torch.equal(t, torch.zeros(3, dtype=torch.float64))


def test_compiled_jvp_joins_broadcast_outputs_with_their_tangents():
    """The compiled jvp program can return a broadcast view (stride 0; ECOSMO's running mean of the surface
    light, the same for every column of a batched Jacobian): joining it with its tangent must give the dual
    tensor of those values (torch's make_dual cannot write a tangent into a stride-0 primal)."""
    import torch.autograd.forward_ad as fwAD

    from pelagos.column import compiled as cc

    p = torch.arange(3, dtype=torch.float64)[None].expand(4, 3)
    assert p.stride()[0] == 0
    t = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with fwAD.dual_level():
        out = cc._join_dual({"means": {"last": p}}, {"means": {"last": t}})
        primal, tangent = fwAD.unpack_dual(out["means"]["last"])
        assert torch.equal(primal, p) and torch.equal(tangent, t)


def _lorenz_twin(cls: type) -> tuple:
    """A 3-parameter Lorenz-63 twin of ``cls`` (5 noise-free observations) and a control ``z`` at which
    the optimiser's last run is remembered (what the Jacobian's guard differences against)."""
    from pelagos.core.obsio import synthetic_observations

    truth = cls()
    x0 = truth.initial_state().to(torch.float64)
    times = torch.arange(1, 6, dtype=torch.float64) * 5 * truth.dt
    obs = synthetic_observations(truth, x0, times, sigma=0.5, noise="none")
    model = cls(sigma=8.0, rho=25.0, beta=2.0).to(torch.float64)
    model.select_free(["sigma", "rho", "beta"])
    P = VariationalProblem(model, obs, x0)
    z = P.z0 + 0.05
    with torch.no_grad():
        P.predict(z)
    return P, z

"""Gradient checkers: they pass on correct gradients and — the point — FAIL on subtly wrong ones; the
rollout report on the toy diffusion model; the `pelagos gradcheck` command; the toy model's physics."""

from __future__ import annotations

import math

import pytest
import torch

from pelagos.cli import main as cli_main
from pelagos.core import ConfigError, Model, rollout
from pelagos.core.gradcheck import check_directional, check_jvp_vjp, rollout_gradient_report
from pelagos.core.toy import ImplicitDiffusion1D, diffusion1d_case

D = torch.float64


class _ScaledGrad(torch.autograd.Function):
    """y = sin(x) with a derivative that is wrong by a factor ``1 + err`` (backward and/or jvp)."""

    @staticmethod
    def forward(x, err_bwd, err_fwd):
        return torch.sin(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, ctx.err_bwd, ctx.err_fwd = inputs
        ctx.save_for_backward(x)
        ctx.save_for_forward(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.cos(x) * (1 + ctx.err_bwd), None, None

    @staticmethod
    def jvp(ctx, t, _a, _b):
        (x,) = ctx.saved_tensors
        return t * torch.cos(x) * (1 + ctx.err_fwd)


def test_directional_passes_on_correct_and_fails_on_wrong_gradient():
    x = torch.randn(6, dtype=D, generator=torch.Generator().manual_seed(0))
    ok = check_directional(lambda z: _ScaledGrad.apply(z, 0.0, 0.0) * z, x)
    assert ok.passed and ok.max_rel_error < 1e-8 and len(ok.rows) == 3
    bad = check_directional(lambda z: _ScaledGrad.apply(z, 1e-4, 0.0) * z, x)
    assert not bad.passed and bad.max_rel_error > 1e-5
    assert "FAILED" in str(bad) and "NO" in str(bad)


def test_directional_multiple_inputs_pytree_output_and_float32_input_cast():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(4, generator=g), torch.randn(3, generator=g)  # float32 in: the check runs in float64
    rep = check_directional(
        lambda a, b: {"p": a.exp() * b.sum(), "q": (a[:3] * b) ** 2}, (x, y), n_directions=4
    )
    assert rep.passed and len(rep.rows) == 4 and rep.max_rel_error < 1e-8


def test_richardson_is_more_accurate():
    x = torch.tensor([0.3, -0.2], dtype=D)
    fn = lambda z: torch.exp(3 * z).sum()  # noqa: E731  (large third derivative)
    plain = check_directional(fn, x, h=1e-3, seed=1)
    rich = check_directional(fn, x, h=1e-3, seed=1, richardson=True)
    assert rich.max_rel_error < 0.01 * plain.max_rel_error


def test_jvp_vjp_check_catches_a_wrong_forward_rule():
    x = torch.randn(5, dtype=D, generator=torch.Generator().manual_seed(1))
    assert check_jvp_vjp(lambda z: _ScaledGrad.apply(z, 0.0, 0.0), x).passed
    rep = check_jvp_vjp(lambda z: _ScaledGrad.apply(z, 0.0, 1e-6), x)
    assert not rep.passed and rep.max_rel_error > 1e-8


def test_rollout_report_on_toy_model_passes_and_leaves_model_untouched():
    model, c0 = diffusion1d_case()
    model = model.float()
    before = [p.detach().clone() for p in model.parameters()]
    rep = rollout_gradient_report(model, c0.float(), [1, 3, 9], wrt="both", n_directions=2)
    assert rep.passed and [r["steps"] for r in rep.rows] == [1, 1, 3, 3, 9, 9]
    assert rep.max_rel_error < 1e-7
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert "T=9" in str(rep)


class _WrongAdjointDecay(Model):
    """x ← x·exp(−k dt) + 0.1 sin(x), but the derivative of the sin term is 0.1 % too large."""

    dt = 0.1

    def __init__(self):
        super().__init__()
        self.declare_parameter("k", 0.5, bounds=(0.0, None))

    def step(self, x, t):
        return x * torch.exp(-self.param("k") * self.dt) + 0.1 * _ScaledGrad.apply(x, 1e-3, 0.0)


def test_rollout_report_detects_wrong_step_gradient():
    m = _WrongAdjointDecay()
    m.select_free("all")
    rep = rollout_gradient_report(m, torch.linspace(0.5, 1.5, 5), [1, 8], wrt="state", tol=1e-7)
    assert not rep.passed


def test_rollout_report_errors():
    model, c0 = diffusion1d_case()
    with pytest.raises(ConfigError, match="wrt"):
        rollout_gradient_report(model, c0, [1], wrt="theta")
    model.select_free(None)
    with pytest.raises(ConfigError, match="select_free"):
        rollout_gradient_report(model, c0, [1])
    assert rollout_gradient_report(model, c0, [2], wrt="state").passed
    with pytest.raises(ConfigError, match="steps"):
        rollout_gradient_report(model, c0, [0], wrt="state")


def test_cli_gradcheck(capsys):
    rc = cli_main(["gradcheck", "--model", "diffusion1d", "--steps", "1", "2", "--directions", "1"])
    out = capsys.readouterr().out
    assert rc == 0 and "T=2" in out and "PASSED" in out and "jvp" in out
    assert cli_main(["gradcheck", "--model", "nope"]) == 1


# -- the toy model itself ----------------------------------------------------------------------
def test_toy_diffusion_decays_neumann_modes_exactly_and_conserves_mass():
    m = ImplicitDiffusion1D(nlev=24, depth=120.0, dt=1800.0, n_nodes=3).double()
    nu = 2e-3
    for n in m.node_names():
        m.set_parameter_value(n, nu)
    i = torch.arange(24, dtype=D)
    N, h = 24, 5.0
    for k in (1, 4, 11):
        mode = torch.cos(k * math.pi * (i + 0.5) / N)  # eigenvector of the discrete no-flux Laplacian
        lam = 4 / h**2 * math.sin(k * math.pi / (2 * N)) ** 2
        tr = rollout(m, mode, 10)
        torch.testing.assert_close(tr.final, mode / (1 + 1800.0 * nu * lam) ** 10, rtol=1e-11, atol=1e-13)
    c0 = m.initial_state()
    m.set_parameter_value("nu_1", 1e-5)  # non-uniform profile
    tr = rollout(m, c0, 50, save_every=10)
    torch.testing.assert_close(
        tr.states.sum(-1), torch.full((6,), float(c0.sum()), dtype=D), rtol=1e-13, atol=0
    )
    assert float(tr.final.std()) < float(c0.std())


def test_toy_parameters_batch_and_interpolation():
    m = ImplicitDiffusion1D(nlev=10, depth=90.0, n_nodes=4).double()
    assert m.parameter_names() == ["nu_0", "nu_1", "nu_2", "nu_3"]
    m.set_parameter_value("nu_0", 1e-2)
    m.set_parameter_value("nu_3", 1e-4)
    nu = m.nu_interfaces()
    assert nu.shape == (9,) and float(nu[0]) < 1e-2 and (torch.diff(torch.log(nu[-3:])) < 0).all()
    m.select_free("all")
    u = m.free_vector()
    ub = torch.stack([u, u + 0.5])
    c0 = m.initial_state()
    with m.using(ub):
        cb = rollout(m, c0.expand(2, -1), 5).final
    assert cb.shape == (2, 10)
    torch.testing.assert_close(cb[0], rollout(m, c0, 5).final)
    assert not torch.allclose(cb[1], cb[0])
    with pytest.raises(ConfigError, match="nlev"):
        ImplicitDiffusion1D(nlev=1)


@pytest.mark.parametrize("model", ["npzd-column", "lorenz96", "qg"])
def test_cli_gradcheck_real_models(model, capsys):
    # The real models registered for `pelagos gradcheck`: reverse mode vs central differences and jvp vs vjp
    # over 1, 2 and 4 steps (the water column with NPZD, Lorenz-96, two-layer QG with complex spectral state).
    rc = cli_main(["gradcheck", "--model", model, "--steps", "1", "2", "4", "--directions", "1"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert out.count("PASSED") == 2

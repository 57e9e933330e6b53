"""Hybrid QG pipeline: online training goes through the solver, loss terms and their gradients, helpers."""

import copy
import math

import pytest
import torch

from pelagos.core import ConfigError
from pelagos.qg import QGModel
from pelagos.qg.coarsen import lowres_like
from pelagos.qg.hybrid import (
    HybridConfig,
    KESpectrum,
    _windows,
    make_closure,
    make_data,
    make_models,
    online_loss,
    spectral_loss,
    summary_table,
    train_offline,
    train_online,
    upsample,
)

TINY = dict(
    nx_hr=32,
    nx_lr=16,
    spinup_nx=16,
    spinup_years=0.03,
    spinup_hr_years=0.01,
    data_years=0.01,
    n_train=2,
    n_test=1,
    hidden=8,
    layers=2,
    kernel=3,
    offline_iters=5,
    online_iters=1,
    online_batch=2,
    curriculum=[6],
)


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    cfg = HybridConfig(**TINY)
    return cfg, make_data(cfg, log=lambda *_: None)


def _active_closure(cfg, data):
    """A float64 closure with a non-zero (small, seeded) last layer, so every weight gets a gradient."""
    closure = make_closure(cfg, data).double()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in closure.net.convs[-1].parameters():
            p.normal_(0.0, 0.05)
    return closure


def test_data_shapes_and_truth_is_coarse_grained(tiny):
    cfg, data = tiny
    T = round(cfg.data_years * 360 * 86400 / cfg.dt)
    assert data["truth"].shape == (T, 3, 2, 16, 16)
    assert data["pairs_q"].shape == data["pairs_S"].shape
    assert data["pairs_q"].shape[0] == math.ceil(T / cfg.pair_every) * cfg.n_train
    assert bool(torch.isfinite(data["truth"]).all()) and float(data["truth"].std()) > 0


def test_online_gradient_goes_through_the_solver_and_matches_finite_differences(tiny):
    cfg, data = tiny
    _, lo, _ = make_models(cfg)
    closure = _active_closure(cfg, data)
    lo.parameterization = closure
    q0, target = _windows(data["truth"], 8, 2, torch.Generator().manual_seed(3), cfg.n_train)
    params = list(closure.net.parameters())

    def f():
        return online_loss(lo, closure, q0, target, cfg)[0]

    loss = f()
    grads = torch.autograd.grad(loss, params)
    for g in grads:  # every weight, first layer included, is reached through the unrolled steps
        assert float(g.abs().max()) > 0
    gen = torch.Generator().manual_seed(1)
    d = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
    h = 1e-4
    with torch.no_grad():
        for p, di in zip(params, d):
            p.add_(h * di)
        up = f()
        for p, di in zip(params, d):
            p.sub_(2 * h * di)
        down = f()
        for p, di in zip(params, d):
            p.add_(h * di)
    fd = float(up - down) / (2 * h)
    ad = float(sum((g * di).sum() for g, di in zip(grads, d)))
    assert abs(fd - ad) <= 1e-5 * abs(ad), (fd, ad)
    # without the closure in the model the loss does not depend on the weights
    lo.parameterization = None
    loss0 = online_loss(lo, closure, q0, target, cfg)[0]
    assert not loss0.requires_grad or all(
        g is None for g in torch.autograd.grad(loss0, params, allow_unused=True)
    )


def test_one_online_iteration_lowers_the_loss_on_its_batch(tiny):
    cfg, data = tiny
    cfg = HybridConfig(**{**TINY, "online_lr": 1e-5, "curriculum": [8], "online_init": "offline"})
    closure = _active_closure(cfg, data)
    start = copy.deepcopy(closure)
    # the window train_online draws first (same generator seed)
    q0, target = _windows(data["truth"], 8, 2, torch.Generator().manual_seed(cfg.seed + 1), cfg.n_train)
    _, lo, _ = make_models(cfg)
    lo.parameterization = start
    before = online_loss(lo, start, q0, target, cfg)[0].item()
    trained, curve = train_online(cfg, data, closure, log=lambda *_: None)
    lo.parameterization = trained
    after = online_loss(lo, trained, q0, target, cfg)[0].item()
    assert curve[0]["n"] == 8 and curve[0]["loss"] == pytest.approx(before, rel=1e-12)
    assert after < before
    assert any(
        not torch.equal(a, b) for a, b in zip(trained.state_dict().values(), start.state_dict().values())
    )


def test_online_init_zero_starts_from_no_closure(tiny):
    _, data = tiny
    cfg0 = HybridConfig(**{**TINY, "online_init": "zero", "online_lr": 0.0})
    closure = _active_closure(cfg0, data)
    trained, _ = train_online(cfg0, data, closure, log=lambda *_: None)
    assert all(float(p.detach().abs().max()) == 0 for p in trained.net.convs[-1].parameters())
    with pytest.raises(ConfigError, match="online_init"):
        train_online(HybridConfig(**{**TINY, "online_init": "x"}), data, closure, log=lambda *_: None)


def test_spectral_loss_gradient_float64_finite_differences():
    m = QGModel(nx=16, dt=3600.0, L=5e5)
    spec = KESpectrum(m)
    gen = torch.Generator().manual_seed(0)
    q_true = 1e-6 * torch.randn(3, 2, 2, 16, 16, generator=gen, dtype=torch.float64)
    q = (1e-6 * torch.randn(3, 2, 2, 16, 16, generator=gen, dtype=torch.float64)).requires_grad_()
    qh_true = m.fft(q_true)

    def f(x):
        return spectral_loss(spec, m.fft(x), qh_true)

    assert float(f(q_true)) == 0.0
    torch.autograd.gradcheck(f, (q,), eps=1e-11, atol=1e-6, rtol=1e-5)


def test_ke_spectrum_bins_a_single_mode_and_excludes_the_filter_band():
    m = QGModel(nx=32, dt=3600.0, L=5e5)
    spec = KESpectrum(m)
    filt = m.coefficients()["filtr"]
    assert float(filt[spec.mask > 0].min()) >= 0.999 and float(filt[spec.mask == 0].max()) < 0.999
    assert 0 < spec.nbins < 16
    x = m.grid.x
    for j in (1, 3, spec.nbins):
        q = torch.zeros(1, 2, 32, 32, dtype=torch.float64)
        q[0, 0] = 1e-6 * torch.cos(2 * math.pi * j * x / m.L)
        e = spec(m.fft(q))[0]
        assert e.shape == (2, spec.nbins)
        nz_bins = (e.abs().sum(0) > 1e-12 * float(e.abs().max())).nonzero().flatten().tolist()
        assert nz_bins == [j - 1]  # bin i holds |κ| ≈ (i + 1)·2π/L
        assert float(e.min()) >= 0


def test_upsample_is_an_interpolation():
    lo = QGModel(nx=16, dt=3600.0, L=5e5)
    hi = lowres_like(lo, 64)
    gen = torch.Generator().manual_seed(0)
    qh = lo.fft(torch.randn(2, 2, 16, 16, generator=gen, dtype=torch.float64))
    qh[..., 8, :] = 0  # no Nyquist content
    qh[..., -1] = 0
    q = lo.ifft(qh)
    up = upsample(lo, hi, q)
    assert up.shape == (2, 2, 64, 64)
    assert torch.allclose(up[..., ::4, ::4], q, atol=1e-13, rtol=0)


def test_offline_training_fits_and_summary_table(tiny):
    _, data = tiny
    _, curve = train_offline(HybridConfig(**{**TINY, "offline_iters": 200}), data, log=lambda *_: None)
    assert curve[-1]["val"] < 0.9 * curve[0]["val"]
    res = {
        "no closure": {
            "rmse_days": {1: 0.1},
            "stable_years": 1.0,
            "ke_log10_err": 0.25,
            "similarity": {"KEspec": 0.0},
        },
        "_kr": [1.0],
    }
    table = summary_table(res)
    assert "| no closure | 0.1 | 1 | 0.25 | 0 | – |" in table

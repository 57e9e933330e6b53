"""Model-error learning from 4D-Var increments (pelagos.qg.model_error) on tiny QG grids."""

from __future__ import annotations

import pytest
import torch

from pelagos.core.observations import ObservationSet
from pelagos.core.rollout import rollout
from pelagos.inverse.fourdvar import cycled_fourdvar
from pelagos.qg import QGModel
from pelagos.qg.interval import QGInterval
from pelagos.qg.model_error import SpectralCovariance, fit_stencil, increments, streamfunction
from pelagos.qg.observe import random_points

pytestmark = pytest.mark.usefixtures("float64_default")

BETA = 1.5e-11


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _pair(nx: int = 16):
    kw = dict(nx=nx, L=2.5e5 * nx / 16, dt=3600.0)
    truth_qg, biased_qg = QGModel(**kw, beta=BETA), QGModel(**kw, beta=0.0)
    return truth_qg, biased_qg, QGInterval(truth_qg, 6), QGInterval(biased_qg, 6)


def _spun_up(truth_qg, n_steps: int = 6000, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    q = 3e-6 * torch.randn(1, 2, truth_qg.ny, truth_qg.nx, dtype=torch.float64, generator=gen)
    with torch.no_grad():
        st = rollout(truth_qg, truth_qg.state_from_q(q), n_steps, save_every=10**9, include_initial=False)
    return st.final["q"]


def test_spectral_covariance_std_and_smoothness():
    _, m, _, _ = _pair(16)
    B = SpectralCovariance(m, torch.tensor([2.0, 0.5]), ell=2 * m.L / m.nx)
    gen = torch.Generator().manual_seed(0)
    x = B.sqrt_apply(torch.randn(4000, 2, 16, 16, dtype=torch.float64, generator=gen))
    std = x.std(dim=(0, 2, 3))
    assert torch.allclose(std, torch.tensor([2.0, 0.5], dtype=torch.float64), rtol=0.03)
    # neighbours 1 dx apart with ℓ = 2 dx: correlation ≈ exp(−1/8) ≈ 0.88 (white noise would give 0)
    c = float((x * x.roll(1, dims=-1)).mean(dim=(0, 2, 3))[0] / std[0] ** 2)
    assert 0.8 < c < 0.95


def test_stencil_from_exact_increments_recovers_beta_term():
    """Fitted to the exact one-interval model error, the stencil reproduces −Δt β ∂ψ/∂x on new states."""
    truth_qg, biased_qg, truth, biased = _pair(16)
    q = _spun_up(truth_qg)
    with torch.no_grad():
        xs = rollout(truth, q, 60, include_initial=True).states[:, 0]  # (61, 2, 16, 16)
        d = truth.step(xs) - biased.step(xs)
    corr = fit_stencil(biased_qg, xs[:40], d[:40], radius=2)
    with torch.no_grad():
        psi = streamfunction(biased_qg, xs[40:])
        kx = torch.fft.fftfreq(16, d=biased_qg.L / 16) * 2 * torch.pi
        exact = -BETA * biased.dt * torch.fft.ifft(1j * kx * torch.fft.fft(psi, dim=-1), dim=-1).real
        err = float((corr(xs[40:]) - exact).norm() / exact.norm())
    assert err < 0.1
    # the stencil's long-wave action within each layer is −Δt β ∂/∂x (the cross-layer part is poorly
    # determined: ψ₁ and ψ₂ are strongly correlated, so it is not checked)
    K = corr.physical_kernel()
    n = torch.arange(-2, 3, dtype=torch.float64) * biased_qg.L / 16
    C = (K * n).sum(dim=(-2, -1))
    assert torch.allclose(torch.diagonal(C), torch.full((2,), -BETA * biased.dt), rtol=0.15)


def test_increment_trained_stencil_moves_biased_model_toward_truth():
    """Cycled 4D-Var with the β = 0 model on noisy ψ; the stencil fitted to its increments makes the biased
    model's 6-h step much closer to the true model's on held-out states (and the uncorrected one is not)."""
    truth_qg, biased_qg, truth, biased = _pair(16)
    q = _spun_up(truth_qg, seed=1)
    n_cyc = 50
    with torch.no_grad():
        xt = rollout(truth, q, n_cyc + 30, include_initial=True).states  # (T, 1, 2, 16, 16)
        pt = streamfunction(truth_qg, xt[:, 0])
    gen = torch.Generator().manual_seed(2)
    at = random_points(truth_qg, 256, seed=3)  # half of the 512 grid values
    H = truth_qg.observation_operator("psi", at)
    sig = (0.01 * pt.std(dim=(0, 2, 3)))[H.layer]
    with torch.no_grad():
        y = torch.stack([H(x) for x in xt[1 : n_cyc + 1]])
    y = y + sig * torch.randn(y.shape, dtype=y.dtype, generator=gen)
    obs = ObservationSet(
        times=torch.arange(1, n_cyc + 1, dtype=torch.float64) * biased.dt,
        values=y,
        sigma=sig,
        operator=biased_qg.observation_operator("psi", at),
    )
    B = SpectralCovariance(biased_qg, 0.03 * xt[:, 0].std(dim=(0, 2, 3)), ell=0.0)  # uncorrelated
    xb = xt[0] + B.sqrt_apply(torch.randn(xt[0].shape, dtype=torch.float64, generator=gen))
    res = cycled_fourdvar(biased, obs, xb, B, lag=1, max_iter=25)
    xa, _, inc = increments(biased, res.window_starts)
    corr = fit_stencil(biased_qg, xa[10:, 0], inc[10:, 0], radius=2)
    corrected = QGInterval(biased_qg, 6, correction=corr)
    with torch.no_grad():
        x = xt[n_cyc + 5 :, 0]  # held out: after the assimilated period
        ref = truth.step(x)
        e_b = float((biased.step(x) - ref).norm())
        e_c = float((corrected.step(x) - ref).norm())
    assert e_c < 0.5 * e_b


def test_interval_with_correction_gradient_matches_finite_differences():
    _, biased_qg, _, _ = _pair(8)
    gen = torch.Generator().manual_seed(0)
    xs = 1e-6 * torch.randn(6, 2, 8, 8, dtype=torch.float64, generator=gen)
    corr = fit_stencil(biased_qg, xs, 1e-3 * xs.roll(1, dims=-1), radius=1)
    model = QGInterval(biased_qg, 3, correction=corr)
    q = (1e-6 * torch.randn(1, 2, 8, 8, dtype=torch.float64, generator=gen)).requires_grad_(True)
    w = torch.randn(1, 2, 8, 8, dtype=torch.float64, generator=gen)

    def f(x: torch.Tensor) -> torch.Tensor:
        return (model.step(x) * w).sum() * 1e6

    (g,) = torch.autograd.grad(f(q), q)
    v = torch.randn(q.shape, dtype=torch.float64, generator=gen)
    h = 1e-9
    with torch.no_grad():
        fd = (f(q + h * v) - f(q - h * v)) / (2 * h)
    assert float((g * v).sum()) == pytest.approx(float(fd), rel=1e-6)

"""QG diagnostics: pyqg's values, exact budget identities, isotropic spectra, xarray output."""

import json
import pathlib

import numpy as np
import pytest
import torch

from pelagos.qg import LayeredModel, QGModel
from pelagos.qg.diagnostics import calc_ispec, diagnostics, energy, enstrophy, spec_var
from pelagos.qg.parameterizations import BackscatterBiharmonic, Smagorinsky

FIX = pathlib.Path(__file__).parent / "fixtures" / "qg"


def spun():
    d = np.load(FIX / "two_layer_spun.npz")
    return json.loads(str(d["settings"])), d


def test_all_diagnostics_match_pyqg_inside_step_10():
    s, d = spun()
    m = QGModel(**s)
    st = m.state_from_q(torch.tensor(d["q_spun"])[None])
    for _ in range(9):  # pyqg evaluated them during its 10th step (tc = 9, AB3 level)
        st = m.step(st)
    D = diagnostics(m, st)
    names = [k[5:] for k in d.files if k.startswith("diag_")]
    assert len(names) >= 17
    for n in names:
        ref = d["diag_" + n]
        scale = np.abs(ref).max()
        err = np.abs(D[n][0].numpy() - ref).max()
        assert err <= 1e-12 * scale or (scale == 0 and err == 0), n


def interior(x):
    """Drop the Nyquist row and column: there pyqg's spectral state qh and FFT(irfft(qh)) differ."""
    n = x.shape[-2] // 2
    return torch.cat([x[..., :n, :-1], x[..., n + 1 :, :-1]], dim=-2)


def close(a, b, tol=1e-9):
    a, b = interior(a), interior(b)
    return torch.allclose(a, b, rtol=0, atol=tol * float(b.abs().max()))


def _energy_rate_terms(m, st):
    D = diagnostics(m, st)
    f = m.tendency(st)
    c = m.coefficients()
    wH = (c["Hi"] / c["Hi"].sum())[:, None, None]
    M2 = float(m.grid.M) ** 2
    dEdt = -((wH * f.ph.conj() * f.dqhdt).real).sum(1) / M2  # energy tendency per wavenumber
    dZdt = ((wH * f.qh.conj() * f.dqhdt).real).sum(1) / M2  # enstrophy tendency per wavenumber
    return D, dEdt, dZdt


@pytest.mark.parametrize("closure", [None, BackscatterBiharmonic() + 0.5 * Smagorinsky()])
def test_energy_and_enstrophy_budgets_close_per_wavenumber(closure):
    s, d = spun()
    m = QGModel(**s, parameterization=closure)
    st = m.state_from_q(torch.tensor(d["q_spun"])[None])
    D, dEdt, dZdt = _energy_rate_terms(m, st)
    E_terms = D["KEflux_div"] + D["APEflux_div"] + D["APEgenspec"] + D["KEfrictionspec"] + D["paramspec"]
    Z_terms = D["ENSflux"] + D["ENSgenspec"] + D["ENSfrictionspec"] + D["ENSparamspec"]
    assert close(E_terms, dEdt) and close(Z_terms, dZdt)
    if closure is not None:
        assert float(D["paramspec"].abs().max()) > 1e-3 * float(dEdt.abs().max())
    # the two-layer KE flux equals the layer form; nonlinear transfers nearly conserve energy (not exactly:
    # the advection is not dealiased)
    assert torch.allclose(D["KEflux"], D["KEflux_div"], rtol=0, atol=1e-12 * float(D["KEflux"].abs().max()))
    for k in ("APEflux", "APEflux_div", "KEflux", "ENSflux"):
        assert abs(float(D[k].sum())) < 0.05 * float(D[k].abs().sum()), k


def half_plane_sum(x):
    """Sum of a spectral density over the full plane from its rFFT half plane (interior k counted twice)."""
    w = torch.full((x.shape[-1],), 2.0, dtype=x.dtype)
    w[0] = w[-1] = 1.0
    return (x * w).sum(dim=(-2, -1))


def test_energy_change_over_small_step_matches_budget_totals():
    s, d = spun()
    m = QGModel(**{**s, "dt": 0.6}, filterfac=0.0)  # filter off (filtr = 1): dE = dt Σ terms + O(dt²)
    st = m.state_from_q(torch.tensor(d["q_spun"])[None])
    D = diagnostics(m, st)
    assert float(D["Dissspec"].abs().max()) == 0.0
    rate = sum(half_plane_sum(D[k]) for k in ("KEflux_div", "APEflux_div", "APEgenspec", "KEfrictionspec"))
    dE = (energy(m, m.step(st)) - energy(m, st)) / m.dt
    assert abs(float(dE[0] - rate[0])) < 2e-4 * abs(float(rate[0]))
    Zrate = sum(half_plane_sum(D[k]) for k in ("ENSflux", "ENSgenspec", "ENSfrictionspec"))
    dZ = (enstrophy(m, m.step(st)) - enstrophy(m, st)) / m.dt
    assert abs(float(dZ[0] - Zrate[0])) < 2e-4 * abs(float(Zrate[0]))


def test_energy_from_spectra_and_isotropic_parseval():
    s, d = spun()
    m = QGModel(**s)
    st = m.state_from_q(torch.tensor(d["q_spun"])[None])
    f = m.flow(st)
    # KE from the grid equals the KE spectrum summed with pyqg's spec_var conventions
    ke_grid = 0.5 * (f.u**2 + f.v**2).mean(dim=(-2, -1))
    ke_spec = 0.5 * spec_var(m, torch.sqrt(m.coefficients()["wv2"]) * f.ph)
    assert torch.allclose(ke_grid, ke_spec, rtol=1e-12)
    # isotropic spectrum without averaging sums to the variance inside the truncation circle
    var = f.q[0, 0].var(unbiased=False)
    kr, phr = calc_ispec(m, 2 * f.qh[0, 0].abs() ** 2 / m.grid.M**2, averaging=False, truncate=False)
    assert torch.allclose((phr * (kr[1] - kr[0])).sum(), var, rtol=1e-10)


def test_layered_diagnostics_budget_three_layers():
    m = LayeredModel(nx=32, nz=3, dt=3600.0)
    st = m.state_from_q(
        1e-6 * torch.randn(1, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    )
    D, dEdt, _ = _energy_rate_terms(m, st)
    E_terms = D["KEflux_div"] + D["APEflux_div"] + D["APEgenspec"] + D["KEfrictionspec"]
    assert close(E_terms, dEdt)
    assert "KEflux" not in D


def test_to_dataset_like_pyqg(tmp_path):
    from pelagos.qg.dataset import to_dataset

    m = QGModel(nx=16, dt=3600.0)
    st = m.initial_state(batch=2, seed=0)
    ds = to_dataset(m, st, time=3600.0, diagnostics=True)
    assert m.to_dataset(st).identical(to_dataset(m, st))
    assert set(m.diagnostics(st, ["EKE"])) == {"EKE"}
    assert ds["q"].dims == ("run", "lev", "y", "x") and ds["q"].shape == (2, 2, 16, 16)
    for v in ("u", "v", "p", "ufull", "KEspec", "EKE"):
        assert v in ds
    assert ds["q"].attrs["units"] == "s^-1"
    assert ds.attrs["rek"] == pytest.approx(5.787e-7)
    assert np.allclose(ds["q"].values, st["q"].numpy())
    ds.to_netcdf(tmp_path / "qg.nc")

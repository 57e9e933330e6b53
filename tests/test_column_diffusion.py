"""Tests of pelagos.column.diffusion against a literal per-element port of GOTM's diff_center (1-based)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pelagos.column import ColumnGrid, diffuse_center
from pelagos.core.errors import ConfigError, ShapeError

DT = torch.float64


# ----------------------------------------------------------------------------------------------------
# independent reference: GOTM's diff_center + tridiagonal, element by element, arrays indexed 0..N (0 unused)
def gotm_tridiagonal(N, au, bu, cu, du):
    ru = np.zeros(N + 1)
    qu = np.zeros(N + 1)
    Y = np.zeros(N + 1)
    ru[N] = au[N] / bu[N]
    qu[N] = du[N] / bu[N]
    for i in range(N - 1, 1, -1):
        ru[i] = au[i] / (bu[i] - cu[i] * ru[i + 1])
        qu[i] = (du[i] - cu[i] * qu[i + 1]) / (bu[i] - cu[i] * ru[i + 1])
    qu[1] = (du[1] - cu[1] * qu[2]) / (bu[1] - cu[1] * ru[2])
    Y[1] = qu[1]
    for i in range(2, N + 1):
        Y[i] = qu[i] - ru[i] * Y[i - 1]
    return Y


def gotm_diff_center(N, dt, cnpar, posconc, h, Bcup, Bcdw, Yup, Ydw, nuY, Lsour, Qsour, Taur, Yobs, Y):
    """h, Lsour, Qsour, Taur, Yobs, Y: arrays 0..N (index 0 unused); nuY: 0..N. Bc: 'D' or 'N'."""
    au = np.zeros(N + 1)
    bu = np.zeros(N + 1)
    cu = np.zeros(N + 1)
    du = np.zeros(N + 1)
    for i in range(2, N):
        c = 2.0 * dt * nuY[i] / (h[i] + h[i + 1]) / h[i]
        a = 2.0 * dt * nuY[i - 1] / (h[i] + h[i - 1]) / h[i]
        l = dt * Lsour[i]
        cu[i] = -cnpar * c
        au[i] = -cnpar * a
        bu[i] = 1.0 + cnpar * (a + c) - l
        du[i] = (
            (1.0 - (1.0 - cnpar) * (a + c)) * Y[i]
            + (1.0 - cnpar) * (a * Y[i - 1] + c * Y[i + 1])
            + dt * Qsour[i]
        )
    if Bcup == "N":
        a = 2.0 * dt * nuY[N - 1] / (h[N] + h[N - 1]) / h[N]
        l = dt * Lsour[N]
        au[N] = -cnpar * a
        if posconc and Yup < 0:
            bu[N] = 1.0 - au[N] - l - dt * Yup / Y[N] / h[N]
            du[N] = Y[N] + dt * Qsour[N] + (1.0 - cnpar) * a * (Y[N - 1] - Y[N])
        else:
            bu[N] = 1.0 - au[N] - l
            du[N] = Y[N] + dt * (Qsour[N] + Yup / h[N]) + (1.0 - cnpar) * a * (Y[N - 1] - Y[N])
    else:
        au[N] = 0.0
        bu[N] = 1.0
        du[N] = Yup
    if Bcdw == "N":
        c = 2.0 * dt * nuY[1] / (h[1] + h[2]) / h[1]
        l = dt * Lsour[1]
        cu[1] = -cnpar * c
        if posconc and Ydw < 0:
            bu[1] = 1.0 - cu[1] - l - dt * Ydw / Y[1] / h[1]
            du[1] = Y[1] + dt * Qsour[1] + (1.0 - cnpar) * c * (Y[2] - Y[1])
        else:
            bu[1] = 1.0 - cu[1] - l
            du[1] = Y[1] + dt * (Qsour[1] + Ydw / h[1]) + (1.0 - cnpar) * c * (Y[2] - Y[1])
    else:
        cu[1] = 0.0
        bu[1] = 1.0
        du[1] = Ydw
    if min(Taur[1:]) < 1e10:
        for i in range(1, N + 1):
            bu[i] = bu[i] + dt / Taur[i]
            du[i] = du[i] + dt / Taur[i] * Yobs[i]
    return gotm_tridiagonal(N, au, bu, cu, du)[1:]


def pad(x):
    return np.concatenate([[np.nan], np.asarray(x, dtype=np.float64)])


def random_case(rng, N):
    h = rng.uniform(0.3, 3.0, N)
    nu = rng.uniform(0.0, 5e-3, N + 1)
    Y = rng.uniform(0.1, 2.0, N)
    return h, nu, Y


# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cnpar", [1.0, 0.5, 0.3])
@pytest.mark.parametrize(("bcup", "bcdw"), [("N", "N"), ("D", "N"), ("N", "D"), ("D", "D")])
def test_matches_gotm_reference_random(cnpar, bcup, bcdw):
    # a fixed seed per case (hash() of a tuple with strings changes between interpreter runs)
    rng = np.random.default_rng([int(cnpar * 10), "ND".index(bcup), "ND".index(bcdw)])
    for N in (2, 3, 7, 20):
        for posconc in (False, True):
            h, nu, Y = random_case(rng, N)
            L = -rng.uniform(0, 1e-4, N)
            Q = rng.normal(0, 1e-4, N)
            relax = rng.random() < 0.5
            taur = rng.uniform(1e3, 1e5, N) if relax else np.full(N, 1e15)
            Yobs = rng.uniform(0, 1, N)
            Yup = rng.normal(0, 1e-3) if bcup == "N" else rng.uniform(0, 1)
            Ydw = rng.normal(0, 1e-3) if bcdw == "N" else rng.uniform(0, 1)
            dt = 600.0
            ref = gotm_diff_center(
                N,
                dt,
                cnpar,
                posconc,
                pad(h),
                bcup,
                bcdw,
                Yup,
                Ydw,
                np.asarray(nu),
                pad(L),
                pad(Q),
                pad(taur),
                pad(Yobs),
                pad(Y),
            )
            kinds = {"N": "neumann", "D": "dirichlet"}
            out = diffuse_center(
                torch.tensor(Y),
                torch.tensor(h),
                torch.tensor(nu),
                dt,
                cnpar=cnpar,
                posconc=posconc,
                bc_up=(kinds[bcup], Yup),
                bc_down=(kinds[bcdw], Ydw),
                Lsour=torch.tensor(L),
                Qsour=torch.tensor(Q),
                taur=torch.tensor(taur),
                Yobs=torch.tensor(Yobs),
            )
            np.testing.assert_allclose(out.numpy(), ref, rtol=1e-12, atol=1e-14)


def test_patankar_branch_matches_reference_and_keeps_positivity():
    rng = np.random.default_rng(3)
    N = 10
    h, nu, Y = random_case(rng, N)
    Y[-1] = 1e-3
    Y[0] = 2e-3
    Fup, Fdw = -5.0, -3.0  # huge outgoing fluxes: explicit treatment would go far negative
    ref = gotm_diff_center(
        N,
        3600.0,
        1.0,
        True,
        pad(h),
        "N",
        "N",
        Fup,
        Fdw,
        nu,
        pad(np.zeros(N)),
        pad(np.zeros(N)),
        pad(np.full(N, 1e15)),
        pad(np.zeros(N)),
        pad(Y),
    )
    out = diffuse_center(
        torch.tensor(Y),
        torch.tensor(h),
        torch.tensor(nu),
        3600.0,
        posconc=True,
        bc_up=("neumann", Fup),
        bc_down=("neumann", Fdw),
    )
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-12)
    assert bool((out > 0).all())
    explicit = diffuse_center(
        torch.tensor(Y),
        torch.tensor(h),
        torch.tensor(nu),
        3600.0,
        posconc=False,
        bc_up=("neumann", Fup),
        bc_down=("neumann", Fdw),
    )
    assert float(explicit.min()) < 0  # the branch matters


def test_posconc_per_tracer_and_batched_equals_loop():
    rng = np.random.default_rng(4)
    B, V, N = 3, 2, 9
    h = torch.tensor(rng.uniform(0.5, 2.0, (B, 1, N)))
    nu = torch.tensor(rng.uniform(0, 1e-2, (B, 1, N + 1)))
    Y = torch.tensor(rng.uniform(0.01, 1, (B, V, N)))
    flux = torch.tensor(rng.normal(0, 1e-3, (B, V)))
    pos = torch.tensor([True, False])
    dt = torch.tensor(rng.uniform(100, 1000, (B, 1)))
    out = diffuse_center(Y, h, nu, dt, posconc=pos, bc_up=("neumann", flux), cnpar=0.7)
    for b in range(B):
        for v in range(V):
            one = diffuse_center(
                Y[b, v],
                h[b, 0],
                nu[b, 0],
                float(dt[b, 0]),
                posconc=bool(pos[v]),
                bc_up=("neumann", float(flux[b, v])),
                cnpar=0.7,
            )
            torch.testing.assert_close(out[b, v], one, rtol=1e-13, atol=1e-15)


def test_mass_conservation_zero_flux():
    rng = np.random.default_rng(5)
    for cnpar in (1.0, 0.5):
        h, nu, Y = random_case(rng, 40)
        h, nu, Y = map(torch.tensor, (h, nu * 100, Y))
        Yn = Y
        for _ in range(50):
            Yn = diffuse_center(Yn, h, nu, 3600.0, cnpar=cnpar)
        assert abs(float((h * Yn).sum() - (h * Y).sum())) < 1e-12 * float((h * Y).sum())


def test_positivity_theta_one():
    rng = np.random.default_rng(6)
    h, nu, _ = random_case(rng, 30)
    Y = np.zeros(30)
    Y[rng.integers(0, 30, 4)] = 1.0  # spikes next to zeros: Crank-Nicolson would undershoot
    out = diffuse_center(torch.tensor(Y), torch.tensor(h), torch.tensor(nu * 1e3), 86400.0)
    assert bool((out >= 0).all())
    cn = diffuse_center(torch.tensor(Y), torch.tensor(h), torch.tensor(nu * 1e3), 86400.0, cnpar=0.5)
    assert float(cn.min()) < 0  # the positivity claim is specific to theta = 1


def test_gaussian_spreading_matches_analytic():
    # free-space Gaussian on a deep fine grid, constant nu, Crank-Nicolson: second order in space and time
    depth, nz, nu, dt, nsteps = 100.0, 1000, 1e-3, 60.0, 200
    grid = ColumnGrid.uniform(depth, nz)
    zc = grid.zc  # heights (m, negative)
    z0, s0 = -50.0, 3.0
    Y = torch.exp(-((zc - z0) ** 2) / (2 * s0**2))
    nuh = torch.full((nz + 1,), nu, dtype=DT)
    for _ in range(nsteps):
        Y = diffuse_center(Y, grid.h, nuh, dt, cnpar=0.5)
    s2 = s0**2 + 2 * nu * dt * nsteps
    exact = s0 / math.sqrt(s2) * torch.exp(-((zc - z0) ** 2) / (2 * s2))
    assert float((Y - exact).abs().max()) < 5e-5  # measured 1.4e-5


def test_dirichlet_value_held_and_relaxation_converges():
    rng = np.random.default_rng(7)
    h, nu, Y = map(torch.tensor, random_case(rng, 12))
    out = diffuse_center(Y, h, nu * 10, 3600.0, bc_up=("dirichlet", 3.5), bc_down=("dirichlet", -1.0))
    assert float(out[-1]) == 3.5 and float(out[0]) == -1.0
    Yobs = torch.tensor(rng.uniform(0, 1, 12))
    taur = torch.full((12,), 3600.0, dtype=DT)
    Yn = Y
    for _ in range(300):
        Yn = diffuse_center(Yn, h, torch.zeros(13, dtype=DT), 3600.0, taur=taur, Yobs=Yobs)
    torch.testing.assert_close(Yn, Yobs, rtol=0, atol=1e-10)
    # GOTM's all-or-nothing rule: tau >= 1e10 everywhere means no relaxation at all
    same = diffuse_center(Y, h, nu, 3600.0, taur=torch.full((12,), 1e12, dtype=DT), Yobs=Yobs)
    torch.testing.assert_close(same, diffuse_center(Y, h, nu, 3600.0), rtol=0, atol=0)


def test_single_layer():
    Y = torch.tensor([2.0], dtype=DT)
    out = diffuse_center(
        Y,
        torch.tensor([4.0], dtype=DT),
        torch.zeros(2, dtype=DT),
        10.0,
        bc_up=("neumann", 0.4),
        bc_down=("neumann", -0.2),
    )
    torch.testing.assert_close(out, torch.tensor([2.0 + 10.0 * 0.2 / 4.0], dtype=DT))


# ----------------------------------------------------------------------------------------------------
def _inputs(rng, N=8, B=2):
    return dict(
        Y=torch.tensor(rng.uniform(0.2, 1.0, (B, N)), requires_grad=True),
        h=torch.tensor(rng.uniform(0.5, 2.0, (B, N)), requires_grad=True),
        nuh=torch.tensor(rng.uniform(1e-4, 1e-3, (B, N + 1)), requires_grad=True),
        Fup=torch.tensor(rng.normal(0, 1e-4, (B,)), requires_grad=True),
        Fdw=torch.tensor(rng.uniform(1e-5, 1e-4, (B,)), requires_grad=True),
        Q=torch.tensor(rng.normal(0, 1e-5, (B, N)), requires_grad=True),
        L=torch.tensor(-rng.uniform(0, 1e-5, (B, N)), requires_grad=True),
    )


def _f(Y, h, nuh, Fup, Fdw, Q, L):
    return diffuse_center(
        Y,
        h,
        nuh,
        1800.0,
        cnpar=0.6,
        posconc=True,
        bc_up=("neumann", Fup),
        bc_down=("neumann", Fdw),
        Qsour=Q,
        Lsour=L,
    )


def test_gradcheck():
    inp = _inputs(np.random.default_rng(8))
    assert torch.autograd.gradcheck(_f, tuple(inp.values()), eps=1e-7, atol=1e-6, rtol=1e-5)


def test_gradcheck_patankar_branch():
    inp = _inputs(np.random.default_rng(9))
    with torch.no_grad():
        inp["Fup"].copy_(-torch.tensor([3e-4, 1e-4]))
    assert torch.autograd.gradcheck(_f, tuple(inp.values()), eps=1e-7, atol=1e-6, rtol=1e-5)


def test_jvp_matches_vjp():
    inp = _inputs(np.random.default_rng(10))
    primals = tuple(x.detach() for x in inp.values())
    rng = np.random.default_rng(11)
    tangents = tuple(torch.tensor(rng.normal(size=x.shape)) * x.abs().mean() for x in primals)
    out, jv = torch.func.jvp(_f, primals, tangents)
    u = torch.tensor(rng.normal(size=out.shape))
    _, vjp_fn = torch.func.vjp(_f, *primals)
    vj = vjp_fn(u)
    lhs = (u * jv).sum()
    rhs = sum((a * b).sum() for a, b in zip(vj, tangents))
    torch.testing.assert_close(lhs, rhs, rtol=1e-10, atol=1e-14)


def test_vmap_over_columns():
    inp = _inputs(np.random.default_rng(12))
    args = tuple(x.detach() for x in inp.values())
    torch.testing.assert_close(torch.func.vmap(_f)(*args), _f(*args), rtol=1e-13, atol=1e-15)


# ----------------------------------------------------------------------------------------------------
def test_bad_input_errors():
    Y = torch.ones(5, dtype=DT)
    h = torch.ones(5, dtype=DT)
    nu = torch.ones(6, dtype=DT) * 1e-3
    with pytest.raises(ConfigError, match="nuh"):
        diffuse_center(Y, h, -nu, 10.0)
    with pytest.raises(ConfigError, match="h"):
        diffuse_center(Y, -h, nu, 10.0)
    with pytest.raises(ConfigError, match="dt"):
        diffuse_center(Y, h, nu, -1.0)
    with pytest.raises(ShapeError, match="nuh"):
        diffuse_center(Y, h, nu[:5], 10.0)
    with pytest.raises(ShapeError, match="h"):
        diffuse_center(Y, h[:4], nu, 10.0)
    with pytest.raises(ShapeError, match="broadcast"):
        diffuse_center(torch.ones(3, 5, dtype=DT), torch.ones(2, 5, dtype=DT), nu, 10.0)
    with pytest.raises(ConfigError, match="bc_up"):
        diffuse_center(Y, h, nu, 10.0, bc_up=("robin", 0.0))
    with pytest.raises(ConfigError, match="cnpar"):
        diffuse_center(Y, h, nu, 10.0, cnpar=1.5)
    with pytest.raises(ConfigError, match="taur"):
        diffuse_center(Y, h, nu, 10.0, taur=torch.ones(5, dtype=DT))


def test_relaxation_and_dirichlet_gradients_fd_and_float32():
    rng = np.random.default_rng(13)
    N = 7
    Y = torch.tensor(rng.uniform(0.2, 1.0, N))
    h = torch.tensor(rng.uniform(0.5, 2.0, N))
    nuh = torch.tensor(rng.uniform(1e-4, 1e-3, N + 1))
    taur = torch.tensor(rng.uniform(1e3, 1e4, N))
    Yobs = torch.tensor(rng.uniform(0, 1, N))

    def f(Y, h, nuh, taur, Yobs, top):
        return diffuse_center(Y, h, nuh, 1800.0, cnpar=0.5, taur=taur, Yobs=Yobs, bc_up=("dirichlet", top))

    prim = (Y, h, nuh, taur, Yobs, torch.tensor(0.3, dtype=DT))
    tang = tuple(torch.tensor(rng.normal(size=x.shape)) * x.abs().mean() for x in prim)
    _, jv = torch.func.jvp(f, prim, tang)
    eps = 1e-6
    plus = f(*(p + eps * t for p, t in zip(prim, tang)))
    minus = f(*(p - eps * t for p, t in zip(prim, tang)))
    torch.testing.assert_close(jv, (plus - minus) / (2 * eps), rtol=1e-6, atol=1e-10)
    out32 = f(*(x.float() for x in prim))
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), f(*prim), rtol=1e-5, atol=1e-6)


# Records n, n+1 (n = 3745, 4392, 5784, 7291) of ../shared/data/gotm_nns_annual/physics_hourly.nc, unchanged
GOTM_NNS_NIGHTS = Path(__file__).resolve().parent / "fixtures" / "gotm" / "nns_annual_nights.nc"


def test_reproduces_gotm_temperature_at_night():
    """Real GOTM output: at night (I_0 = 0) GOTM's temperature step is diff_center with avh = nuh + 1.4e-7,
    Neumann surface heat flux, zero bottom flux, cnpar = 1 and nuh written at the start of the step. The
    surface flux is not in the file: it is recovered from the heat budget (the scheme conserves heat), then
    the whole profile must match GOTM's to the float32 precision of the file."""
    import netCDF4

    with netCDF4.Dataset(GOTM_NNS_NIGHTS) as d:
        record = {round(float(t) / 3600.0): i for i, t in enumerate(d["time"][:])}  # GOTM record -> row
        for n in (3745, 4392, 5784, 7291):  # summer/autumn nights, stratified
            assert float(d["I_0"][record[n], 0, 0]) == 0.0 and float(d["I_0"][record[n + 1], 0, 0]) == 0.0
            T0, T1 = (
                torch.tensor(np.asarray(d["temp"][record[k], :, 0, 0], dtype=np.float64)) for k in (n, n + 1)
            )
            h = torch.tensor(np.asarray(d["h"][record[n + 1], :, 0, 0], dtype=np.float64))
            errs = {}
            for lag, avmol in ((0, 1.4e-7), (0, 0.0), (1, 1.4e-7)):
                nu = torch.tensor(np.asarray(d["nuh"][record[n + lag], :, 0, 0], dtype=np.float64)) + avmol
                base = diffuse_center(T0, h, nu, 3600.0)
                unit = diffuse_center(torch.zeros_like(T0), h, nu, 3600.0, bc_up=("neumann", 1.0))
                F = ((h * T1).sum() - (h * base).sum()) / (h * unit).sum()  # K m s-1, linear in the flux
                errs[(lag, avmol)] = float((base + F * unit - T1).abs().max())
            assert errs[(0, 1.4e-7)] < 1e-5, errs  # measured 7e-7 .. 5e-6 K (file precision ~1e-6 K)
            assert errs[(0, 0.0)] > 1e-5 and errs[(1, 1.4e-7)] > 1e-4  # the check discriminates

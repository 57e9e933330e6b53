"""Primitive-equation ocean (pelagos.ocean): geometry, conservation, energetics, analytic balances, the
barotropic solve and its gradient, AD vs finite differences, errors. Tiny grids; float64 unless stated."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pelagos.core import check_directional, check_jvp_vjp
from pelagos.core.errors import ConfigError, StabilityError
from pelagos.ocean import Grid, OceanModel, acc_grid, acc_model
from pelagos.ocean import momentum as M
from pelagos.ocean import tracers as T
from pelagos.ocean.streamfunction import SurfacePressureSolver, barotropic_transports, channel_transport

F64 = torch.float64


def _tiny(**kw) -> OceanModel:
    """6 × 8 × 4 version of the ACC (10° cells), hour-long steps."""
    base = dict(dt_mom=3600.0, dt_tracer=7200.0, A_h=1e5, isoneutral=False)
    base.update(kw)
    return acc_model(10.0, nz=4, **base)


def _box(cyclic: bool = False, nx: int = 6, ny: int = 5, nz: int = 3, **kw) -> OceanModel:
    """A closed (or zonally periodic) flat-bottom box at 40–50°S with 2° cells, no wind, no restoring."""
    g = Grid(nx, ny, [50.0, 150.0, 300.0][:nz], torch.ones(ny, nx, dtype=torch.int64), x0=0.0, y0=-50.0,
             dlon=2.0, dlat=2.0, cyclic=cyclic)  # fmt: skip
    base = dict(
        dt_mom=1800.0, dt_tracer=1800.0, A_h=2e4, t_rest=1e30, K_h=100.0, isoneutral=False
    )  # taux = 0
    base.update(kw)
    return OceanModel(g, **base)


def _random_flow(m: OceanModel, seed: int = 0, scale: float = 0.1):
    gen = torch.Generator().manual_seed(seed)
    g = m.grid
    u = scale * torch.randn(g.shape, generator=gen, dtype=F64) * g.mask_u
    v = scale * torch.randn(g.shape, generator=gen, dtype=F64) * g.mask_v
    return u, v


def _warm_box_state(m: OceanModel, seed: int = 0) -> dict:
    """Rest with a warm anomaly in the middle (geostrophic adjustment starts from it)."""
    s = m.initial_state()
    g = m.grid
    x = (g.xt - g.xt.mean()).reshape(1, 1, -1)
    y = (g.yt - g.yt.mean()).reshape(1, -1, 1)
    s["temp"] = (s["temp"] + 2.0 * torch.exp(-(x**2 + y**2) / 8.0)) * g.mask_t
    gen = torch.Generator().manual_seed(seed)
    s["salt"] = (s["salt"] + 0.1 * torch.randn(g.shape, generator=gen, dtype=F64)) * g.mask_t
    return s


# -- geometry --------------------------------------------------------------------------------------------
def test_acc_geometry_matches_veros_acc_basic():
    g = acc_grid(2.0)
    assert g.shape == (15, 42, 30) and g.cyclic
    assert float(g.dz[0]) == pytest.approx(20.0) and float(g.dz.sum()) == pytest.approx(2080.0)
    # Veros's T points: xt = -1, 1, …, 57; yt = -41, …, 41
    assert float(g.xt[0]) == pytest.approx(-1.0) and float(g.yt[0]) == pytest.approx(-41.0)
    assert float(g.yt[-1]) == pytest.approx(41.0)
    land = g.mask_t[0] == 0
    # the wall: two columns (xt = -1, 1) north of 20°S; the channel (11 rows, 41°S…21°S) is open all around
    assert bool(land[11:, :2].all()) and not bool(land[:11].any()) and not bool(land[:, 2:].any())
    assert int(land.sum()) == 62
    # u faces on both sides of the wall are closed; channel faces across the periodic seam are open
    assert bool((g.mask_u[:, 11:, :2] == 0).all()) and bool((g.mask_u[:, 11:, -1] == 0).all())
    assert bool((g.mask_u[:, :11, -1] == 1).all())
    assert g.nlev.max() == 15
    # Veros's wind and restoring SST (normalised with Veros's latitude extremes, halo rows included):
    # 0.1 sin(π (yu + 44)/25) on the channel rows (yu = yt + 1), and equal to Veros's own fields (fixture)
    from pelagos.ocean.setups import acc_t_star, acc_wind

    tx = acc_wind(g)
    yu = g.yt + 1
    assert torch.allclose(tx[:11], 0.1 * torch.sin(math.pi * (yu[:11] + 44) / 25))
    assert float(tx[11:25].abs().max()) == 0.0
    ref = np.load(Path(__file__).parent / "data" / "ocean" / "veros_acc_grid.npz")
    assert np.allclose(tx.numpy(), ref["surface_taux"][:, 15], rtol=0, atol=1e-15)
    assert np.allclose(acc_t_star(g).numpy(), ref["t_star"], rtol=0, atol=1e-13)
    assert np.array_equal(g.zt.numpy(), ref["zt"])


def test_grid_rejects_bad_configuration():
    with pytest.raises(ConfigError, match="kbot must have shape"):
        Grid(4, 3, [10.0], torch.ones(4, 4, dtype=torch.int64))
    with pytest.raises(ConfigError, match="dz"):
        Grid(4, 3, [10.0, -5.0], torch.ones(3, 4, dtype=torch.int64))
    with pytest.raises(ConfigError, match="latitudes"):
        Grid(4, 3, [10.0], torch.ones(3, 4, dtype=torch.int64), y0=85.0, dlat=5.0)
    with pytest.raises(ConfigError, match="land"):
        Grid(4, 3, [10.0], torch.zeros(3, 4, dtype=torch.int64))
    with pytest.raises(ConfigError, match="advection"):
        _tiny(advection="upwind3")


def test_stability_errors():
    with pytest.raises(StabilityError, match="A_h"):
        acc_model(2.0, A_h=1e9)
    with pytest.raises(StabilityError, match="f·dt_mom"):
        _tiny(dt_mom=1e5, A_h=1.0)
    m = _tiny()
    s = m.initial_state(u=100.0)
    with pytest.raises(StabilityError, match="Courant"):
        m.check_cfl(s)
    assert m.check_cfl(m.initial_state()) == 0.0


# -- energetics ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cyclic", [False, True])
def test_coriolis_and_metric_terms_are_energy_neutral(cyclic):
    m = _box(cyclic=cyclic)
    g = m.grid
    u, v = _random_flow(m)
    du, dv = M.coriolis_metric(g, u, v)
    work = (g.area_t * g.dz3 * u * du).sum() + (g.area_v * g.dz3 * v * dv).sum()
    scale = (g.area_t * g.dz3 * (u * du).abs()).sum()
    assert float(scale) > 0
    assert abs(float(work)) < 1e-13 * float(scale)


def test_lateral_friction_dissipates_and_spares_uniform_flow():
    m = _box(cyclic=True)
    g = m.grid
    u, v = _random_flow(m, seed=1)
    du, dv = M.harmonic_friction(g, u, v, torch.tensor(1e4, dtype=F64))
    work = (g.area_t * g.dz3 * u * du).sum() + (g.area_v * g.dz3 * v * dv).sum()
    assert float(work) < 0
    du0, _ = M.harmonic_friction(g, 0.3 * g.mask_u, 0 * v, torch.tensor(1e4, dtype=F64))
    assert float(du0.abs().max()) < 1e-18


# -- conservation ----------------------------------------------------------------------------------------
def test_closed_basin_conserves_volume_and_tracer_content():
    m = _box(cyclic=False)
    g = m.grid
    s = _warm_box_state(m)
    vol = g.area_t * g.dz3 * g.mask_t
    heat0, salt0 = float((vol * s["temp"]).sum()), float((vol * s["salt"]).sum())
    for i in range(20):
        s = m.step(s, i * m.dt)
    assert float(s["u"].abs().max()) > 1e-3  # it moved (geostrophic adjustment)
    # volume: the depth-integrated flow is non-divergent (rigid lid) and nothing crosses the surface
    U, V = barotropic_transports(g, s["u"], s["v"])
    div = (U - g.west(U) + V - g.south(V)) * g.mask_t[0]
    assert float(div.abs().max()) < 1e-9 * float(U.abs().max() + V.abs().max())
    _, _, wt = M.transports(g, s["u"], s["v"])
    assert float(wt[0].abs().max()) < 1e-9 * float(wt.abs().max())
    # tracers: content conserved to rounding (restoring is off: t_rest = 1e30 s)
    assert float((vol * s["temp"]).sum()) == pytest.approx(heat0, rel=1e-12)
    assert float((vol * s["salt"]).sum()) == pytest.approx(salt0, rel=1e-13)


def test_tracer_operators_conserve_content():
    m = _box(cyclic=True)
    g = m.grid
    s = _warm_box_state(m)
    u, v = _random_flow(m, seed=2, scale=0.05)
    u, v, _ = m.solver.project(u, v)
    tr = M.transports(g, u, v)
    vol = g.area_t * g.dz3 * g.mask_t
    for scheme in T.SCHEMES:
        a = T.advection(g, s["temp"], tr, m.dt_tracer, scheme)
        assert abs(float((vol * a).sum())) < 1e-13 * float((vol * a.abs()).sum()), scheme
    d = T.horizontal_diffusion(g, s["temp"], torch.tensor(1e3, dtype=F64))
    assert abs(float((vol * d).sum())) < 1e-13 * float((vol * d.abs()).sum())
    # uniform tracer: advection of a constant by a non-divergent flow is zero
    a = T.advection(g, 3.0 * g.mask_t, tr, m.dt_tracer, "superbee")
    assert float(a.abs().max()) < 1e-12


def test_implicit_vertical_mixing_conserves_and_homogenises():
    m = _box()
    g = m.grid
    s = _warm_box_state(m)
    vol = g.area_t * g.dz3 * g.mask_t
    out = T.implicit_vertical(g, s["temp"], torch.tensor(10.0, dtype=F64), g.mask_t, 1e8)
    assert float((vol * out).sum()) == pytest.approx(float((vol * s["temp"]).sum()), rel=1e-10)
    spread = (out.max(0).values - out.min(0).values).max()
    assert float(spread) < 1e-3


# -- analytic balances -----------------------------------------------------------------------------------
def test_wind_driven_channel_reaches_the_bottom_friction_balance():
    """Zonally uniform wind over a re-entrant channel: in steady state the depth-integrated zonal momentum
    balance is τ/ρ₀ = r_bot·dz_bottom·u_bottom (no zonal pressure gradient, no net meridional transport,
    free-slip side walls), so u_bottom = τ/(ρ₀ r_bot dz_bottom) exactly."""
    nx, ny = 4, 3
    g = Grid(nx, ny, [100.0, 100.0], torch.ones(ny, nx, dtype=torch.int64), x0=0.0, y0=-46.0, dlon=1.0,
             dlat=1.0, cyclic=True)  # fmt: skip
    tau, r_bot = 0.05, 2e-4
    m = OceanModel(g, dt_mom=3600.0, dt_tracer=3600.0, taux=torch.full((ny,), tau, dtype=F64), taux_ref=tau,
                   taux_0=tau, r_bot=r_bot, kappaM_0=0.05, A_h=1e3, t_rest=1e30, K_h=1.0,
                   isoneutral=False)  # fmt: skip
    s = m.initial_state(t_surface=0.0)
    for i in range(600):
        s = m.step(s, i * m.dt)
    u_bottom = s["u"][-1]
    expected = tau / (M.RHO_0 * r_bot * 100.0)
    assert float(u_bottom.mean()) == pytest.approx(expected, rel=2e-3)
    # no net meridional transport in any row; the flow is zonally uniform
    _, V = barotropic_transports(g, s["u"], s["v"])
    assert float(V.abs().max()) < 1e-8
    assert float((s["u"] - s["u"].mean(-1, keepdim=True)).abs().max()) < 1e-10


def test_geostrophic_adjustment_approaches_thermal_wind():
    """Adjustment from rest to a meridional density front in a zonal channel: after the inertial
    oscillations are averaged out (two inertial periods), the vertical shear of the flow is in thermal-wind
    balance with the model's own baroclinic pressure gradient, f ∂ū/∂z = −∂/∂z(∂p/∂y), at the v points."""
    m = _box(cyclic=True, nx=4, ny=9, A_h=1e3, K_h=1.0, kappaM_0=1e-5, kappaH_0=1e-7, r_bot=1e-7)
    g = m.grid
    s = m.initial_state()
    yc = (g.yt - g.yt.mean()).reshape(1, -1, 1)
    s["temp"] = (s["temp"] + 2.0 * torch.exp(-(yc**2) / 32.0) * torch.ones_like(g.mask_t)) * g.mask_t
    period = 2 * math.pi / float(g.f_t.abs().mean())
    n_mean = round(2 * period / m.dt_mom)
    lhs, rhs = 0.0, 0.0
    for i in range(50 + n_mean):
        s = m.step(s, i * m.dt)
        if i >= 50:
            u = s["u"]
            ubar_v = 0.25 * (u + g.west(u) + g.north(u) + g.north(g.west(u)))
            f_v = 0.5 * (g.f_t + g.north(g.f_t))
            lhs = lhs + f_v * (ubar_v[0] - ubar_v[1])  # f Δu between levels 0 and 1
            p = M.hydrostatic_pressure(g, m.rho(s))
            dpdy = (g.north(p) - p) / g.dy
            rhs = rhs - (dpdy[0] - dpdy[1])
    rows = slice(1, g.ny - 2)
    lhs, rhs = lhs[rows] / n_mean, rhs[rows] / n_mean
    assert float(rhs.abs().max()) > 1e-7  # a real front
    err = (lhs - rhs).abs().max() / rhs.abs().max()
    assert float(err) < 0.1


# -- the barotropic solve --------------------------------------------------------------------------------
def _rhs(g, seed=0):
    gen = torch.Generator().manual_seed(seed)
    D = torch.randn(g.ny, g.nx, generator=gen, dtype=F64) * g.mask_t[0]
    return D - g.mask_t[0] * D.sum() / g.mask_t[0].sum()


def test_surface_pressure_solve_cg_matches_direct_and_removes_divergence():
    g = acc_grid(6.0, nz=3)
    cg = SurfacePressureSolver(g, method="cg")
    direct = SurfacePressureSolver(g, method="direct")
    D = _rhs(g)
    p_cg, p_d = cg.solve(D), direct.solve(D)
    assert float((p_cg - p_d).abs().max()) < 1e-9 * float(p_d.abs().max())
    res = cg.operator(p_cg) + D
    assert float(res.abs().max()) < 1e-9 * float(D.abs().max())
    # projection of a random flow: depth-integrated divergence vanishes, channel transport is kept finite
    m = acc_model(6.0, nz=3, A_h=1e5, dt_mom=3600.0, dt_tracer=7200.0)
    u, v = _random_flow(m, seed=3)
    for solver in (cg, direct):
        u1, v1, _ = solver.project(u, v)
        U, V = barotropic_transports(g, u1, v1)
        div = (U - g.west(U) + V - g.south(V)) * g.mask_t[0]
        assert float(div.abs().max()) < 1e-8 * float(U.abs().max())
        # every meridional section carries the same zonal transport
        sec = U.sum(-2)
        assert float((sec - sec.mean()).abs().max()) < 1e-8 * float(sec.abs().max())


@pytest.mark.parametrize("method", ["cg", "direct"])
def test_surface_pressure_solve_gradient(method):
    g = acc_grid(6.0, nz=3)
    solver = SurfacePressureSolver(g, method=method)
    D = _rhs(g, seed=4)
    w = torch.randn(g.ny, g.nx, generator=torch.Generator().manual_seed(5), dtype=F64)
    rep = check_directional(lambda d: (solver.solve(d) * w).sum(), [D], n_directions=3, tol=1e-7)
    assert rep.passed, rep
    rep = check_jvp_vjp(lambda d: solver.solve(d), [D], n_directions=2, tol=1e-8)
    assert rep.passed, rep


# -- gradients of the whole model ------------------------------------------------------------------------
def _spun(m: OceanModel, n: int = 4) -> dict:
    s = m.initial_state(u=0.02)
    with torch.no_grad():
        for i in range(n):
            s = m.step(s, i * m.dt)
    return s


@pytest.mark.parametrize("steps", [1, 4])
def test_gradients_vs_finite_differences(steps):
    """Loss = Σ w·(u, v, temp) after ``steps`` steps from a moving state; d/d(A_h, r_bot) and d/d(initial
    temperature) along random directions, central FD in float64."""
    m = _tiny(kappa_conv=1e-2)
    s0 = _spun(m)
    gen = torch.Generator().manual_seed(7)
    w = {k: torch.randn(s0[k].shape, generator=gen, dtype=F64) for k in ("u", "v", "temp")}

    def loss(state):
        return sum((state[k] * w[k]).sum() for k in w)

    def run(temp0, log_ah, log_rbot):
        with m.using({"A_h": log_ah, "r_bot": log_rbot}):
            st = dict(s0, temp=temp0)
            for i in range(steps):
                st = m.step(st, i * m.dt)
        return loss(st)

    m.select_free(["A_h", "r_bot"])
    la = torch.tensor(math.log(1e5), dtype=F64)
    lr = torch.tensor(math.log(1e-5), dtype=F64)
    rep = check_directional(run, [s0["temp"], la, lr], n_directions=3, tol=1e-6, seed=11)
    assert rep.passed, rep
    rep = check_jvp_vjp(run, [s0["temp"], la, lr], n_directions=2, tol=1e-9)
    assert rep.passed, rep


def test_channel_transport_and_diagnostics_shapes():
    m = _tiny()
    g = m.grid
    s = m.initial_state(2)
    s["u"] = (0.1 * g.mask_u * (g.yt < -20).to(F64).reshape(-1, 1)).expand(2, *g.shape)  # channel-only flow
    o = m.output(s)
    assert o["acc_transport"].shape == (2,)
    # uniform 0.1 m/s in the channel only (walls block the rest): transport = 0.1·H·(channel width)
    expected = 0.1 * float(g.dz.sum()) * float(g.dy) * 2 / 1e6  # two channel rows at 10°
    assert float(o["acc_transport"][0]) == pytest.approx(expected, rel=1e-12)
    assert float(channel_transport(g, s["u"][0])) == pytest.approx(expected, rel=1e-12)
    # ψ on the northern continent equals minus the channel transport (ψ = 0 on the southern coast)
    assert float(o["psi"][0, -1, 3]) == pytest.approx(-expected, rel=1e-12)
    assert o["moc"].shape == (2, g.nz, g.ny)
    assert float(o["kinetic_energy"][0]) > 0


def test_float32_runs_and_stays_close_to_float64():
    m64 = _tiny()
    m32 = acc_model(
        10.0, nz=4, dt_mom=3600.0, dt_tracer=7200.0, A_h=1e5, isoneutral=False, dtype=torch.float32
    )
    s64, s32 = m64.initial_state(), m32.initial_state()
    assert s32["temp"].dtype == torch.float32
    for i in range(10):
        s64, s32 = m64.step(s64, i * 7200.0), m32.step(s32, i * 7200.0)
    a64 = float(m64.output(s64)["acc_transport"])
    a32 = float(m32.output(s32)["acc_transport"])
    assert a32 == pytest.approx(a64, rel=1e-4)


def test_gradients_with_isoneutral_mixing():
    """With Veros's isoneutral + GM scheme (which keeps Veros's |s|, min and max: kinks, no smoothing) the
    gradient after 2 steps still agrees with central differences to 1e-4 relative, and forward mode equals
    reverse mode to rounding (kinks do not affect that)."""
    m = _tiny(kappa_conv=1e-2, isoneutral=True)
    s0 = _spun(m, 2)
    gen = torch.Generator().manual_seed(8)
    w = torch.randn(s0["temp"].shape, generator=gen, dtype=F64)
    m.select_free(["K_gm_0", "K_iso_0"])
    u0 = m.free_vector().detach()

    def run(temp0, u):
        with m.using(u):
            st = dict(s0, temp=temp0)
            for i in range(2):
                st = m.step(st, i * m.dt)
        return (st["temp"] * w).sum()

    rep = check_directional(run, [s0["temp"], u0], n_directions=2, tol=1e-4, seed=12)
    assert rep.passed, rep
    rep = check_jvp_vjp(run, [s0["temp"], u0], n_directions=1, tol=1e-9)
    assert rep.passed, rep

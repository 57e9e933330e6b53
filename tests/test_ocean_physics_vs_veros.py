"""pelagos.ocean physics routines (eos, tke, isoneutral) against Veros 1.7 on the same input arrays.

The fixtures in ``tests/data/ocean/`` come from ``scripts/veros_reference.py`` (Veros ``acc_basic``, jax
backend,
float64, spun up for 2 years): inputs stored exactly (float32-representable values fed to Veros), Veros's
float64 outputs at 1500 random points. Each routine must reproduce them to rounding; gradients are checked
against central finite differences (float64, random directions) and forward mode against reverse mode.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pelagos.ocean import eos, isoneutral, tke

DATA = Path(__file__).parent / "data" / "ocean"
DT_TRACER = 43200.0
DT_MOM = 4800.0


def _t(a, dtype=torch.float64):
    return torch.as_tensor(np.asarray(a, dtype=np.float64), dtype=dtype)


@pytest.fixture(scope="module")
def ref():
    g = np.load(DATA / "veros_acc_grid.npz")
    r = np.load(DATA / "veros_acc_routines.npz")
    return SimpleNamespace(g={k: g[k] for k in g.files}, r={k: r[k] for k in r.files})


def _grid(ref, dtype=torch.float64):
    g = ref.g
    ny = g["cost"].size
    return SimpleNamespace(
        dz=_t(g["dzt"], dtype),
        dxt=_t(g["dxt"][0] * g["cost"], dtype).reshape(ny, 1),
        dy=_t(g["dyt"][0], dtype),
        cos_t=_t(g["cost"], dtype).reshape(ny, 1),
        cos_v=_t(g["cosu"], dtype).reshape(ny, 1),
        mask_t=_t(g["maskT"], dtype),
        mask_u=_t(g["maskU"], dtype),
        mask_v=_t(g["maskV"], dtype),
        cyclic=True,
    )


def _inputs(ref, dtype=torch.float64):
    grid = _grid(ref, dtype)
    temp = _t(ref.r["in_temp"], dtype)
    salt = 35.0 * grid.mask_t
    return grid, temp, salt


def _at(ref, a):
    r = ref.r
    return (
        a.detach()
        .cpu()
        .double()
        .numpy()[r["sample_k"].astype(int), r["sample_j"].astype(int), r["sample_i"].astype(int)]
    )


def _close(ref, name, ours, rtol=1e-12):
    want = ref.r[name]
    got = _at(ref, ours)
    scale = np.abs(want).max()
    err = np.abs(got - want).max()
    assert err <= rtol * scale, f"{name}: max |pelagos − Veros| = {err:.3e} (scale {scale:.3e}, rtol {rtol})"


def _depth(grid):
    return -eos.vertical_grid(grid.dz).zt.reshape(-1, 1, 1)


# -- routine-level agreement with Veros
# --------------------------------------------------------------------------
def test_vertical_grid_matches_veros(ref):
    g = ref.g
    vg = eos.vertical_grid(_t(g["dzt"]))
    np.testing.assert_allclose(vg.zt.numpy(), g["zt"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(vg.zw.numpy(), g["zw"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(vg.dzw.numpy(), g["dzw"], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(eos.mask_w(_t(g["maskT"])).numpy(), g["maskW"])


def test_eos_matches_veros(ref):
    grid, temp, salt = _inputs(ref)
    mt, depth = grid.mask_t, _depth(grid)
    _close(ref, "eos_rho", eos.density_anomaly(temp, salt, depth) * mt)
    _close(ref, "eos_drhodT", eos.drho_dtemp(temp, depth) * mt)
    _close(ref, "eos_Hd", eos.dyn_enthalpy(temp, salt, depth) * mt)
    _close(ref, "eos_int_drhodT", eos.int_drho_dtemp(temp, depth))
    _close(ref, "eos_Nsqr", eos.buoyancy_frequency_sq(temp, salt, grid.dz, mt), rtol=1e-11)


def _iso(ref, grid, temp, salt, **kw):
    g = ref.g
    return isoneutral.isoneutral_tensor(
        temp, salt, grid, K_iso=float(g["K_iso_0"]), K_iso_steep=float(g["K_iso_steep"]),
        iso_slopec=float(g["iso_slopec"]), iso_dslope=float(g["iso_dslope"]), **kw,
    )  # fmt: skip


def test_isoneutral_tensor_matches_veros(ref):
    grid, temp, salt = _inputs(ref)
    ten = _iso(ref, grid, temp, salt)
    for name in ("K_11", "K_22", "K_33"):
        _close(ref, f"iso_{name}", getattr(ten, name))
    assert float(ten.K_33.abs().max()) > 0  # the spun-up state has sloping isopycnals


def test_isoneutral_and_gm_tendencies_match_veros(ref):
    grid, temp, salt = _inputs(ref)
    ten = _iso(ref, grid, temp, salt)
    I = eos.int_drho_dtemp(temp, _depth(grid))
    kw = dict(dt=DT_TRACER, K_iso=float(ref.g["K_iso_0"]), K_gm=float(ref.g["K_gm_0"]), int_drho=I)
    r = isoneutral.isoneutral_diffusion(temp, temp, ten, grid, iso=True, skew=False, **kw)
    # (after − before)/dt of the implicit solve loses ~|T|/(dt·|tendency|) ≈ 1e-6 relative digits
    _close(ref, "iso_dtemp", r.tendency, rtol=1e-9)
    _close(ref, "iso_P_diss", r.P_diss_iso, rtol=1e-8)
    r = isoneutral.isoneutral_diffusion(temp, temp, ten, grid, iso=False, skew=True, **kw)
    _close(ref, "skew_dtemp", r.tendency)
    _close(ref, "skew_P_diss", r.P_diss_skew)


def test_tke_matches_veros(ref):
    grid, temp, salt = _inputs(ref)
    n2 = eos.buoyancy_frequency_sq(temp, salt, grid.dz, grid.mask_t)
    e = _t(ref.r["in_tke"])
    d = tke.tke_diffusivities(e, n2, grid.dz, grid.mask_t)
    _close(ref, "tke_mxl", d.mxl, rtol=1e-12)
    _close(ref, "tke_kappaM", d.kappaM, rtol=1e-9)  # N² near 0 amplifies its 1e-15 rounding in 1/N
    _close(ref, "tke_kappaH", d.kappaH, rtol=1e-9)
    st = tke.integrate_tke(
        e, _t(ref.r["in_forc"]), d, grid.dz, grid.mask_t, _t(ref.g["forc_tke_surface"]), dt_tke=DT_MOM
    )
    _close(ref, "tke_new", st.tke, rtol=1e-9)
    _close(ref, "tke_diss", st.tke_diss, rtol=1e-9)
    corr = ref.r[
        "tke_surf_corr"
    ]  # −e_top·½dzw/dt where the solve gave e_top < 0: a cancellation, ~1e-8 relative
    np.testing.assert_allclose(st.tke_surf_corr.numpy(), corr, rtol=0, atol=1e-7 * np.abs(corr).max())
    assert np.abs(corr).max() > 0


def test_surface_tke_forcing_matches_veros(ref):
    taux = _t(ref.g["surface_taux"])
    got = tke.surface_tke_forcing(taux, torch.zeros_like(taux), cyclic=True)
    np.testing.assert_allclose(got.numpy(), ref.g["forc_tke_surface"], rtol=1e-12, atol=0)


# -- physics checks that need no reference
# -----------------------------------------------------------------------
def test_isoneutral_conserves_tracer(ref):
    """Redi + GM fluxes only move tracer around: Σ volume·tendency = 0 in the closed/cyclic domain."""
    grid, temp, salt = _inputs(ref)
    ten = _iso(ref, grid, temp, salt)
    vol = grid.dxt * grid.dy * grid.dz.reshape(-1, 1, 1) * grid.mask_t
    # Redi: the implicit K_33 part enters the tendency as (after − before)/dt, rounding ~1e-10 relative
    for iso, skew, rtol in ((True, False, 1e-8), (False, True, 1e-12)):
        r = isoneutral.isoneutral_diffusion(temp, temp, ten, grid, dt=DT_TRACER, iso=iso, skew=skew)
        total = float((vol * r.tendency).sum())
        scale = float((vol * r.tendency.abs()).sum())
        assert abs(total) < rtol * scale, (iso, skew, total, scale)


def test_isoneutral_flat_isopycnals_no_flux(ref):
    """Θ = Θ(z) (flat isopycnals): no slopes, no Redi/GM tendency; K_11 = max(K_steep, K_iso·T(0))."""
    grid, temp, salt = _inputs(ref)
    t_z = (temp * grid.mask_t).sum((-1, -2), keepdim=True) / grid.mask_t.sum((-1, -2), keepdim=True)
    t_flat = t_z * grid.mask_t
    ten = _iso(ref, grid, t_flat, salt)
    assert float(ten.K_33.abs().max()) == 0.0
    assert float(ten.Ai_ez.abs().max()) == 0.0 and float(ten.Ai_by.abs().max()) == 0.0
    r = isoneutral.isoneutral_diffusion(t_flat, t_flat, ten, grid, dt=DT_TRACER)
    assert float(r.tendency.abs().max()) < 1e-20
    taper0 = 0.5 * (1 + math.tanh(0.01 / 0.005))
    inner = ten.K_11[1:-1][grid.mask_u[1:-1] > 0]  # interior levels: all four triads present
    np.testing.assert_allclose(inner.numpy(), 1000.0 * taper0, rtol=1e-12)


def test_tke_decays_without_forcing(ref):
    """No sources, no surface flux: the column-integrated TKE can only decrease (dissipation ≥ 0)."""
    grid, temp, salt = _inputs(ref)
    n2 = eos.buoyancy_frequency_sq(temp, salt, grid.dz, grid.mask_t)
    e = _t(ref.r["in_tke"]).abs() + 1e-6 * grid.mask_t  # (Veros's TKE can go negative below the surface)
    d = tke.tke_diffusivities(e, n2, grid.dz, grid.mask_t)
    st = tke.integrate_tke(
        e, torch.zeros_like(e), d, grid.dz, grid.mask_t, torch.zeros_like(e[0]), dt_tke=DT_MOM
    )
    dzw = eos.w_spacing(grid.dz).reshape(-1, 1, 1)
    box = torch.cat([0.5 * dzw[:1], dzw[1:]])
    before, after = (box * e).sum(-3), (box * st.tke).sum(-3)
    assert bool((after <= before * (1 + 1e-12)).all())
    assert float((before - after).max()) > 0


def test_batch_and_float32(ref):
    grid, temp, salt = _inputs(ref)
    ten = _iso(ref, grid, temp, salt)
    r64 = isoneutral.isoneutral_diffusion(temp, temp, ten, grid, dt=DT_TRACER)
    tb = torch.stack([temp, temp + 0.1 * grid.mask_t])
    tenb = _iso(ref, grid, tb, salt)
    rb = isoneutral.isoneutral_diffusion(tb, tb, tenb, grid, dt=DT_TRACER)
    torch.testing.assert_close(rb.tendency[0], r64.tendency, rtol=1e-12, atol=1e-22)
    g32, t32, s32 = _inputs(ref, torch.float32)
    r32 = isoneutral.isoneutral_diffusion(t32, t32, _iso(ref, g32, t32, s32), g32, dt=DT_TRACER)
    assert r32.tendency.dtype == torch.float32
    # the tendency is ~1e-9 K/s: compare the updated field (float32 resolves ~1e-6 K at 15 °C)
    assert float((r32.tr_new.double() - r64.tr_new).abs().max()) < 2e-5
    n2 = eos.buoyancy_frequency_sq(t32, s32, g32.dz, g32.mask_t)
    d32 = tke.tke_diffusivities(_t(ref.r["in_tke"], torch.float32), n2, g32.dz, g32.mask_t)
    assert d32.kappaM.dtype == torch.float32 and bool(torch.isfinite(d32.kappaM).all())


# -- gradients
# ---------------------------------------------------------------------------------------------------
def _fd_check(f, x0: torch.Tensor, v: torch.Tensor, h: float, tol: float = 1e-6):
    """AD directional derivative (reverse and forward mode) vs central FD along ``v``."""
    x = x0.clone().requires_grad_(True)
    y = f(x)
    (g,) = torch.autograd.grad(y, x)
    ad = float((g * v).sum())
    _, fwd = torch.func.jvp(f, (x0,), (v,))
    with torch.no_grad():
        fd = float((f(x0 + h * v) - f(x0 - h * v)) / (2 * h))
    assert abs(ad - fd) <= tol * max(abs(fd), 1e-300), f"AD {ad!r} vs FD {fd!r}"
    assert abs(float(fwd) - ad) <= 1e-10 * max(abs(ad), 1e-300), f"jvp {float(fwd)!r} vs vjp {ad!r}"


def _weights(shape, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=torch.float64)


def test_eos_gradients(ref):
    grid, temp, salt = _inputs(ref)
    w = _weights(temp.shape, 1)
    v = _weights(temp.shape, 2) * grid.mask_t
    _fd_check(lambda t: (w * eos.buoyancy_frequency_sq(t, salt, grid.dz, grid.mask_t)).sum(), temp, v, 1e-3)
    _fd_check(lambda s: (w * eos.buoyancy_frequency_sq(temp, s, grid.dz, grid.mask_t)).sum(), salt, v, 1e-3)


def test_isoneutral_gradients(ref):
    grid, temp, salt = _inputs(ref)
    # Veros's slope jumps from 0 to "∞" where a column is unstable *and* zonally uniform to rounding (the
    # channel's southern rows): a 1 mK perturbation moves the base state off that set (FD would straddle it)
    temp = temp + 1e-3 * _weights(temp.shape, 7) * grid.mask_t
    w = _weights(temp.shape, 3) * grid.mask_t
    v = _weights(temp.shape, 4) * grid.mask_t
    I = eos.int_drho_dtemp(temp, _depth(grid))

    def loss_t(t):
        ten = _iso(ref, grid, t, salt)
        r = isoneutral.isoneutral_diffusion(t, t, ten, grid, dt=DT_TRACER, int_drho=I)
        return DT_TRACER * (w * r.tendency).sum() + 1e9 * (w * r.P_diss_skew).sum()

    # the taper (width 0.005 in slope) makes the fluxes strongly curved in Θ: FD truncation error ~3e-5 at
    # h = 1e-5 K, ~3e-9 at 1e-7 K (measured), so the step is small; losses on the increment dt·tendency (not
    # on Θ + dt·tendency, whose 15 °C would drown the FD difference in rounding)
    _fd_check(loss_t, temp, v, 1e-7)

    def loss_s(s):
        ten = _iso(ref, grid, temp, s)
        return (
            DT_TRACER
            * (w * isoneutral.isoneutral_diffusion(temp, temp, ten, grid, dt=DT_TRACER).tendency).sum()
        )

    # ρ is 4x more sensitive to S than to Θ (β_S ρ₀ = 0.8): the FD error is ~1e-3 at h = 1e-7 g/kg and
    # ~1e-6…4e-6 at 1e-8 (measured), so this one gets a looser tolerance
    _fd_check(loss_s, salt, v, 1e-8, tol=2e-5)

    def loss_k(k):  # k = (K_iso, K_gm) in m² s⁻¹ (K_iso also in the tensor: K_11, K_22, K_33)
        tk = (
            _iso(ref, grid, temp, salt, **{})
            if k is None
            else isoneutral.isoneutral_tensor(
                temp, salt, grid, K_iso=k[0], K_iso_steep=500.0, iso_slopec=0.01, iso_dslope=0.005
            )
        )
        r = isoneutral.isoneutral_diffusion(temp, temp, tk, grid, dt=DT_TRACER, K_iso=k[0], K_gm=k[1])
        return DT_TRACER * (w * r.tendency).sum()

    k0 = torch.tensor([1000.0, 1000.0], dtype=torch.float64)
    _fd_check(loss_k, k0, torch.tensor([0.6, -0.8], dtype=torch.float64), 1.0)


def test_tke_gradients(ref):
    grid, temp, salt = _inputs(ref)
    n2 = eos.buoyancy_frequency_sq(temp, salt, grid.dz, grid.mask_t)
    # away from √e's kink at e = 0 (FD would straddle it); Veros's TKE can be negative below the surface
    e0 = _t(ref.r["in_tke"]).abs() + 1e-6 * grid.mask_t
    forc = _t(ref.r["in_forc"])
    fs = _t(ref.g["forc_tke_surface"])
    w = _weights(e0.shape, 5) * grid.mask_t
    v = _weights(e0.shape, 6) * grid.mask_t

    def step(e, n2_=n2, c_k=0.1, c_eps=0.7, alpha=30.0):
        d = tke.tke_diffusivities(e, n2_, grid.dz, grid.mask_t, c_k=c_k)
        st = tke.integrate_tke(
            e, forc, d, grid.dz, grid.mask_t, fs, dt_tke=DT_MOM, c_eps=c_eps, alpha_tke=alpha
        )
        return (w * st.tke).sum() + 1e3 * (w * d.kappaM).sum()

    # √e at e ~ 1e-6 m² s⁻² and the κ_M floor make this curved: FD converges for steps ≲ 1e-10 (measured)
    _fd_check(step, e0, 1e-7 * v, 1e-3)
    _fd_check(lambda n: step(e0, n2_=n), n2, 1e-9 * v, 1e-2)
    p0 = torch.tensor([0.1, 0.7, 30.0], dtype=torch.float64)
    _fd_check(
        lambda p: step(e0, c_k=p[0], c_eps=p[1], alpha=p[2]),
        p0,
        torch.tensor([1e-3, 1e-2, 0.1]).double(),
        1e-2,
    )


def test_tke_sqrt_gradient_finite_at_zero(ref):
    """Where TKE is exactly 0 (Veros: sqrt(max(0, e)) → infinite derivative, NaN gradients) the gradient is
    finite."""
    grid, temp, salt = _inputs(ref)
    n2 = eos.buoyancy_frequency_sq(temp, salt, grid.dz, grid.mask_t)
    e = torch.zeros_like(temp).requires_grad_(True)
    d = tke.tke_diffusivities(e, n2, grid.dz, grid.mask_t)
    st = tke.integrate_tke(
        e, _t(ref.r["in_forc"]), d, grid.dz, grid.mask_t, _t(ref.g["forc_tke_surface"]), dt_tke=DT_MOM
    )
    (g,) = torch.autograd.grad((st.tke + st.tke_diss).sum(), e)
    assert bool(torch.isfinite(g).all())


# ------------------------------------------------------------------------------------------------------------
# The whole step with TKE mixing against Veros, a few steps from rest (``veros_reference.py --short 1,2,4``)


def _veros_geometry_model(ref, **kw):
    from pelagos.ocean.grid import Grid
    from pelagos.ocean.model import OceanModel

    g = ref.g
    ny, nx = g["kbot"].shape
    grid = Grid(nx, ny, _t(g["dzt"]), torch.as_tensor(g["kbot"]), x0=-2.0, y0=-42.0, dlon=2.0, dlat=2.0,
                cyclic=True, vertical="veros")  # fmt: skip
    m = OceanModel(grid, dt_mom=float(g["dt_mom"]), dt_tracer=float(g["dt_tracer"]),
                   taux=_t(g["surface_taux"][:, nx // 2]), t_star=_t(g["t_star"]), A_h=float(g["A_h"]),
                   r_bot=float(g["r_bot"]), taux_ref=0.1, mixing="tke", **kw)  # fmt: skip
    return m, m.initial_state()


def _step_errors(ref, short, model_kw=None, patch=None):
    m, s = _veros_geometry_model(ref, **(model_kw or {}))
    if patch is not None:
        patch(m)
    out = {}
    with torch.no_grad():
        for n in range(1, 5):
            mix = m.vertical_mixing(s)
            s = m.step(s, (n - 1) * m.dt)
            if f"u_{n}" not in short.files:
                continue
            ours = dict(u=s["u"], v=s["v"], temp=s["temp"], tke=s["tke"], kappaM=mix["kappaM"],
                        kappaH=mix["kappaH"])  # fmt: skip
            out[n] = {}
            for k, x in ours.items():
                r = short[f"{k}_{n}"].astype(np.float64)
                out[n][k] = float(np.abs(x.numpy() - r).max() / np.abs(r).max())
            # the deepest W level alone (bottom-friction dissipation acts there; small next to the surface)
            r = short[f"tke_{n}"][-1].astype(np.float64)
            out[n]["tke_bottom"] = float(np.abs(s["tke"][-1].numpy() - r).max() / np.abs(r).max())
    return m, s, out


@pytest.fixture(scope="module")
def short():
    return np.load(DATA / "veros_acc_short.npz")


def test_step_with_tke_matches_veros_from_rest(ref, short):
    """u, v, Θ, the TKE and the κ_M/κ_H used in each step, after 1, 2 and 4 steps of the 2° acc_basic from
    rest (Veros's geometry): step 1 to float32 storage rounding, steps 2 and 4 to < 3e-4 of each field's max
    (what remains: Veros steps the barotropic mode with AB2 of the streamfunction, pelagos projects). The TKE
    budget terms enter from step 2 on (u = 0 before): a missing or mis-signed term fails this test (see
    test_step_with_tke_fails_when_miswired)."""
    _, _, err = _step_errors(ref, short)
    for k, e in err[1].items():
        assert e < 5e-7, (1, k, e)
    for n in (2, 4):
        for k, e in err[n].items():
            assert e < (3e-3 if k == "tke_bottom" else 3e-4), (n, k, e)


@pytest.mark.parametrize("term", ["K_diss_v", "P_diss_v", "K_diss_h", "K_diss_bot"])
def test_step_with_tke_fails_when_miswired(ref, short, term, monkeypatch):
    """Dropping one TKE source from the step moves the TKE after 2–4 steps by ten times the tolerance above
    (bottom friction: at the deepest W level)."""
    from pelagos.ocean import model as model_mod

    orig = model_mod.tke_forcing

    def without(K_diss_v, **kw):
        if term == "K_diss_v":
            K_diss_v = torch.zeros_like(K_diss_v)
        else:
            kw[term] = 0.0
        return orig(K_diss_v, **kw)

    monkeypatch.setattr(model_mod, "tke_forcing", without)
    _, _, err = _step_errors(ref, short)
    key, tol = ("tke_bottom", 3e-3) if term == "K_diss_bot" else ("tke", 3e-4)
    assert max(err[2][key], err[4][key]) > 10 * tol, term


def test_tke_mixing_needs_veros_vertical_grid():
    from pelagos.core.errors import ConfigError
    from pelagos.ocean.grid import Grid
    from pelagos.ocean.model import OceanModel

    kb = torch.ones(4, 5, dtype=torch.int64)
    with pytest.raises(ConfigError, match="vertical='veros'"):
        OceanModel(Grid(5, 4, [20.0, 40.0, 80.0], kb), mixing="tke", check_stability=False)
    with pytest.raises(ConfigError, match="outside their cells"):
        Grid(5, 4, [50.0, 150.0, 300.0], kb, vertical="veros")
    with pytest.raises(ConfigError, match="mixing"):
        OceanModel(Grid(5, 4, [20.0, 40.0, 80.0], kb), mixing="kpp", check_stability=False)
